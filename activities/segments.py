"""Segment membership: kept current per profile as events and changes arrive (streaming),
computed for everyone at once when a segment is published or time moves on (batch).

Membership rows keep `entered_at` and `exited_at`; each change is returned as a `Transition`
for the caller to act on (journeys enter on `segment_entered` and exit on segment exits).
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from typing import cast as cast_

from pydantic_core import from_json
from sqlalchemy import (
    Connection,
    String,
    bindparam,
    case,
    cast,
    func,
    null,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from activities.catalog import SEGMENTS_REVISION, known_segments, segment_catalog
from activities.db import EventRow, JsonObject, MembershipRow, ProfileRow, plan_for_values, utcnow
from activities.rule_sql import members_query
from parcours.definitions import Segment
from parcours.evaluate import Evaluation, EventFacts, ProfileFacts
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


def event_rules(rule: Any, segments: Mapping[str, Segment]) -> Iterator[EventRule]:
    """Every event rule a rule reads, through segment references too."""
    if isinstance(rule, EventRule):
        yield rule
    elif isinstance(rule, SegmentRef):
        yield from event_rules(segments[rule.segment].rule, segments)
    for child in children(rule):
        yield from event_rules(child, segments)


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


@dataclass(frozen=True)
class _Plan:
    """What one kind of change re-evaluates, worked out once per catalog revision."""

    segments: tuple[str, ...]  # the segments it can affect
    event_types: tuple[str, ...]  # the events their rules count
    # How far back those rules look; None: at least one counts events of any age.
    horizon: timedelta | None
    # The event types whose properties a rule reads (in a `where`): of the others, only the
    # type and time are read.
    properties: tuple[str, ...]

    @functools.cached_property
    def _kinds(self) -> dict[str, str]:
        kinds = {f"type_{i}": t for i, t in enumerate(self.event_types)}
        kinds.update({f"properties_{i}": t for i, t in enumerate(self.properties)})
        return kinds

    def fetch(self, engine: Engine, profile_id: str, now: datetime) -> list[tuple[Any, ...]]:
        """The profile's row and its events' (see `_refresh_read`), straight from the driver."""
        read = _compiled_read(
            engine.dialect, len(self.event_types), self.horizon is not None, len(self.properties)
        )
        parameters: dict[str, Any] = {"profile_id": profile_id, **self._kinds}
        if self.horizon is not None:
            since = now - self.horizon
            parameters["since"] = read.since(since) if read.since else since
        return read.run(engine, parameters)


@functools.cache
def _refresh_read(dialect: str, types: int, since: bool, properties: int) -> Any:
    """One read of everything a refresh needs: the profile with the catalog's revision and its
    current segments, space-separated (ids hold no spaces); then, one row each, the events of
    `types` types (bound as type_0, type_1…), from `since` when given, with their properties
    for `properties` of those types (bound as properties_0…; NULL for the others, whose
    properties no rule reads: neither sent nor decoded).

    Built once per shape and kept; `_compiled_read` compiles it once per dialect."""
    profile_id: Any = bindparam("profile_id")
    active = select(
        func.string_agg(MembershipRow.segment_id, " ")
        if dialect == "postgresql"
        else func.group_concat(MembershipRow.segment_id, " ")
    ).where(MembershipRow.profile_id == profile_id, MembershipRow.active)
    columns = [
        ProfileRow.attributes,
        ProfileRow.email,
        ProfileRow.phone,
        ProfileRow.device_tokens,
        ProfileRow.consent,
        SEGMENTS_REVISION.scalar_subquery().label("token"),
        active.scalar_subquery().label("active"),
    ]
    if not types:
        return select(*columns).where(ProfileRow.id == profile_id)
    # SQLite keeps timestamps as text: read as such and parsed by `_timestamp`, much faster
    # than SQLAlchemy's general parser.
    timestamp: Any = (
        type_coerce(EventRow.timestamp, String) if dialect == "sqlite" else EventRow.timestamp
    )
    # The profile's row, then one row per event: a join would repeat the profile's JSON,
    # decoded again on every row. The profile's row is the one with no type.
    profile = select(
        *columns,
        cast(null(), EventRow.type.type).label("type"),
        cast(null(), timestamp.type).label("timestamp"),
        cast(null(), JsonObject).label("properties"),
    ).where(ProfileRow.id == profile_id)
    # One parameter per type, not an expanding list: the statement compiles once.
    kinds: list[Any] = [bindparam(f"type_{i}") for i in range(types)]
    if properties == types:
        read: Any = EventRow.properties
    elif properties:
        wanted: list[Any] = [bindparam(f"properties_{i}") for i in range(properties)]
        read = case((EventRow.type.in_(wanted), EventRow.properties))
    else:
        read = cast(null(), JsonObject)
    counted = select(*(null() for _ in columns), EventRow.type, timestamp, read).where(
        EventRow.profile_id == profile_id, EventRow.type.in_(kinds)
    )
    if since:
        counted = counted.where(EventRow.timestamp >= bindparam("since"))
    return union_all(profile, counted)


@dataclass(frozen=True)
class _Read:
    """`_refresh_read` compiled once per dialect and handed to the driver itself.

    Through a SQLAlchemy connection the same statement costs several times the driver's own
    time in Python: execution context, events, result rows and type processing, reset on
    return. A refresh runs after every event, so it is compiled here once by SQLAlchemy, and
    its rows are read as the driver gives them: JSON decoded by psycopg on PostgreSQL, by
    `_decoded` on SQLite; timestamps by `_timestamp`."""

    sql: str
    order: tuple[str, ...] | None  # names of the positional parameters; None: named
    constants: Mapping[str, Any]  # the statement's own values (the catalog's key)
    since: Callable[[Any], Any] | None  # the timestamp's bind processor
    decode: bool  # JSON columns arrive as text (SQLite)

    def run(self, engine: Engine, parameters: dict[str, Any]) -> list[tuple[Any, ...]]:
        parameters = {**self.constants, **parameters}
        bound: Any = parameters if self.order is None else tuple(parameters[n] for n in self.order)
        pooled = engine.raw_connection()
        try:
            driver = pooled.driver_connection
            # One read needs no transaction: no BEGIN and ROLLBACK round trips on PostgreSQL
            # (SQLite's driver begins none for a read).
            autocommit = engine.dialect.name == "postgresql" and not driver.autocommit  # type: ignore[union-attr]
            if autocommit:
                driver.autocommit = True  # type: ignore[union-attr]
            cursor = pooled.cursor()
            try:
                cursor.execute(self.sql, bound)
                # Tuples: sqlite3's and psycopg's default row types.
                rows = cast_(list[tuple[Any, ...]], cursor.fetchall())
            except engine.dialect.loaded_dbapi.Error as exc:
                # As SQLAlchemy would have raised it (callers answer OperationalError as "store
                # unavailable"), and a dropped connection is not handed out again.
                if engine.dialect.is_disconnect(exc, driver, cursor):
                    pooled.invalidate(exc)
                raise DBAPIError.instance(
                    self.sql, bound, exc, engine.dialect.loaded_dbapi.Error
                ) from exc
            finally:
                cursor.close()
                if autocommit and pooled.dbapi_connection is not None:
                    driver.autocommit = False  # type: ignore[union-attr]
        finally:
            pooled.close()
        if self.decode:
            rows = [_decoded(row) for row in rows]
        return rows


# Positions of the JSON columns in `_refresh_read`'s rows: attributes, device tokens, consent,
# and an event's properties.
_JSON_COLUMNS = (0, 3, 4, 9)


def _decoded(row: tuple[Any, ...]) -> tuple[Any, ...]:
    values = list(row)
    for i in _JSON_COLUMNS:
        if i < len(values) and isinstance(values[i], str):
            values[i] = from_json(values[i])
    return tuple(values)


_reads: dict[tuple[str, str, int, bool, int], _Read] = {}


def _compiled_read(dialect: Dialect, types: int, since: bool, properties: int) -> _Read:
    key = (dialect.name, dialect.driver, types, since, properties)
    read = _reads.get(key)
    if read is None:
        compiled = _refresh_read(dialect.name, types, since, properties).compile(dialect=dialect)
        processor = EventRow.__table__.c.timestamp.type.dialect_impl(dialect).bind_processor(
            dialect
        )
        read = _reads[key] = _Read(
            str(compiled),
            tuple(compiled.positiontup or ()) if compiled.positional else None,
            {k: v for k, v in compiled.params.items() if v is not None},
            processor if since else None,
            dialect.name != "postgresql",
        )
    return read


# Positions in `_refresh_read`'s rows: the catalog's revision, then an event's type.
_TOKEN, _EVENT = 5, 7


def _profile_row(rows: list[tuple[Any, ...]]) -> tuple[Any, ...] | None:
    # The profile's row is the one with no event type; it carries the catalog's revision.
    return next((r for r in rows if len(r) == _EVENT or r[_EVENT] is None), None)


def _timestamp(value: datetime | str) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


@dataclass
class _Catalog:
    """The segments as parsed at one revision, with what each change affects."""

    token: str | None
    segments: dict[str, Segment]
    dependencies: dict[str, Dependencies]
    plans: dict[tuple[str | None, bool], _Plan] = field(default_factory=dict)

    @classmethod
    def read(cls, connection: Connection) -> _Catalog:
        read = segment_catalog(connection)
        segments = read.segments
        return cls(
            read.token,
            segments,
            {sid: dependencies(s.rule, segments) for sid, s in segments.items()},
        )

    def plan(self, event_type: str | None, profile_changed: bool) -> _Plan:
        key = (event_type, profile_changed)
        plan = self.plans.get(key)
        if plan is None:
            affected = tuple(
                sid
                for sid, deps in sorted(self.dependencies.items())
                if (event_type is not None and event_type in deps.events)
                or (profile_changed and deps.profile)
            )
            rules = [
                r for sid in affected for r in event_rules(self.segments[sid].rule, self.segments)
            ]
            windows = [r.within for r in rules]
            horizon = None if None in windows or not windows else max(w for w in windows if w)
            types = tuple(sorted({r.event for r in rules}))
            properties = tuple(sorted({r.event for r in rules if r.where is not None}))
            plan = self.plans[key] = _Plan(affected, types, horizon, properties)
        return plan


# Parsed segments per engine (one per database), kept while its catalog revision stays the same.
_catalogs: weakref.WeakKeyDictionary[Engine, _Catalog] = weakref.WeakKeyDictionary()
_catalogs_lock = threading.Lock()


def _read_catalog(engine: Engine) -> _Catalog:
    with engine.connect() as connection:
        return _Catalog.read(connection)


def followed_event_types(engine: Engine) -> frozenset[str]:
    """The event types some segment's membership depends on, at the current revision (one
    small read when the segments did not change)."""
    with engine.connect() as connection:
        catalog = _catalogs.get(engine)
        if catalog is None or catalog.token != connection.execute(SEGMENTS_REVISION).scalar():
            catalog = _Catalog.read(connection)
            with _catalogs_lock:
                _catalogs[engine] = catalog
    return frozenset(t for deps in catalog.dependencies.values() for t in deps.events)


def refresh_profile(
    engine: Engine,
    profile_id: str,
    *,
    event_type: str | None = None,
    profile_changed: bool = False,
    now: datetime | None = None,
) -> list[Transition]:
    """Re-evaluate, for one profile, only the segments this change can affect.

    The streaming path, run after every event: one indexed read (see `_refresh_read`),
    planned with the segments this process has parsed and checked against the catalog's
    revision it returns; a write only when a membership changes.
    """
    now = now or utcnow()
    catalog = _catalogs.get(engine) or _read_catalog(engine)
    plan = catalog.plan(event_type, profile_changed)
    rows = plan.fetch(engine, profile_id, now)
    state = _profile_row(rows)
    if state is not None and (state[_TOKEN] is None or state[_TOKEN] != catalog.token):
        # Segments were published since: read them, and the profile again if the new plan
        # needs other events.
        catalog = _read_catalog(engine)
        fetched, plan = plan, catalog.plan(event_type, profile_changed)
        if (plan.event_types, plan.horizon, plan.properties) != (
            fetched.event_types,
            fetched.horizon,
            fetched.properties,
        ):
            rows = plan.fetch(engine, profile_id, now)
            state = _profile_row(rows)
    with _catalogs_lock:
        _catalogs[engine] = catalog
    if state is None or not plan.segments:
        return []
    events = [
        EventFacts(r[_EVENT], _timestamp(r[_EVENT + 1]), r[_EVENT + 2] or {})
        for r in rows
        if len(r) > _EVENT and r[_EVENT] is not None
    ]
    attributes, email, phone, device_tokens, consent, _token, current = state[:_EVENT]
    profile = ProfileFacts(
        attributes=attributes,
        email=email,
        phone=phone,
        device_tokens=tuple(device_tokens or ()),
        consent=consent or {},
        events=events,
    )
    active = set(current.split(" ")) if current else set()
    # One evaluation for all of them: segments they refer to are worked out once.
    evaluation = Evaluation(profile, now, catalog.segments)
    changed = {}
    for segment_id in plan.segments:
        inside = evaluation.in_segment(segment_id)
        if inside != (segment_id in active):
            changed[(segment_id, profile_id)] = inside
    # _record reads the rows again in its own transaction: what another refresh changed in
    # the meantime is not reported twice.
    return _record(engine, changed, now) if changed else []


def rebuild(engine: Engine, segment_id: str, now: datetime | None = None) -> list[Transition]:
    """Compute a segment for every profile (batch) and record who entered and who left."""
    now = now or utcnow()
    segments = known_segments(engine)
    with Session(engine) as session:
        plan_for_values(session)
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


# Built once: SQLAlchemy caches its compiled form, and a Core connection skips the ORM
# session's bookkeeping, which on a web page's request path costs more than the read itself.
_PROFILE_SEGMENTS = (
    select(MembershipRow.segment_id, MembershipRow.entered_at)
    .where(MembershipRow.profile_id == bindparam("profile_id"), MembershipRow.active)
    .order_by(MembershipRow.segment_id)
)


def profile_segments(engine: Engine, profile_id: str) -> list[Membership]:
    """The segments a profile is in now: one indexed query, for decision engines."""
    with engine.connect() as connection:
        rows = connection.execute(_PROFILE_SEGMENTS, {"profile_id": profile_id})
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
