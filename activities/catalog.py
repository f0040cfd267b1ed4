"""Published definitions: segments, templates, campaigns, and journeys as immutable numbered
versions."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal
from uuid import uuid4

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from activities.db import (
    CampaignRow,
    CatalogRevisionRow,
    JourneyRow,
    JourneyVersionRow,
    SegmentRow,
    TemplateRow,
)
from parcours.definitions import Campaign, Journey, MessageNode, Segment, Template
from parcours.errors import InputError, NotFound
from parcours.loader import LoadResult
from parcours.records import JourneyVersion


@dataclass(frozen=True)
class Published:
    kind: Literal["segment", "template", "journey", "campaign"]
    id: str
    outcome: Literal["created", "updated", "unchanged"]
    version: int | None = None
    status: str | None = None  # a journey's, after publishing

    def __str__(self) -> str:
        if self.kind == "journey":
            if self.outcome == "unchanged":
                return f"journey {self.id}: unchanged (version {self.version} is {self.status})"
            return f"journey {self.id}: published version {self.version} ({self.status})"
        return f"{self.kind} {self.id}: {self.outcome}"


def known_templates(engine: Engine) -> dict[str, Template]:
    with Session(engine) as session:
        return {
            row.id: Template.model_validate(row.definition)
            for row in session.scalars(select(TemplateRow))
        }


# Parsed segments by id, with the stored JSON they came from: every event reads all segments,
# and validating them again each time cost more than evaluating them.
_parsed_segments: dict[str, tuple[dict[str, Any], Segment]] = {}


def known_segments(engine: Engine) -> dict[str, Segment]:
    with engine.connect() as connection:
        return _segments(connection)


SEGMENTS_REVISION = select(CatalogRevisionRow.token).where(CatalogRevisionRow.name == "segments")


@dataclass(frozen=True)
class SegmentCatalog:
    token: str | None  # the segments' revision these were read at; None: unknown
    segments: dict[str, Segment]


def segment_catalog(connection: Connection) -> SegmentCatalog:
    """The segments with the revision they are at. The token is read first: should a publish
    land in between, the token is older than the segments, which costs one more reading later,
    never a stale copy kept."""
    token = connection.execute(SEGMENTS_REVISION).scalar()
    return SegmentCatalog(token, _segments(connection))


def _segments(connection: Connection) -> dict[str, Segment]:
    rows = connection.execute(select(SegmentRow.id, SegmentRow.definition)).all()
    segments: dict[str, Segment] = {}
    for segment_id, definition in rows:
        cached = _parsed_segments.get(segment_id)
        if cached is None or cached[0] != definition:
            cached = (definition, Segment.model_validate(definition))
            _parsed_segments[segment_id] = cached
        segments[segment_id] = cached[1]
    return segments


def publish(
    engine: Engine, loaded: LoadResult, status: Literal["live", "draft"] = "live"
) -> list[Published]:
    """Save segments and templates and publish journeys in one transaction: all, or none.
    Journeys become `status`: a draft takes no entries until it is made live (resumed).

    A journey whose definition and templates are unchanged since its latest version is not
    published again, so applying the same directory twice is harmless.
    """
    results: list[Published] = []
    with Session(engine) as session, session.begin():
        for segment in loaded.segments.values():
            results.append(
                _save(
                    session, SegmentRow(id=segment.id, definition=segment.model_dump(mode="json"))
                )
            )
        for template in loaded.templates.values():
            data = template.model_dump(mode="json")
            results.append(
                _save(
                    session, TemplateRow(id=template.id, channel=template.channel, definition=data)
                )
            )
        if any(r.kind == "segment" and r.outcome != "unchanged" for r in results):
            _new_revision(session, "segments")
        session.flush()
        templates = {row.id: row.definition for row in session.scalars(select(TemplateRow))}
        for journey in loaded.journeys:
            results.append(_publish_journey(session, journey, templates, status))
        for campaign in loaded.campaigns:
            results.append(_save_campaign(session, campaign, templates))
    return results


def _new_revision(session: Session, name: str) -> None:
    """Tell every process caching this catalog that it changed (in the same transaction)."""
    token = uuid4().hex
    changed = session.execute(
        update(CatalogRevisionRow).where(CatalogRevisionRow.name == name).values(token=token)
    )
    if not changed.rowcount:  # type: ignore[attr-defined]
        session.execute(insert(CatalogRevisionRow).values(name=name, token=token))


def _save(session: Session, new: SegmentRow | TemplateRow) -> Published:
    kind: Literal["segment", "template"] = "segment" if isinstance(new, SegmentRow) else "template"
    row = (
        session.get(SegmentRow, new.id)
        if isinstance(new, SegmentRow)
        else session.get(TemplateRow, new.id)
    )
    if row is None:
        session.add(new)
        return Published(kind, new.id, "created")
    if row.definition == new.definition:
        return Published(kind, new.id, "unchanged")
    row.definition = new.definition
    if isinstance(row, TemplateRow) and isinstance(new, TemplateRow):
        row.channel = new.channel
    return Published(kind, new.id, "updated")


def _publish_journey(
    session: Session, journey: Journey, templates: dict[str, dict[str, object]], status: str
) -> Published:
    definition = journey.model_dump(mode="json")
    used = sorted({n.template for n in journey.nodes if isinstance(n, MessageNode)})
    snapshot = {name: templates[name] for name in used}
    checksum = hashlib.sha256(
        json.dumps([definition, snapshot], sort_keys=True).encode()
    ).hexdigest()
    row = session.get(JourneyRow, journey.id, with_for_update=True)
    if row is not None:
        latest = session.get(JourneyVersionRow, (journey.id, row.current_version))
        if latest is not None and latest.checksum == checksum:
            if status == "live" and row.status == "draft":
                row.status = "live"
            return Published("journey", journey.id, "unchanged", row.current_version, row.status)
    version = 1 if row is None else row.current_version + 1
    if row is None:
        row = JourneyRow(
            id=journey.id,
            status=status,
            current_version=version,
            entry_event=journey.entry.event,
            entry_segment=journey.entry.segment_entered,
        )
        session.add(row)
    else:
        row.current_version, row.status = version, status
        row.entry_event, row.entry_segment = journey.entry.event, journey.entry.segment_entered
    session.flush()
    session.add(
        JourneyVersionRow(
            journey_id=journey.id,
            version=version,
            definition=definition,
            templates=snapshot,
            checksum=checksum,
        )
    )
    return Published(
        "journey", journey.id, "created" if version == 1 else "updated", version, status
    )


def _save_campaign(
    session: Session, campaign: Campaign, templates: dict[str, dict[str, object]]
) -> Published:
    definition = campaign.model_dump(mode="json")
    used = {campaign.template} | ({campaign.follow_up.template} if campaign.follow_up else set())
    snapshot = {name: templates[name] for name in sorted(used)}
    row = session.get(CampaignRow, campaign.id)
    if row is None:
        session.add(
            CampaignRow(id=campaign.id, definition=definition, templates=snapshot, status="active")
        )
        return Published("campaign", campaign.id, "created", status="active")
    if row.definition == definition and row.templates == snapshot:
        return Published("campaign", campaign.id, "unchanged", status=row.status)
    row.definition, row.templates = definition, snapshot
    return Published("campaign", campaign.id, "updated", status=row.status)


def campaign(engine: Engine, campaign_id: str) -> tuple[Campaign, str]:
    """An applied campaign and its status (active or paused)."""
    with Session(engine) as session:
        row = session.get(CampaignRow, campaign_id)
        if row is None:
            raise NotFound("campaign", f"no campaign {campaign_id!r} is applied")
        return Campaign.model_validate(row.definition), row.status


def campaigns(engine: Engine) -> list[tuple[Campaign, str]]:
    with Session(engine) as session:
        return [
            (Campaign.model_validate(row.definition), row.status)
            for row in session.scalars(select(CampaignRow).order_by(CampaignRow.id))
        ]


def set_campaign_status(engine: Engine, campaign_id: str, status: str) -> Campaign:
    with Session(engine) as session, session.begin():
        row = session.get(CampaignRow, campaign_id)
        if row is None:
            raise NotFound("campaign", f"no campaign {campaign_id!r} is applied")
        row.status = status
        return Campaign.model_validate(row.definition)


def live_journeys_for_event(engine: Engine, event_type: str) -> list[tuple[Journey, int]]:
    """The current version of every live journey that this event type enters."""
    return routes_for_event(engine, event_type).entering


def live_journeys_for_segment(engine: Engine, segment_id: str) -> list[tuple[Journey, int]]:
    """The current version of every live journey entered by joining this segment."""
    return [
        (version.journey, version.version)
        for version in _versions_of(engine)
        if version.is_live_current and version.journey.entry.segment_entered == segment_id
    ]


@dataclass(frozen=True)
class EventRoutes:
    """What one event type means to the published journeys, read in one query."""

    entering: list[tuple[Journey, int]]  # live journeys it enters, at their current version
    listening: list[str]  # journeys not stopped whose entries wait for it or leave on it
    converts: bool  # some version's goal is this event type

    @property
    def reach_journeys(self) -> bool:
        """Whether any journey enters, hears or counts a goal on this event type."""
        return bool(self.entering or self.listening or self.converts)


def routes_for_event(engine: Engine, event_type: str) -> EventRoutes:
    return _routes(_versions_of(engine), event_type)


def routes_for_events(engine: Engine, event_types: Iterable[str]) -> dict[str, EventRoutes]:
    """`routes_for_event` for several types, on one reading of the journeys."""
    versions = _versions_of(engine)
    return {t: _routes(versions, t) for t in event_types}


def _routes(versions: list[_Version], event_type: str) -> EventRoutes:
    return EventRoutes(
        entering=[
            (v.journey, v.version)
            for v in versions
            if v.is_live_current and v.journey.entry.event == event_type
        ],
        listening=sorted(
            {
                v.journey.id
                for v in versions
                if v.status != "stopped" and event_type in v.journey.listens_to()
            }
        ),
        converts=any(v.journey.goal and v.journey.goal.event == event_type for v in versions),
    )


@dataclass(frozen=True)
class _Version:
    journey: Journey
    version: int
    status: str  # the journey's
    is_live_current: bool


# Parsed journey versions by checksum: a version never changes once published, and every
# event reads them all, so each is validated once per process (the checksum, not the id,
# keys it: two stores in one process may both have a version 1 of a journey).
_parsed: dict[str, Journey] = {}


# Built once: every event runs it.
_VERSIONS = select(
    JourneyVersionRow.journey_id,
    JourneyVersionRow.version,
    JourneyVersionRow.checksum,
    JourneyRow.status,
    JourneyRow.current_version,
).join(JourneyRow, JourneyRow.id == JourneyVersionRow.journey_id)


def _versions_of(engine: Engine) -> list[_Version]:
    """Every published version of every journey, with its journey's status."""
    with engine.connect() as connection:
        rows = connection.execute(_VERSIONS).all()
        missing = [checksum for _, _, checksum, _, _ in rows if checksum not in _parsed]
        if missing:
            for checksum, definition in connection.execute(
                select(JourneyVersionRow.checksum, JourneyVersionRow.definition).where(
                    JourneyVersionRow.checksum.in_(missing)
                )
            ):
                _parsed[checksum] = Journey.model_validate(definition)
    return [
        _Version(_parsed[checksum], version, status, status == "live" and version == current)
        for _, version, checksum, status, current in rows
    ]


# Templates as published with a journey version, by (store, journey, version, template):
# immutable, and read for every message.
_journey_templates: dict[tuple[str, str, int, str], Template] = {}


def journey_template(
    engine: Engine, journey_id: str, version: int, template_id: str
) -> Template | None:
    """The template as it was when this journey version was published."""
    key = (engine.url.render_as_string(), journey_id, version, template_id)
    cached = _journey_templates.get(key)
    if cached is not None:
        return cached
    with Session(engine) as session:
        row = session.get(JourneyVersionRow, (journey_id, version))
        if row is None or template_id not in row.templates:
            return None
        found = Template.model_validate(row.templates[template_id])
    _journey_templates[key] = found
    return found


def template(engine: Engine, template_id: str) -> Template | None:
    with Session(engine) as session:
        row = session.get(TemplateRow, template_id)
        return Template.model_validate(row.definition) if row else None


def list_journeys(engine: Engine) -> list[JourneyVersion]:
    with Session(engine) as session:
        rows = session.execute(
            select(JourneyRow, JourneyVersionRow.created_at)
            .join(
                JourneyVersionRow,
                (JourneyRow.id == JourneyVersionRow.journey_id)
                & (JourneyRow.current_version == JourneyVersionRow.version),
            )
            .order_by(JourneyRow.id)
        ).all()
        return [
            JourneyVersion(
                journey_id=j.id,
                version=j.current_version,
                status=j.status,
                entry_event=j.entry_event
                or (f"segment:{j.entry_segment}" if j.entry_segment else "api"),
                created_at=created,
            )
            for j, created in rows
        ]


def running_versions(engine: Engine) -> list[Journey]:
    """Every version of every journey not stopped: those running entries may be on."""
    return [v.journey for v in _versions_of(engine) if v.status != "stopped"]


def journeys_listening_to(engine: Engine, event_type: str) -> list[str]:
    """Journeys with any version whose running entries wait for or exit on this event type."""
    return routes_for_event(engine, event_type).listening


def journeys_exiting_on_segment(engine: Engine, segment_id: str) -> list[str]:
    """Journeys with any version whose entries leave when a profile leaves this segment."""
    return sorted({j.id for j in running_versions(engine) if segment_id in j.exits_on_segments()})


# What each lifecycle command may move a journey from; publishing again makes it live.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "paused": ("live",),
    "live": ("paused", "draft"),
    "stopped": ("live", "paused"),
}


def set_status(
    engine: Engine, journey_id: str, status: Literal["live", "paused", "stopped"]
) -> str:
    """Move a journey to `status`; returns the status it had."""
    with Session(engine) as session, session.begin():
        row = session.get(JourneyRow, journey_id, with_for_update=True)
        if row is None:
            raise NotFound("journey", f"no journey {journey_id!r} is published")
        previous = row.status
        if previous != status and previous not in TRANSITIONS[status]:
            verb = {"live": "made live", "paused": "paused", "stopped": "stopped"}[status]
            raise InputError(
                "journey", f"journey {journey_id!r} is {previous} and cannot be {verb}"
            )
        row.status = status
        return previous


def journey_version(engine: Engine, journey_id: str, version: int) -> Journey | None:
    """One published version of a journey, as it was published."""
    for found in _versions_of(engine):
        if found.journey.id == journey_id and found.version == version:
            return found.journey
    return None


def current_journey(engine: Engine, journey_id: str) -> tuple[Journey, int, str] | None:
    """The journey's current version, its number and the journey's status."""
    with Session(engine) as session:
        row = session.get(JourneyRow, journey_id)
        if row is None:
            return None
        version = session.get(JourneyVersionRow, (journey_id, row.current_version))
        assert version is not None
        return Journey.model_validate(version.definition), row.current_version, row.status
