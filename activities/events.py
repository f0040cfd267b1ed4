"""Events: stored once per id, creating their profile when it is new."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from activities.db import EventRow, utcnow
from activities.profiles import ensure_profile
from parcours.records import Event, NewEvent


def record_event(engine: Engine, new: NewEvent) -> tuple[Event, bool]:
    """Store the event; returns it and whether it was a duplicate of one already stored."""
    event_id = new.id or str(uuid.uuid4())
    try:
        with Session(engine) as session, session.begin():
            existing = session.scalar(select(EventRow).where(EventRow.id == event_id))
            if existing is not None:
                return _to_model(existing), True
            ensure_profile(session, new.profile_id)
            row = EventRow(
                id=event_id,
                profile_id=new.profile_id,
                type=new.type,
                timestamp=new.timestamp or utcnow(),
                properties=new.properties,
            )
            session.add(row)
            session.flush()
            return _to_model(row), False
    except IntegrityError:
        # Another writer stored the same id between our read and our insert.
        stored = get_event(engine, event_id)
        if stored is None:
            raise
        return stored, True


def get_event(engine: Engine, event_id: str) -> Event | None:
    with Session(engine) as session:
        row = session.scalar(select(EventRow).where(EventRow.id == event_id))
        return _to_model(row) if row else None


def _to_model(row: EventRow) -> Event:
    return Event(
        id=row.id,
        type=row.type,
        profile_id=row.profile_id,
        timestamp=row.timestamp,
        properties=row.properties,
    )
