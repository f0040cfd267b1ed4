"""Journey goals: an event that converts an entry, counted per version and split variant."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from activities.db import ConversionRow, JourneyEntryRow, JourneyVersionRow
from parcours.definitions import Journey, SplitNode
from parcours.records import Event


def record_conversions(engine: Engine, event: Event) -> list[str]:
    """Record the goal conversions this event makes; returns the journeys converted.

    An entry converts once, when the goal event happens within `goal.within` of the entry's
    start, and is attributed to the version it entered and the variants its splits assign.
    """
    converted: list[str] = []
    with Session(engine) as session, session.begin():
        rows = session.execute(
            select(JourneyEntryRow, JourneyVersionRow.definition)
            .join(
                JourneyVersionRow,
                and_(
                    JourneyVersionRow.journey_id == JourneyEntryRow.journey_id,
                    JourneyVersionRow.version == JourneyEntryRow.last_version,
                ),
            )
            .where(JourneyEntryRow.profile_id == event.profile_id)
        ).all()
        for entry, definition in rows:
            goal = definition.get("goal")
            if not goal or goal.get("event") != event.type:
                continue
            journey = Journey.model_validate(definition)
            assert journey.goal is not None
            if (
                not entry.last_entered_at
                <= event.timestamp
                <= entry.last_entered_at + journey.goal.within
            ):
                continue
            key = (journey.id, event.profile_id, entry.last_entered_at)
            if session.get(ConversionRow, key) is not None:
                continue
            variants = {
                node.id: node.choose(journey.id, entry.last_version, event.profile_id).name
                for node in journey.nodes
                if isinstance(node, SplitNode)
            }
            session.add(
                ConversionRow(
                    journey_id=journey.id,
                    profile_id=event.profile_id,
                    entered_at=entry.last_entered_at,
                    version=entry.last_version,
                    variants=variants,
                    event_id=event.id,
                    converted_at=event.timestamp,
                )
            )
            converted.append(journey.id)
    return converted


def conversion_counts(engine: Engine, journey_id: str) -> dict[int, dict[str, Any]]:
    """Per version: total conversions, and per split node the conversions of each variant."""
    report: dict[int, dict[str, Any]] = {}
    with Session(engine) as session:
        for row in session.scalars(
            select(ConversionRow).where(ConversionRow.journey_id == journey_id)
        ):
            version = report.setdefault(
                row.version, {"conversions": 0, "variants": defaultdict(dict)}
            )
            version["conversions"] += 1
            for node, variant in row.variants.items():
                version["variants"][node][variant] = version["variants"][node].get(variant, 0) + 1
    return {
        v: {"conversions": r["conversions"], "variants": dict(r["variants"])}
        for v, r in sorted(report.items())
    }
