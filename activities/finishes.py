"""Finished journey entries: recorded once each by the workflow, counted per node in reports.

The workflow keeps its path in its own state; when an entry ends or leaves, one row says where
it ended, why, and how often it entered each node. That is all `journeys show` needs for
"passed" and "exited here", at the cost of one local activity per entry; none when the entry
ends right after a message, whose send records it.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sqlalchemy import Insert, insert, select, update
from sqlalchemy.engine import Connection, Engine
from temporalio import activity

from activities.bound import BoundActivities
from activities.db import JourneyFinishRow, dialect_insert
from parcours.contracts import EntryFinished


def record_finish(engine: Engine, finished: EntryFinished) -> None:
    """Store the entry's finish, replacing the one stored for it before: a retried activity
    writes the same row again, and an entry whose last send recorded it as ended, but which
    left on an exit heard in the same moment, corrects it."""
    with engine.begin() as connection:
        write_finish(connection, finished)


def write_finish(connection: Connection, finished: EntryFinished) -> None:
    """`record_finish` in the caller's transaction: a send writes it with its ledger row."""
    values = finished.model_dump()
    dialect = connection.dialect.name
    if dialect in ("sqlite", "postgresql"):
        connection.execute(_upsert(dialect), values)
        return
    key = (JourneyFinishRow.workflow_id == finished.workflow_id) & (
        JourneyFinishRow.first_run_id == finished.first_run_id
    )
    if not connection.execute(update(JourneyFinishRow).where(key).values(values)).rowcount:
        connection.execute(insert(JourneyFinishRow).values(values))


@functools.cache
def _upsert(dialect: str) -> Insert:
    # Built once, its values bound at each execution: one entry finishes per journey entry.
    statement = dialect_insert(dialect)(JourneyFinishRow)
    return statement.on_conflict_do_update(
        index_elements=[JourneyFinishRow.workflow_id, JourneyFinishRow.first_run_id],
        set_={c: statement.excluded[c] for c in ("node", "exit", "visits", "finished_at")},
    )


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
