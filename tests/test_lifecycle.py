"""Pause, resume and stop, on the real dev server (stop finds entries through visibility)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.apply import apply_paths
from parcours import ParcoursPlugin
from parcours.errors import InputError
from parcours.records import NewEvent
from parcours.settings import Settings
from starter.lifecycle import set_status, where_profiles_are
from starter.routing import send_event
from workflows.journey import JourneyWorkflow

SLOW = """
kind: journey
id: slow
entry: {event: joined}
start: nap
nodes:
  - {id: nap, type: wait, duration: 1h, next: done}
  - {id: done, type: end}
"""


async def eventually(check, what: str, seconds: float = 30.0):  # type: ignore[no-untyped-def]
    # Visibility lags behind the workflows, the more so on a loaded machine: poll, within a
    # bound generous enough for two busy cores.
    for _ in range(int(seconds / 0.1)):
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


async def test_pause_resume_and_stop(
    dev_server_env: WorkflowEnvironment, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    (tmp_path / "slow.yaml").write_text(SLOW.replace("id: slow", f"id: slow-{engine.dialect.name}"))
    journey = f"slow-{engine.dialect.name}"
    apply_paths(engine, [tmp_path / "slow.yaml"])
    client = await Client.connect(
        dev_server_env.client.service_client.config.target_host, plugins=[ParcoursPlugin(settings)]
    )

    async def join(profile: str) -> list[str]:
        routed = await send_event(
            client, engine, settings, NewEvent(type="joined", profile_id=profile)
        )
        return routed.journeys

    async with Worker(client, task_queue=settings.task_queue):
        assert await join("a") == [f"journey:{journey}:a"]
        await set_status(client, engine, journey, "paused")
        assert await join("b") == [], "a paused journey takes no new entries"
        await set_status(client, engine, journey, "paused")  # again: nothing changes
        await set_status(client, engine, journey, "live")
        assert await join("c") == [f"journey:{journey}:c"]

        async def both_waiting() -> bool:
            return (await where_profiles_are(client, journey)).get("nap") == 2

        await eventually(both_waiting, "two entries at nap")
        assert await set_status(client, engine, journey, "stopped") == 2
        for profile in ("a", "c"):
            handle = client.get_workflow_handle_for(
                JourneyWorkflow.run, f"journey:{journey}:{profile}"
            )
            position = await handle.result()
            assert position.exit_reason == "journey stopped"
            assert position.path[-1].outcome == "exited: journey stopped"
        assert await join("d") == []
        with pytest.raises(InputError, match="is stopped and cannot be made live"):
            await set_status(client, engine, journey, "live")
