"""Running journeys on the shared time-skipping server, one test at a time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import catalog
from activities.db import ProfileRow, engine_for
from parcours.contracts import JourneyPosition
from parcours.settings import Settings
from starter.routing import journey_workflow_id
from tests.conftest import client_with_plugin
from workflows.journey import JourneyWorkflow


async def run_worker(env: WorkflowEnvironment, settings: Settings) -> AsyncIterator[Client]:
    client = client_with_plugin(env, settings)
    async with Worker(client, task_queue=settings.task_queue):
        yield client
        # While the worker still runs, so no activity is left half-done: the test server
        # would hold time still for it, stalling the next test.
        await end_entries(client, engine_for(settings.database_url))


async def end_entries(client: Client, engine: Engine) -> None:
    """The server outlives the test: end its entries so the next test starts from nothing
    (a timer firing for a worker that is gone would stall time skipping)."""
    with Session(engine) as session:
        profiles = list(session.scalars(select(ProfileRow.id)))
    for journey in catalog.list_journeys(engine):
        for profile in profiles:
            handle = client.get_workflow_handle(journey_workflow_id(journey.journey_id, profile))
            with contextlib.suppress(RPCError):
                await _activities_settled(handle)
                await handle.terminate("test finished")


async def _activities_settled(handle: WorkflowHandle[Any, Any], seconds: float = 10) -> None:
    """Wait (a little) for the entry's running activities: terminated in the middle of one,
    an entry leaves the test server holding time still for an activity that never reports."""
    for _ in range(int(seconds / 0.05)):
        description = await handle.describe()
        if description.status != WorkflowExecutionStatus.RUNNING:
            return
        pending = description.raw_description.pending_activities
        if not any(a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED for a in pending):
            return
        await asyncio.sleep(0.05)


async def finish(env: WorkflowEnvironment, client: Client, workflow_id: str) -> JourneyPosition:
    """Skip time an hour at a time until the entry closes (activities run in real time)."""
    handle = client.get_workflow_handle_for(JourneyWorkflow.run, workflow_id)
    for _ in range(24 * 10):
        if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
            break
        await env.sleep(timedelta(hours=1))
    return await handle.result()
