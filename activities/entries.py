"""Journey entries as re-entry rules see them: who entered which journey, and when last."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Insert, Table, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from activities.db import JourneyEntryRow, dialect_insert, utcnow
from parcours.definitions import Cooldown, Journey


def may_enter(
    engine: Engine, journeys: Iterable[Journey], profile_id: str, now: datetime | None = None
) -> set[str]:
    """The ids of the journeys whose `re_entry` rule lets this profile start a new entry.
    (At most one live entry per profile is Temporal's doing: one workflow id per pair.)"""
    now = now or utcnow()
    journeys = list(journeys)
    if all(j.re_entry == "after_exit" for j in journeys):
        # The default rule needs no history: Temporal's one running entry per id is all of it.
        return {j.id for j in journeys}
    with Session(engine) as session:
        previous = {
            row.journey_id: row
            for row in session.scalars(
                select(JourneyEntryRow).where(
                    JourneyEntryRow.profile_id == profile_id,
                    JourneyEntryRow.journey_id.in_([j.id for j in journeys]),
                )
            )
        }
    allowed = set()
    for journey in journeys:
        row = previous.get(journey.id)
        rule = journey.re_entry
        if (
            row is None
            or rule == "after_exit"
            or (isinstance(rule, Cooldown) and row.last_entered_at + rule.cooldown <= now)
        ):
            allowed.add(journey.id)
    return allowed


def record_entry(
    engine: Engine,
    journey_id: str,
    version: int,
    profile_id: str,
    now: datetime | None = None,
    connection: Connection | None = None,
) -> None:
    """Count a new entry; in `connection`'s transaction when given (SQLite and PostgreSQL)."""
    now = now or utcnow()
    if engine.dialect.name in ("sqlite", "postgresql"):
        # One statement, no read first: this runs for every entry that starts.
        values = {
            "journey_id": journey_id,
            "profile_id": profile_id,
            "first_entered_at": now,
            "last_entered_at": now,
            "last_version": version,
            "entries": 1,
        }
        statement = _upsert(engine.dialect.name)
        if connection is not None:
            connection.execute(statement, values)
            return
        with engine.begin() as own:
            own.execute(statement, values)
        return
    try:
        with Session(engine) as session, session.begin():
            row = session.get(JourneyEntryRow, (journey_id, profile_id), with_for_update=True)
            if row is None:
                session.add(
                    JourneyEntryRow(
                        journey_id=journey_id,
                        profile_id=profile_id,
                        first_entered_at=now,
                        last_entered_at=now,
                        last_version=version,
                    )
                )
            else:
                row.last_entered_at, row.last_version = now, version
                row.entries += 1
    except IntegrityError:
        # A concurrent first entry inserted the row: count this one on it.
        record_entry(engine, journey_id, version, profile_id, now)


@functools.cache
def _upsert(dialect: str) -> Insert:
    """The entry count's upsert, built once: its values are bound at each execution, so
    SQLAlchemy finds it compiled instead of building and keying a statement per entry."""
    table: Table = JourneyEntryRow.__table__  # type: ignore[assignment]
    statement = dialect_insert(dialect)(table)
    return statement.on_conflict_do_update(
        index_elements=[table.c.journey_id, table.c.profile_id],
        set_={
            "last_entered_at": statement.excluded.last_entered_at,
            "last_version": statement.excluded.last_version,
            "entries": table.c.entries + 1,
        },
    )
