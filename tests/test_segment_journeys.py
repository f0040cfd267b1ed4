"""Journeys entered by joining a segment, and left when the profile leaves one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.apply import apply_paths
from activities.profiles import set_profile
from activities.segments import refresh_profile
from parcours.records import NewEvent
from parcours.settings import Settings
from starter.routing import route_transitions, send_event
from tests.journeys import finish, run_worker

PRO = """
kind: segment
id: pro
rule: {attribute: plan, op: eq, value: pro}
---
kind: template
id: pro-welcome
channel: email
subject: Welcome to Pro
body: hi
---
kind: journey
id: pro-onboarding
entry: {segment_entered: pro}
exit_when: [{segment_exited: pro}]
start: settle
nodes:
  - {id: settle, type: wait, duration: 1d, next: mail}
  - {id: mail, type: message, channel: email, template: pro-welcome, next: done}
  - {id: done, type: end}
---
kind: journey
id: upgrade
entry: {event: upgrade_clicked}
start: flip
nodes:
  - {id: flip, type: update_profile, set: {plan: pro}, next: done}
  - {id: done, type: end}
"""


@pytest.fixture
async def client(
    time_skipping_env: WorkflowEnvironment, settings: Settings, engine: Engine, tmp_path: Path
) -> AsyncIterator[Client]:
    (tmp_path / "pro.yaml").write_text(PRO)
    apply_paths(engine, [tmp_path / "pro.yaml"])
    async for client in run_worker(time_skipping_env, settings):
        yield client


async def test_joining_a_segment_enters_and_leaving_it_exits(
    time_skipping_env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> None:
    set_profile(engine, "ada", email="ada@example.com", attributes={"plan": "pro"})
    joined = refresh_profile(engine, "ada", profile_changed=True)
    assert await route_transitions(client, engine, settings, joined) == [
        "journey:pro-onboarding:ada"
    ]
    set_profile(engine, "ada", attributes={"plan": "free"})
    left = refresh_profile(engine, "ada", profile_changed=True)
    assert await route_transitions(client, engine, settings, left) == ["journey:pro-onboarding:ada"]
    position = await finish(time_skipping_env, client, "journey:pro-onboarding:ada")
    assert position.exit_reason == "left segment pro"
    assert [s.node for s in position.path] == ["settle"]


async def test_a_journey_step_that_changes_the_profile_starts_another_journey(
    time_skipping_env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> None:
    set_profile(engine, "bo", email="bo@example.com", attributes={"plan": "free"})
    await send_event(client, engine, settings, NewEvent(type="upgrade_clicked", profile_id="bo"))
    await finish(time_skipping_env, client, "journey:upgrade:bo")
    position = await finish(time_skipping_env, client, "journey:pro-onboarding:bo")
    assert [(s.node, s.outcome) for s in position.path] == [
        ("settle", "waited"),
        ("mail", "sent"),
        ("done", "ended"),
    ]
