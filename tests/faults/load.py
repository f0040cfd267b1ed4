"""A triggered load in process: profiles p0, p1… with an email address and a phone number, and
one event each through `send_event`, as concurrent API requests would send them."""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import Engine
from temporalio.client import Client, WorkflowExecutionStatus

from activities.profiles import profile_update, upsert_profiles
from parcours.records import NewEvent
from parcours.settings import Settings
from starter.routing import send_event


def phone(n: int) -> str:
    return f"+336123{n:05d}"


def add_people(engine: Engine, count: int) -> None:
    upsert_profiles(
        engine,
        [profile_update(f"p{n}", email=f"p{n}@example.com", phone=phone(n)) for n in range(count)],
    )


async def enter(
    client: Client, engine: Engine, settings: Settings, kind: str, count: int
) -> list[str]:
    """Send each of the first `count` people a `kind` event (16 at a time); returns the id of
    the one entry each event starts."""
    limit = asyncio.Semaphore(16)

    async def one(n: int) -> str:
        async with limit:
            event = NewEvent(type=kind, profile_id=f"p{n}", properties={"order": n})
            [workflow_id] = (await send_event(client, engine, settings, event)).journeys
            return workflow_id

    return list(await asyncio.gather(*(one(n) for n in range(count))))


async def completed(client: Client, workflow_ids: list[str], seconds: float) -> int:
    """Wait (at most `seconds`) for every entry to end; how many completed."""
    async with asyncio.timeout(seconds):
        await asyncio.gather(*(client.get_workflow_handle(w).result() for w in workflow_ids))
    statuses = [(await client.get_workflow_handle(w).describe()).status for w in workflow_ids]
    return statuses.count(WorkflowExecutionStatus.COMPLETED)
