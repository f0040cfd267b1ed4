"""Events stored but never routed (their request failed and its caller never retried) reach
their journeys through a Temporal Schedule, on the real dev server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import ledger
from activities.apply import apply_paths
from activities.db import EventRow
from activities.events import unrouted
from activities.profiles import set_profile
from parcours import ParcoursPlugin
from parcours.contracts import WaitingRouted
from parcours.records import NewEvent
from parcours.settings import Settings
from starter.routing import journey_workflow_id, send_event
from starter.schedules import WAITING_SCHEDULE_ID, ensure_waiting_schedule
from tests.conftest import client_with_plugin, run_schedule_now
from tests.stack import free_port
from workflows.journey import JourneyWorkflow

HELLO = """
kind: template
id: hello
channel: email
subject: "Hello"
body: "Hello {{ profile.id }}"
---
kind: journey
id: hello
entry: {event: signed_up}
start: mail
nodes:
  - {id: mail, type: message, channel: email, template: hello, next: done}
  - {id: done, type: end}
"""


async def test_an_event_whose_routing_failed_reaches_its_journey_through_the_schedule(
    dev_server_env: WorkflowEnvironment, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    (tmp_path / "hello.yaml").write_text(HELLO)
    apply_paths(engine, [tmp_path / "hello.yaml"])
    for profile in ("ada", "bob"):
        set_profile(engine, profile, email=f"{profile}@example.com")
    # Temporal unreachable: each event is stored, its routing fails, and nobody retries.
    unreachable = await Client.connect(
        f"127.0.0.1:{free_port()}", lazy=True, plugins=[ParcoursPlugin(settings)]
    )
    for profile in ("ada", "bob"):
        with pytest.raises(RuntimeError, match="connect"):
            await send_event(
                unreachable,
                engine,
                settings,
                NewEvent(type="signed_up", profile_id=profile, id=f"{profile}-1"),
            )
    assert unrouted(engine, ["ada-1", "bob-1"]) == {"ada-1", "bob-1"}
    # Ada's request failed minutes ago; Bob's just now, and its caller may still retry it.
    with engine.begin() as connection:
        connection.execute(
            update(EventRow)
            .where(EventRow.id == "ada-1")
            .values(received_at=datetime.now(UTC) - timedelta(minutes=5))
        )

    client = client_with_plugin(dev_server_env, settings)
    async with Worker(client, task_queue=settings.task_queue):
        await ensure_waiting_schedule(client, settings, every=timedelta(hours=1))
        await ensure_waiting_schedule(client, settings)  # idempotent: keeps what exists
        try:
            first = await run_schedule_now(client, WAITING_SCHEDULE_ID)
            again = await run_schedule_now(client, WAITING_SCHEDULE_ID)
            entry = client.get_workflow_handle_for(
                JourneyWorkflow.run, journey_workflow_id("hello", "ada")
            )
            position = await entry.result()
        finally:
            await client.get_schedule_handle(WAITING_SCHEDULE_ID).delete()

    assert WaitingRouted.model_validate(first) == WaitingRouted(routed=1)
    assert WaitingRouted.model_validate(again) == WaitingRouted(routed=0)
    assert position.finished and [s.outcome for s in position.path] == ["sent", "ended"]
    assert [d.to for d in ledger.list_deliveries(engine, "ada")] == ["ada@example.com"]
    assert unrouted(engine, ["ada-1", "bob-1"]) == {"bob-1"}
    assert ledger.list_deliveries(engine, "bob") == []
