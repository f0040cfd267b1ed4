"""Published definitions: templates, and journeys as immutable numbered versions."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal
from uuid import uuid4

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from activities.db import (
    CatalogRevisionRow,
    JourneyRow,
    JourneyVersionRow,
    SegmentRow,
    TemplateRow,
)
from parcours.definitions import Journey, MessageNode, Segment, Template
from parcours.errors import InputError
from parcours.loader import LoadResult
from parcours.records import JourneyVersion


@dataclass(frozen=True)
class Published:
    kind: Literal["segment", "template", "journey"]
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


def live_journeys_for_event(engine: Engine, event_type: str) -> list[tuple[Journey, int]]:
    """The current version of every live journey that this event type enters."""
    return _live(engine, JourneyRow.entry_event == event_type)


def live_journeys_for_segment(engine: Engine, segment_id: str) -> list[tuple[Journey, int]]:
    """The current version of every live journey entered by joining this segment."""
    return _live(engine, JourneyRow.entry_segment == segment_id)


def _live(engine: Engine, entered_by: Any) -> list[tuple[Journey, int]]:
    with Session(engine) as session:
        rows = session.execute(
            select(JourneyVersionRow)
            .join(
                JourneyRow,
                (JourneyRow.id == JourneyVersionRow.journey_id)
                & (JourneyRow.current_version == JourneyVersionRow.version),
            )
            .where(JourneyRow.status == "live", entered_by)
        ).scalars()
        return [(Journey.model_validate(r.definition), r.version) for r in rows]


def journey_template(
    engine: Engine, journey_id: str, version: int, template_id: str
) -> Template | None:
    """The template as it was when this journey version was published."""
    with Session(engine) as session:
        row = session.get(JourneyVersionRow, (journey_id, version))
        if row is None or template_id not in row.templates:
            return None
        return Template.model_validate(row.templates[template_id])


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


# Versions never change once published, so each is parsed once per process.
_versions: dict[tuple[str, int], Journey] = {}


def running_versions(engine: Engine) -> list[Journey]:
    """Every version of every journey not stopped: those running entries may be on."""
    with Session(engine) as session:
        keys = session.execute(
            select(JourneyVersionRow.journey_id, JourneyVersionRow.version)
            .join(JourneyRow, JourneyRow.id == JourneyVersionRow.journey_id)
            .where(JourneyRow.status != "stopped")
        ).all()
        for journey_id, version in keys:
            if (journey_id, version) not in _versions:
                row = session.get(JourneyVersionRow, (journey_id, version))
                assert row is not None
                _versions[(journey_id, version)] = Journey.model_validate(row.definition)
    return [_versions[(j, v)] for j, v in keys]


def journeys_listening_to(engine: Engine, event_type: str) -> list[str]:
    """Journeys with any version whose running entries wait for or exit on this event type."""
    return sorted({j.id for j in running_versions(engine) if event_type in j.listens_to()})


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
            raise InputError("journey", f"no journey {journey_id!r} is published")
        previous = row.status
        if previous != status and previous not in TRANSITIONS[status]:
            verb = {"live": "made live", "paused": "paused", "stopped": "stopped"}[status]
            raise InputError(
                "journey", f"journey {journey_id!r} is {previous} and cannot be {verb}"
            )
        row.status = status
        return previous


def current_journey(engine: Engine, journey_id: str) -> tuple[Journey, int, str] | None:
    """The journey's current version, its number and the journey's status."""
    with Session(engine) as session:
        row = session.get(JourneyRow, journey_id)
        if row is None:
            return None
        version = session.get(JourneyVersionRow, (journey_id, row.current_version))
        assert version is not None
        return Journey.model_validate(version.definition), row.current_version, row.status
