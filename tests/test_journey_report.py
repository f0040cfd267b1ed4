"""`journeys show` per node: entries that passed through, ended or left there (recorded once
per finished entry by the workflow), and those there now (Temporal visibility)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from typer.testing import CliRunner

from activities import catalog
from activities.apply import apply_paths
from activities.db import JourneyFinishRow
from activities.finishes import node_counts, record_finish
from activities.profiles import set_profile
from parcours import ParcoursPlugin
from parcours.contracts import EntryFinished
from parcours.records import NewEvent
from parcours.settings import Settings
from starter.cli import app
from starter.journey_report import node_reports
from starter.routing import send_event
from tests.conftest import EXAMPLES
from tests.journeys import finish, run_worker
from tests.test_lifecycle import eventually

CART = "journey:abandoned-cart:{}"


@pytest.fixture
async def client(
    time_skipping_env: WorkflowEnvironment, settings: Settings, engine: Engine
) -> AsyncIterator[Client]:
    apply_paths(engine, [EXAMPLES / "abandoned-cart"])
    async for client in run_worker(time_skipping_env, settings):
        yield client


async def test_finished_entries_are_counted_per_node_with_exit_reasons(
    time_skipping_env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> None:
    async def event(kind: str, profile: str, **properties: object) -> None:
        new = NewEvent(type=kind, profile_id=profile, properties=properties)
        await send_event(client, engine, settings, new)

    for profile in ("tim", "ex"):
        set_profile(engine, profile, email=f"{profile}@example.com", phone="+33612345678")
        await event("cart_updated", profile, total=40)
    await event("order_completed", "ex")  # leaves at once, during the first wait
    await finish(time_skipping_env, client, CART.format("ex"))
    await finish(time_skipping_env, client, CART.format("tim"))

    [(version, counts)] = node_counts(engine, "abandoned-cart").items()
    assert version == 1 and counts.finished == 2
    assert counts.passed == {
        "wait-1h": 2,
        "vip-check": 1,
        "mail": 1,
        "await-checkout": 1,
        "sms": 1,
        "done": 1,
    }
    journey = catalog.journey_version(engine, "abandoned-cart", 1)
    assert journey is not None
    rows = {row.id: row for row in node_reports(journey, {"mail": 3}, counts)}
    assert rows["wait-1h"].finished_here() == "1 left (order_completed 1)"
    assert rows["done"].finished_here() == "1 ended"
    assert (rows["mail"].passed, rows["mail"].now, rows["mail"].finished_here()) == (1, 3, "")
    assert rows["vip-mail"].passed == 0


def test_a_finish_recorded_again_counts_once_and_the_last_one_holds(engine: Engine) -> None:
    finished = EntryFinished(
        workflow_id="journey:j:ada",
        first_run_id="run-1",
        journey_id="j",
        version=2,
        profile_id="ada",
        node="done",
        visits={"start": 1, "done": 1},
        finished_at=datetime.now(UTC),
    )
    record_finish(engine, finished)
    record_finish(engine, finished)  # a retried local activity
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(JourneyFinishRow)).scalar() == 1
    assert node_counts(engine, "j")[2].ended == {"done": 1}

    # The last send recorded it as ended, but an exit heard at that moment won: corrected.
    record_finish(engine, finished.model_copy(update={"exit": "order_completed"}))
    counts = node_counts(engine, "j")[2]
    assert (counts.finished, counts.ended, counts.exits) == (
        1,
        {},
        {"done": {"order_completed": 1}},
    )


SLOW = """
kind: journey
id: slow-show
entry: {event: joined}
start: nap
nodes:
  - {id: nap, type: wait, duration: 1h, next: done}
  - {id: done, type: end}
"""


async def test_journeys_show_prints_passed_now_and_finished_per_node(
    dev_server_env: WorkflowEnvironment,
    settings: Settings,
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One dev server serves every test: a journey id of its own per store.
    name = f"slow-show-{engine.dialect.name}"
    (tmp_path / "slow.yaml").write_text(SLOW.replace("slow-show", name))
    apply_paths(engine, [tmp_path / "slow.yaml"])
    target = dev_server_env.client.service_client.config.target_host
    client = await Client.connect(target, plugins=[ParcoursPlugin(settings)])
    async with Worker(client, task_queue=settings.task_queue):
        for profile in ("a", "b"):
            await send_event(client, engine, settings, NewEvent(type="joined", profile_id=profile))
        await client.get_workflow_handle(f"journey:{name}:b").signal("stop", "journey stopped")

        async def b_finished() -> bool:
            return bool(node_counts(engine, name))

        await eventually(b_finished, "b's finish to be recorded")
        monkeypatch.setenv("PARCOURS_DATA_DIR", str(settings.data_dir))
        monkeypatch.setenv("PARCOURS_DATABASE_URL", settings.database_url)
        monkeypatch.setenv("TEMPORAL_ADDRESS", target)
        monkeypatch.setenv("PARCOURS_TASK_QUEUE", settings.task_queue)
        runner = CliRunner()

        async def shown() -> dict[str, object] | None:
            result = await asyncio.to_thread(
                runner.invoke, app, ["journeys", "show", name, "--json"]
            )
            assert result.exit_code == 0, result.stdout + result.stderr
            report = json.loads(result.stdout)
            nodes = {n["id"]: n for n in report["nodes"]}
            return report if nodes["nap"]["now"] == 1 else None

        report = await eventually(shown, "a to be listed at nap")
        nodes = {n["id"]: n for n in report["nodes"]}
        assert nodes["nap"] == {
            "id": "nap",
            "type": "wait",
            "summary": "wait 1h",
            "next": ["done"],
            "now": 1,
            "passed": 1,
            "ended": 0,
            "exits": {"journey stopped": 1},
        }
        assert report["versions"] == {"1": {"now": 1, "finished": 1}}
        assert report["definition"]["nodes"][0]["duration"] == "1h"
        table = await asyncio.to_thread(runner.invoke, app, ["journeys", "show", name])
        assert "1 left (journey stopped 1)" in table.stdout
        await client.get_workflow_handle(f"journey:{name}:a").terminate("test finished")
