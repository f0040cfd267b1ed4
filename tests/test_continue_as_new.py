"""A journey that loops for months continues as new and carries its state across."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities import catalog, ledger
from activities.apply import apply_paths
from activities.profiles import set_profile
from parcours.contracts import EventRef, JourneyInput
from parcours.settings import Settings
from tests.journeys import run_worker
from workflows.journey import JourneyWorkflow

DAILY = """
kind: template
id: daily
channel: email
subject: "Day {{ journey.node }}"
body: hi
---
kind: journey
id: daily
entry: {event: subscribed}
start: mail
nodes:
  - {id: mail, type: message, channel: email, template: daily, next: sleep}
  - {id: sleep, type: wait, duration: 1d, next: mail}
"""


@pytest.fixture
async def client(
    time_skipping_env: WorkflowEnvironment, settings: Settings, engine: Engine, tmp_path: Path
) -> AsyncIterator[Client]:
    (tmp_path / "daily.yaml").write_text(DAILY)
    apply_paths(engine, [tmp_path / "daily.yaml"])
    set_profile(engine, "ada", email="ada@example.com")
    async for client in run_worker(time_skipping_env, settings):
        yield client


async def test_a_long_loop_continues_as_new_and_sends_each_day_once(
    time_skipping_env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> None:
    found = catalog.current_journey(engine, "daily")
    assert found is not None
    first = await client.start_workflow(
        JourneyWorkflow.run,
        JourneyInput(journey=found[0], version=found[1], profile_id="ada", history_limit=25),
        id="journey:daily:ada",
        task_queue=settings.task_queue,
    )
    await client.get_workflow_handle("journey:daily:ada").signal(
        "event", EventRef(id="e1", type="x", timestamp=datetime.now(UTC))
    )
    await time_skipping_env.sleep(timedelta(days=12, hours=1))
    handle = client.get_workflow_handle_for(JourneyWorkflow.run, "journey:daily:ada")
    description = await handle.describe()
    assert description.run_id != first.first_execution_run_id, "the entry continued as new"
    assert description.raw_description.workflow_execution_info.history_length <= 40
    position = await handle.query(JourneyWorkflow.position)
    assert "e1" in position.events, "seen event ids are carried over"
    deliveries = ledger.list_deliveries(engine, "ada")
    assert len(deliveries) == 13, "one message a day, day 0 to day 12"
    assert len({d.idempotency_key for d in deliveries}) == 13
    await handle.terminate("test finished")
