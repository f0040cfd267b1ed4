"""Journey lifecycle from outside: pause, resume, stop, and where profiles are now."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Literal

from sqlalchemy.engine import Engine
from temporalio.client import Client

from activities import catalog
from parcours import search_attributes as sa
from starter.routing import signal_entry

# Signals in flight at once when a stop reaches every entry: enough to be quick, few enough
# not to flood the frontend.
STOP_CONCURRENCY = 20


def running_query(journey_id: str) -> str:
    # Journey ids are validated identifiers (letters, digits, '-', '_', '.'): safe to quote.
    return f'ParcoursJourney = "{journey_id}" AND ExecutionStatus = "Running"'


def node_query(journey_id: str, version: int, node_id: str) -> str:
    """Every entry of this version whose current (or, once finished, last) node is this one."""
    # Node ids are validated identifiers too.
    return (
        f'{sa.JOURNEY.name} = "{journey_id}" AND {sa.JOURNEY_VERSION.name} = {version} '
        f'AND {sa.NODE.name} = "{node_id}"'
    )


async def set_status(
    client: Client, engine: Engine, journey_id: str, status: Literal["live", "paused", "stopped"]
) -> int:
    """Change the status; a stop also makes every entry inside leave. Returns entries stopped."""
    catalog.set_status(engine, journey_id, status)
    if status != "stopped":
        return 0
    ids = [w.id async for w in client.list_workflows(running_query(journey_id))]
    gate = asyncio.Semaphore(STOP_CONCURRENCY)

    async def stop(workflow_id: str) -> bool:
        async with gate:
            return await signal_entry(client, workflow_id, "stop", "journey stopped")

    return sum(await asyncio.gather(*(stop(w) for w in ids)))


async def where_profiles_are(client: Client, journey_id: str) -> Counter[str]:
    """How many running entries are at each node, from the visibility store."""
    counts: Counter[str] = Counter()
    for (_, node), count in (await entries_now(client, journey_id)).items():
        counts[node] += count
    return counts


async def entries_now(client: Client, journey_id: str) -> Counter[tuple[int, str]]:
    """How many running entries are at each (version, node), from the visibility store."""
    counts: Counter[tuple[int, str]] = Counter()
    async for execution in client.list_workflows(running_query(journey_id)):
        attributes = execution.typed_search_attributes
        counts[(attributes.get(sa.JOURNEY_VERSION) or 0, attributes.get(sa.NODE) or "?")] += 1
    return counts
