"""Journey entries as re-entry rules see them: who entered which journey, and when last."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from activities.db import JourneyEntryRow, utcnow
from parcours.definitions import Cooldown, Journey


def may_enter(
    engine: Engine, journeys: Iterable[Journey], profile_id: str, now: datetime | None = None
) -> set[str]:
    """The ids of the journeys whose `re_entry` rule lets this profile start a new entry.
    (At most one live entry per profile is Temporal's doing: one workflow id per pair.)"""
    now = now or utcnow()
    journeys = list(journeys)
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
    engine: Engine, journey_id: str, version: int, profile_id: str, now: datetime | None = None
) -> None:
    now = now or utcnow()
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
