"""Erasing a profile everywhere Parcours keeps it: its journeys end first (so nothing more is
sent to the person), then the store forgets it (see `activities.erasure`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities import catalog
from activities.erasure import Erasure, erase_profile
from starter.routing import journey_workflow_id


async def erase(
    client: Callable[[], Awaitable[Client]], engine: Engine, profile_id: str
) -> tuple[Erasure, list[str]]:
    """End the profile's running journey entries, then erase it from the store. Returns what
    was erased and the entries ended. Should Temporal fail, nothing is erased yet: the call
    can be repeated. (Temporal is not reached when no journey was ever published.)"""
    journeys = await asyncio.to_thread(catalog.list_journeys, engine)
    ended: list[str] = []
    if journeys:
        temporal = await client()
        ended = [
            workflow_id
            for workflow_id in await asyncio.gather(
                *(_end(temporal, journey_workflow_id(j.journey_id, profile_id)) for j in journeys)
            )
            if workflow_id
        ]
    return await asyncio.to_thread(erase_profile, engine, profile_id), ended


async def _end(client: Client, workflow_id: str) -> str | None:
    # Terminated, not cancelled: a cancelled entry could still run a step for the person.
    try:
        await client.get_workflow_handle(workflow_id).terminate(reason="profile erased")
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:  # no entry, or it has finished already
            return None
        raise
    return workflow_id
