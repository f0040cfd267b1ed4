"""ParcoursPlugin on a real dev server, as a Temporal user adds it to an existing worker."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import catalog, ledger
from activities.profiles import set_profile
from parcours import ParcoursPlugin
from parcours.loader import load_paths
from parcours.records import NewEvent
from parcours.settings import Settings
from starter.routing import send_event
from workflows.journey import JourneyWorkflow

QUICK = """
kind: template
id: hi
channel: sms
body: "hi {{ profile.id }}"
---
kind: journey
id: quick
entry: {event: hello}
start: first
nodes:
  - {id: first, type: message, channel: sms, template: hi, next: pause}
  - {id: pause, type: wait, duration: 1s, next: second}
  - {id: second, type: message, channel: sms, template: hi, next: done}
  - {id: done, type: end}
"""


async def test_the_plugin_on_the_client_is_all_a_worker_needs(
    dev_server_env: WorkflowEnvironment, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    (tmp_path / "quick.yaml").write_text(QUICK)
    catalog.publish(engine, load_paths([tmp_path / "quick.yaml"]))
    set_profile(engine, "ada", phone="+33612345678")
    client = await Client.connect(
        dev_server_env.client.service_client.config.target_host, plugins=[ParcoursPlugin(settings)]
    )
    async with Worker(client, task_queue=settings.task_queue):
        routed = await send_event(
            client, engine, settings, NewEvent(type="hello", profile_id="ada")
        )
        handle = client.get_workflow_handle_for(JourneyWorkflow.run, routed.journeys[0])
        position = await handle.result()
        # The heap the worker started with is left out of garbage collection while it runs
        # (`frozen_heap`): a campaign page's CPU is otherwise a third collector walks.
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    assert position.finished
    deliveries = ledger.list_deliveries(engine, "ada")
    # Without Twilio credentials, SMS goes to the outbox.
    assert [(d.channel, d.provider, d.to) for d in deliveries] == [
        ("sms", "outbox", "+33612345678")
    ] * 2


@pytest.mark.filterwarnings("ignore:The same plugin type")
async def test_passing_the_plugin_to_the_worker_too_is_refused(
    dev_server_env: WorkflowEnvironment, settings: Settings
) -> None:
    plugin = ParcoursPlugin(settings)
    client = await Client.connect(
        dev_server_env.client.service_client.config.target_host, plugins=[plugin]
    )
    with pytest.raises(ValueError, match="More than one activity named send_message"):
        Worker(client, task_queue=settings.task_queue, plugins=[plugin])
