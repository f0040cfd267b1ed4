"""A long `wait_for_event` that hears many events continues as new in the middle of the wait:
the same wait goes on, with the time it had left and every event it had not read yet. And a
wait that opens an entry hears the events that reached the entry with its start."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities import catalog
from activities.apply import apply_paths
from activities.events import record_event
from activities.profiles import set_profile
from parcours.contracts import EventRef, JourneyInput, JourneyPosition
from parcours.records import NewEvent
from parcours.settings import Settings
from starter.routing import send_event
from tests.journeys import finish, run_worker
from workflows.journey import JourneyWorkflow

PATIENT = """
kind: journey
id: patient
entry: {api: true}
start: await-99
nodes:
  - {id: await-99, type: wait_for_event, event: ping, where: {property: n, op: eq, value: 99},
     timeout: 10d, on_event: hit, on_timeout: late}
  - {id: hit, type: end}
  - {id: late, type: end}
---
kind: journey
id: restless
entry: {api: true}
exit_when: [{event: cancel}]
start: await-pong
nodes:
  - {id: await-pong, type: wait_for_event, event: pong, timeout: 10d, on_event: await-ping,
     on_timeout: done}
  - {id: await-ping, type: wait_for_event, event: ping, timeout: 1d, on_event: done,
     on_timeout: done}
  - {id: done, type: end}
"""
WORKFLOW_ID = "journey:patient:ada"
# Each event that does not match costs the history about a dozen events (the signal, the
# `where` check, their workflow tasks): a few of them fill this.
HISTORY_LIMIT = 40


@pytest.fixture
async def client(
    time_skipping_env: WorkflowEnvironment, settings: Settings, engine: Engine, tmp_path: Path
) -> AsyncIterator[Client]:
    (tmp_path / "patient.yaml").write_text(PATIENT)
    apply_paths(engine, [tmp_path / "patient.yaml"])
    set_profile(engine, "ada", email="ada@example.com")
    async for client in run_worker(time_skipping_env, settings):
        yield client


async def start(
    client: Client, engine: Engine, settings: Settings, journey: str = "patient"
) -> WorkflowHandle[JourneyWorkflow, JourneyPosition]:
    found = catalog.current_journey(engine, journey)
    assert found is not None
    return await client.start_workflow(
        JourneyWorkflow.run,
        JourneyInput(
            journey=found[0], version=found[1], profile_id="ada", history_limit=HISTORY_LIMIT
        ),
        id=f"journey:{journey}:ada",
        task_queue=settings.task_queue,
    )


async def ping(client: Client, engine: Engine, settings: Settings, n: int) -> str:
    routed = await send_event(
        client, engine, settings, NewEvent(type="ping", profile_id="ada", properties={"n": n})
    )
    assert routed.journeys == [WORKFLOW_ID]
    return routed.event.id


async def continued(
    client: Client, first_run_id: str | None, workflow_id: str = WORKFLOW_ID
) -> bool:
    """Whether the entry is on a later run than `first_run_id` (events are handled in the
    background, so give it a moment)."""
    for _ in range(50):
        if (await client.get_workflow_handle(workflow_id).describe()).run_id != first_run_id:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_a_long_wait_continues_as_new_and_loses_no_event(
    time_skipping_env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> None:
    first = await start(client, engine, settings)
    await time_skipping_env.sleep(timedelta(days=1))
    sent = []
    # In bursts, so events arrive while the entry is continuing as new.
    for _ in range(6):
        sent += await asyncio.gather(*(ping(client, engine, settings, n) for n in range(4)))
    assert await continued(client, first.first_execution_run_id), "the wait continued as new"
    sent.append(await ping(client, engine, settings, 99))
    position = await finish(time_skipping_env, client, WORKFLOW_ID)

    assert [(s.node, s.outcome) for s in position.path] == [
        ("await-99", f"ping ({sent[-1]})"),
        ("hit", "ended"),
    ], "the wait was entered once and ended on the matching event"
    assert set(sent) <= set(position.events), "every event reached the entry"
    assert position.path[1].entered_at - position.path[0].entered_at < timedelta(days=2)


async def test_an_opening_wait_hears_an_event_that_came_with_the_start(
    time_skipping_env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> None:
    # An event sent right after the entry began can reach the workflow in its first task,
    # with the start itself: signal-with-start makes that certain here.
    event, _ = record_event(engine, NewEvent(type="ping", profile_id="ada", properties={"n": 99}))
    found = catalog.current_journey(engine, "patient")
    assert found is not None
    await client.start_workflow(
        JourneyWorkflow.run,
        JourneyInput(journey=found[0], version=found[1], profile_id="ada"),
        id=WORKFLOW_ID,
        task_queue=settings.task_queue,
        start_signal="event",
        start_signal_args=[EventRef(id=event.id, type=event.type, timestamp=event.timestamp)],
    )
    position = await finish(time_skipping_env, client, WORKFLOW_ID)

    assert [(s.node, s.outcome) for s in position.path] == [
        ("await-99", f"ping ({event.id})"),
        ("hit", "ended"),
    ], "the wait read the event, not waited ten days past it"


async def test_a_continued_wait_keeps_its_deadline(
    time_skipping_env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> None:
    first = await start(client, engine, settings)
    await time_skipping_env.sleep(timedelta(days=3))
    for n in range(12):
        await ping(client, engine, settings, n)
    assert await continued(client, first.first_execution_run_id), "the wait continued as new"
    position = await finish(time_skipping_env, client, WORKFLOW_ID)

    assert [(s.node, s.outcome) for s in position.path] == [
        ("await-99", "timed out"),
        ("late", "ended"),
    ]
    waited = position.path[1].entered_at - position.path[0].entered_at
    assert timedelta(days=10) <= waited < timedelta(days=10, hours=1), "not 10 days from the CAN"


async def test_an_exit_event_among_many_ends_the_entry_across_continuing_as_new(
    time_skipping_env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> None:
    # `restless` waits for pong while it listens to ping (its next node), so each ping is an
    # event that does not match, with no activity to check it: an exit then cancels only the
    # wait's timer (the test server holds time still for an activity cancelled mid-way).
    first_run = (await start(client, engine, settings, "restless")).first_execution_run_id
    await time_skipping_env.sleep(timedelta(hours=1))

    async def send(kind: str) -> str:
        routed = await send_event(client, engine, settings, NewEvent(type=kind, profile_id="ada"))
        return routed.event.id

    for _ in range(16):  # one by one: each is a workflow task of its own
        await send("ping")
    assert await continued(client, first_run, "journey:restless:ada")
    # Sent together: the exit may arrive before, during or after continuing as new again.
    *_, cancelled = await asyncio.gather(*(send("ping") for _ in range(8)), send("cancel"))
    position = await finish(time_skipping_env, client, "journey:restless:ada")

    assert position.exit_reason == f"cancel ({cancelled})"
    assert [(s.node, s.outcome) for s in position.path] == [
        ("await-pong", f"exited: cancel ({cancelled})")
    ]
