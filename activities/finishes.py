"""Finished journey entries: recorded once each by the workflow, counted per node in reports.

The workflow keeps its path in its own state; when an entry ends or leaves, one row says where
it ended, why, and how often it entered each node. That is all `journeys show` needs for
"passed" and "exited here", at the cost of one local activity per entry.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sqlalchemy import Insert, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from temporalio import activity

from activities.bound import BoundActivities
from activities.db import JourneyFinishRow, dialect_insert
from parcours.contracts import EntryFinished


def record_finish(engine: Engine, finished: EntryFinished) -> None:
    """Store the entry's finish; a retried activity finds it stored and changes nothing."""
    values = finished.model_dump()
    dialect = engine.dialect.name
    if dialect in ("sqlite", "postgresql"):
        with engine.begin() as connection:
            connection.execute(_insert_once(dialect), values)
        return
    try:
        with engine.begin() as connection:
            connection.execute(insert(JourneyFinishRow).values(values))
    except IntegrityError:
        pass  # recorded by an earlier attempt


@functools.cache
def _insert_once(dialect: str) -> Insert:
    # Built once, its values bound at each execution: one entry finishes per journey entry.
    return dialect_insert(dialect)(JourneyFinishRow).on_conflict_do_nothing()


@dataclass
class NodeCounts:
    """One journey version's finished entries, per node."""

    finished: int = 0
    passed: Counter[str] = field(default_factory=Counter)  # entries that entered the node
    ended: Counter[str] = field(default_factory=Counter)  # entries that finished there
    exits: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))


def node_counts(engine: Engine, journey_id: str) -> dict[int, NodeCounts]:
    """Per version of the journey: how many finished entries passed each node, and where
    they finished (by exit reason when they left early)."""
    report: dict[int, NodeCounts] = defaultdict(NodeCounts)
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                JourneyFinishRow.version,
                JourneyFinishRow.node,
                JourneyFinishRow.exit,
                JourneyFinishRow.visits,
            ).where(JourneyFinishRow.journey_id == journey_id)
        )
        for version, node, exit, visits in rows:
            counts = report[version]
            counts.finished += 1
            counts.passed.update(visits.keys())  # an entry that looped counts once
            if exit is None:
                counts.ended[node] += 1
            else:
                counts.exits[node][exit] += 1
    return dict(sorted(report.items()))


class FinishActivities(BoundActivities):
    @activity.defn(name="record_finish")
    async def record_finish(self, finished: EntryFinished) -> None:
        await asyncio.to_thread(record_finish, self.engine, finished)
