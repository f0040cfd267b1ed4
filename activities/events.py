"""Events: stored once per id, creating their profile when it is new.

`record_events` is the one write path (`record_event` is a batch of one): a single
`INSERT … ON CONFLICT DO NOTHING` per chunk decides which events are new, so an id sent twice,
in one batch or by two concurrent writers, is stored exactly once on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.orm import Session

from activities.db import EventRow, plan_for_values, utcnow
from activities.entries import record_entry
from activities.profiles import (
    IN_CHUNK,
    create_missing_profiles,
    insert_missing,
    retrying,
)
from parcours.records import Event, NewEvent


def record_event(engine: Engine, new: NewEvent, to_route: bool = False) -> tuple[Event, bool]:
    """Store the event; returns it and whether it was a duplicate of one already stored."""
    return record_events(engine, [new], [to_route])[0]


def record_events(
    engine: Engine,
    events: Sequence[NewEvent],
    to_route: Sequence[bool] | None = None,
) -> list[tuple[Event, bool]]:
    """Store the events in one transaction; for each, in order, the stored event and whether it
    was a duplicate (its id already stored, or earlier in the same batch). Events without an id
    get a random one; profiles that do not exist yet are created.

    Events whose `to_route` flag (one per event) is true are stored as waiting to be routed,
    until `mark_routed`; the others (imports, events no journey or segment follows) as
    routed."""
    now = utcnow()
    values: list[dict[str, Any]] = []
    first: dict[str, dict[str, Any]] = {}  # the first occurrence of each id is the one stored
    for new, routing in zip(events, to_route or [False] * len(events), strict=True):
        row: dict[str, Any] = {
            "id": new.id or str(uuid.uuid4()),
            "profile_id": new.profile_id,
            "type": new.type,
            "timestamp": new.timestamp or now,
            "properties": new.properties,
            "received_at": now,
            "routed_at": None if routing else now,
        }
        values.append(row)
        first.setdefault(row["id"], row)
    if not values:
        return []

    def write() -> tuple[set[str], dict[str, Event]]:
        # Core, not an ORM session: one event per request is the common case, and the
        # session's bookkeeping cost more than the two inserts.
        with engine.begin() as connection:
            plan_for_values(connection)
            # In id order, like the profiles after them: two batches sharing ids then wait
            # for each other in the same order and cannot deadlock on PostgreSQL.
            rows = sorted(first.values(), key=lambda row: str(row["id"]))
            inserted = insert_missing(connection, EVENTS, rows, "id")
            create_missing_profiles(connection, {first[i]["profile_id"] for i in inserted})
            return inserted, _stored(connection, [i for i in first if i not in inserted])

    inserted, stored = retrying(write)
    results: list[tuple[Event, bool]] = []
    for row in values:
        event_id = row["id"]
        if event_id in inserted:
            # Only the first occurrence in the batch was stored; a repeat is its duplicate.
            is_first = first[event_id] is row
            results.append((_from_values(first[event_id]), not is_first))
        else:
            results.append((stored[event_id], True))
    return results


def unrouted(engine: Engine, event_ids: Sequence[str]) -> set[str]:
    """Those of these stored events whose routing has not completed."""
    found: set[str] = set()
    with Session(engine) as session:
        for start in range(0, len(event_ids), IN_CHUNK):
            chunk = event_ids[start : start + IN_CHUNK]
            found.update(
                session.scalars(
                    select(EventRow.id).where(EventRow.id.in_(chunk), EventRow.routed_at.is_(None))
                )
            )
    return found


def waiting_events(engine: Engine, received_before: datetime, limit: int) -> list[Event]:
    """The oldest stored events still waiting to be routed, received before the given time,
    in the order they came."""
    with Session(engine) as session:
        rows = session.scalars(
            select(EventRow)
            .where(EventRow.routed_at.is_(None), EventRow.received_at < received_before)
            .order_by(EventRow.received_at, EventRow.seq)
            .limit(limit)
        )
        return [_to_model(row) for row in rows]


def mark_routed(
    engine: Engine, event_ids: Sequence[str], entries: Sequence[tuple[str, int, str]] = ()
) -> None:
    """Mark the events routed, and count the journey entries they started (journey id,
    version, profile id) in the same transaction: one write where there would be two."""
    if not event_ids and not entries:
        return
    now = utcnow()
    with engine.begin() as connection:
        for start in range(0, len(event_ids), IN_CHUNK):
            chunk = event_ids[start : start + IN_CHUNK]
            connection.execute(_MARK_ROUTED, {"ids": list(chunk), "now": now})
        for journey_id, version, profile_id in entries:
            record_entry(engine, journey_id, version, profile_id, now, connection)


# Built once, bound at each execution: every routed event is marked with it.
_MARK_ROUTED = (
    update(EventRow)
    .where(EventRow.id.in_(bindparam("ids", expanding=True)), EventRow.routed_at.is_(None))
    .values(routed_at=bindparam("now"))
)


def content_event_id(new: NewEvent) -> str:
    """A deterministic id for an event that has none: a hash of its canonical content, so the
    same event read twice (a re-imported file) is stored once."""
    content = new.model_dump(mode="json", exclude={"id"})
    if new.timestamp is not None:  # one instant, however its offset was written
        content["timestamp"] = new.timestamp.astimezone(UTC).isoformat()
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def get_event(engine: Engine, event_id: str) -> Event | None:
    # A Core read, without the ORM's identity map: every message that quotes its entry event
    # reads one.
    with engine.connect() as connection:
        row = connection.execute(_EVENT_BY_ID, {"id": event_id}).first()
    return _to_model(row) if row else None


EVENTS = cast(Table, EventRow.__table__)
# What an `Event` is made of. Built once, bound at each execution.
_EVENT_COLUMNS = select(
    EventRow.id, EventRow.type, EventRow.profile_id, EventRow.timestamp, EventRow.properties
)
_EVENT_BY_ID = _EVENT_COLUMNS.where(EventRow.id == bindparam("id"))


def _stored(connection: Connection, event_ids: list[str]) -> dict[str, Event]:
    stored: dict[str, Event] = {}
    for start in range(0, len(event_ids), IN_CHUNK):
        chunk = event_ids[start : start + IN_CHUNK]
        for row in connection.execute(_EVENT_COLUMNS.where(EventRow.id.in_(chunk))):
            stored[row.id] = _to_model(row)
    return stored


def _from_values(values: dict[str, Any]) -> Event:
    # Built from a NewEvent already validated: checking each field again costs more than the
    # insert of the row (bulk ingestion returns one per event).
    return Event.model_construct(
        id=values["id"],
        type=values["type"],
        profile_id=values["profile_id"],
        timestamp=values["timestamp"],
        properties=values["properties"],
    )


def _to_model(row: EventRow | Row[Any]) -> Event:
    return Event(
        id=row.id,
        type=row.type,
        profile_id=row.profile_id,
        timestamp=row.timestamp,
        properties=row.properties,
    )
