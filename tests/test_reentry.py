"""Re-entry rules, enforced across every version of a journey."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities import ledger
from activities.apply import apply_paths
from activities.catalog import current_journey
from activities.entries import may_enter, record_entry
from activities.profiles import set_profile
from parcours.records import NewEvent
from parcours.settings import Settings
from starter.routing import send_event
from tests.journeys import finish, run_worker

QUICK = """
kind: template
id: hi-{id}
channel: email
subject: hi
body: hi
---
kind: journey
id: {id}
entry: {{event: joined}}
re_entry: {rule}
start: m
nodes:
  - {{id: m, type: message, channel: email, template: hi-{id}, next: x}}
  - {{id: x, type: end}}
"""


@pytest.fixture
async def client(
    time_skipping_env: WorkflowEnvironment, settings: Settings, engine: Engine, tmp_path: Path
) -> AsyncIterator[Client]:
    for journey, rule in (("once", "never"), ("weekly", "{cooldown: 7d}"), ("again", "after_exit")):
        (tmp_path / f"{journey}.yaml").write_text(QUICK.format(id=journey, rule=rule))
    apply_paths(engine, [tmp_path])
    set_profile(engine, "ada", email="ada@example.com")
    async for client in run_worker(time_skipping_env, settings):
        yield client


async def test_never_and_cooldown_refuse_a_second_entry_after_exit_allows_it(
    time_skipping_env: WorkflowEnvironment,
    client: Client,
    engine: Engine,
    settings: Settings,
    tmp_path: Path,
) -> None:
    first = await send_event(client, engine, settings, NewEvent(type="joined", profile_id="ada"))
    assert sorted(first.journeys) == ["journey:again:ada", "journey:once:ada", "journey:weekly:ada"]
    for workflow_id in first.journeys:
        await finish(time_skipping_env, client, workflow_id)
    # A new version does not reset who already entered.
    (tmp_path / "once.yaml").write_text(
        QUICK.format(id="once", rule="never").replace("subject: hi", "subject: hello")
    )
    apply_paths(engine, [tmp_path / "once.yaml"])
    assert current_journey(engine, "once") is not None and current_journey(engine, "once")[1] == 2  # type: ignore[index]

    second = await send_event(client, engine, settings, NewEvent(type="joined", profile_id="ada"))
    assert second.journeys == ["journey:again:ada"]
    await finish(time_skipping_env, client, "journey:again:ada")
    templates = sorted(d.journey_id or "" for d in ledger.list_deliveries(engine, "ada"))
    assert templates == ["again", "again", "once", "weekly"]


def test_a_cooldown_counts_from_the_last_entry(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "weekly.yaml").write_text(QUICK.format(id="weekly", rule="{cooldown: 7d}"))
    apply_paths(engine, [tmp_path / "weekly.yaml"])
    found = current_journey(engine, "weekly")
    assert found is not None
    journey = found[0]
    start = datetime(2027, 1, 1, tzinfo=UTC)
    assert may_enter(engine, [journey], "bo", now=start) == {"weekly"}
    record_entry(engine, "weekly", 1, "bo", now=start)
    assert may_enter(engine, [journey], "bo", now=start + timedelta(days=6, hours=23)) == set()
    assert may_enter(engine, [journey], "bo", now=start + timedelta(days=7)) == {"weekly"}
