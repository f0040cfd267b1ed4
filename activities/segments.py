"""Segment membership: kept current per profile as events and changes arrive (streaming),
computed for everyone at once when a segment is published or time moves on (batch).

Membership rows keep `entered_at` and `exited_at`; each change is returned as a `Transition`
for the caller to act on (journeys enter on `segment_entered` and exit on segment exits).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from activities.catalog import known_segments
from activities.db import EventRow, MembershipRow, ProfileRow, utcnow
from activities.rule_sql import members_query
from parcours.definitions import Segment
from parcours.evaluate import EventFacts, ProfileFacts, matches
from parcours.rules import AttributeRule, ConsentRule, EventRule, SegmentRef, children

# Ids per IN list: well under SQLite's and PostgreSQL's parameter limits.
CHUNK = 500


@dataclass(frozen=True)
class Transition:
    segment_id: str
    profile_id: str
    entered: bool  # False: exited
    at: datetime


@dataclass
class Dependencies:
    """What can change a segment's answer for a profile."""

    events: set[str] = field(default_factory=set)
    profile: bool = False  # attributes, identities or consent
    time: bool = False  # a window that lapses with no new event

    def merge(self, other: Dependencies) -> None:
        self.events |= other.events
        self.profile |= other.profile
        self.time |= other.time


def dependencies(rule: Any, segments: Mapping[str, Segment]) -> Dependencies:
    found = Dependencies()
    if isinstance(rule, AttributeRule):
        found.profile = True
        found.time = rule.op == "within_last"
    elif isinstance(rule, ConsentRule):
        found.profile = True
    elif isinstance(rule, EventRule):
        found.events.add(rule.event)
        found.time = rule.within is not None or (
            rule.where is not None and dependencies(rule.where, segments).time
        )
    elif isinstance(rule, SegmentRef):
        found.merge(dependencies(segments[rule.segment].rule, segments))
    elif getattr(rule, "op", None) == "within_last":
        found.time = True
    for child in children(rule):
        found.merge(dependencies(child, segments))
    return found


def facts(engine: Engine, profile_id: str, event_types: Iterable[str]) -> ProfileFacts | None:
    """What the in-memory evaluator needs of one profile: its row and the events rules count."""
    types = sorted(set(event_types))
    with Session(engine) as session:
        profile = session.get(ProfileRow, profile_id)
        if profile is None:
            return None
        rows: Iterable[EventRow] = (
            session.scalars(
                select(EventRow).where(EventRow.profile_id == profile_id, EventRow.type.in_(types))
            )
            if types
            else []
        )
        return ProfileFacts(
            attributes=profile.attributes,
            email=profile.email,
            phone=profile.phone,
            device_tokens=tuple(profile.device_tokens or ()),
            consent=profile.consent or {},
            events=[EventFacts(e.type, e.timestamp, e.properties) for e in rows],
        )


def refresh_profile(
    engine: Engine,
    profile_id: str,
    *,
    event_type: str | None = None,
    profile_changed: bool = False,
    now: datetime | None = None,
) -> list[Transition]:
    """Re-evaluate, for one profile, only the segments this change can affect."""
    now = now or utcnow()
    segments = known_segments(engine)
    affected = {}
    for segment_id, segment in segments.items():
        deps = dependencies(segment.rule, segments)
        if (event_type is not None and event_type in deps.events) or (
            profile_changed and deps.profile
        ):
            affected[segment_id] = deps
    if not affected:
        return []
    profile = facts(engine, profile_id, set().union(*(d.events for d in affected.values())))
    if profile is None:
        return []
    now_in = {
        segment_id: matches(segments[segment_id].rule, profile, now, segments)
        for segment_id in affected
    }
    return _record(
        engine, {(segment_id, profile_id): inside for segment_id, inside in now_in.items()}, now
    )


def rebuild(engine: Engine, segment_id: str, now: datetime | None = None) -> list[Transition]:
    """Compute a segment for every profile (batch) and record who entered and who left."""
    now = now or utcnow()
    segments = known_segments(engine)
    with Session(engine) as session:
        members = set(
            session.scalars(
                members_query(engine.dialect.name, segments[segment_id].rule, now, segments)
            )
        )
        current = set(
            session.scalars(
                select(MembershipRow.profile_id).where(
                    MembershipRow.segment_id == segment_id, MembershipRow.active
                )
            )
        )
    changes = {(segment_id, p): True for p in members - current}
    changes.update({(segment_id, p): False for p in current - members})
    return _record(engine, changes, now)


def recheck_time_windows(engine: Engine, now: datetime | None = None) -> list[Transition]:
    """Catch memberships that change with no new event: someone's last purchase leaving a
    "within 30d" window. Run periodically by a Temporal Schedule."""
    now = now or utcnow()
    segments = known_segments(engine)
    transitions: list[Transition] = []
    for segment_id, segment in sorted(segments.items()):
        if dependencies(segment.rule, segments).time:
            transitions += rebuild(engine, segment_id, now)
    return transitions


def _record(
    engine: Engine, states: Mapping[tuple[str, str], bool], now: datetime
) -> list[Transition]:
    transitions: list[Transition] = []
    with Session(engine) as session, session.begin():
        existing = _memberships(session, states.keys())
        for (segment_id, profile_id), inside in sorted(states.items()):
            row = existing.get((segment_id, profile_id))
            if row is None:
                if inside:
                    session.add(
                        MembershipRow(
                            segment_id=segment_id,
                            profile_id=profile_id,
                            active=True,
                            entered_at=now,
                        )
                    )
                    transitions.append(Transition(segment_id, profile_id, True, now))
            elif row.active != inside:
                row.active = inside
                if inside:
                    row.entered_at, row.exited_at = now, None
                else:
                    row.exited_at = now
                transitions.append(Transition(segment_id, profile_id, inside, now))
    return transitions


def _memberships(
    session: Session, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], MembershipRow]:
    """The membership rows for these (segment, profile) pairs, read in a few queries: one
    profile's segments after an event, or one segment's profiles in a batch rebuild."""
    keys = set(keys)
    segment_ids = sorted({s for s, _ in keys})
    profile_ids = sorted({p for _, p in keys})
    found: dict[tuple[str, str], MembershipRow] = {}
    for start in range(0, len(profile_ids), CHUNK):
        rows = session.scalars(
            select(MembershipRow).where(
                MembershipRow.segment_id.in_(segment_ids),
                MembershipRow.profile_id.in_(profile_ids[start : start + CHUNK]),
            )
        )
        found.update(
            {(r.segment_id, r.profile_id): r for r in rows if (r.segment_id, r.profile_id) in keys}
        )
    return found


@dataclass(frozen=True)
class Membership:
    segment_id: str
    entered_at: datetime


def profile_segments(engine: Engine, profile_id: str) -> list[Membership]:
    """The segments a profile is in now: one indexed query, for decision engines."""
    with Session(engine) as session:
        rows = session.execute(
            select(MembershipRow.segment_id, MembershipRow.entered_at)
            .where(MembershipRow.profile_id == profile_id, MembershipRow.active)
            .order_by(MembershipRow.segment_id)
        )
        return [Membership(segment_id, entered_at) for segment_id, entered_at in rows]


def segment_sizes(engine: Engine) -> dict[str, int]:
    """Current member count per segment, from the membership table."""
    with Session(engine) as session:
        rows = session.execute(
            select(MembershipRow.segment_id, func.count())
            .where(MembershipRow.active)
            .group_by(MembershipRow.segment_id)
        )
        return {segment_id: count for segment_id, count in rows}


@dataclass(frozen=True)
class MembersPage:
    members: list[str]
    next_cursor: str | None  # pass back as `after` for the next page


def segment_members(
    engine: Engine, segment_id: str, after: str | None = None, limit: int = 100
) -> MembersPage:
    """A segment's current members in id order, a page at a time (keyset paging)."""
    with Session(engine) as session:
        query = (
            select(MembershipRow.profile_id)
            .where(MembershipRow.segment_id == segment_id, MembershipRow.active)
            .order_by(MembershipRow.profile_id)
            .limit(limit + 1)
        )
        if after is not None:
            query = query.where(MembershipRow.profile_id > after)
        ids = list(session.scalars(query))
    return MembersPage(ids[:limit], ids[limit - 1] if len(ids) > limit else None)
