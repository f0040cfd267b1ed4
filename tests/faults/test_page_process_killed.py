"""`kill -9` of the worker's page processes while a page's request is at the provider: the
worker stays up, the pages are retried in new processes, and the fake SendGrid receives each
recipient exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from temporalio.testing import WorkflowEnvironment

from activities.apply import apply_paths
from parcours.settings import Settings
from starter.campaigns import start_run
from tests.delivery import with_providers
from tests.fakes.sendgrid import FakeSendGrid
from tests.journeys import run_worker
from tests.stack import alive, page_processes, wait_until
from tests.test_campaigns import audience, one_pass_digest, reachable

pytestmark = pytest.mark.devserver
RECIPIENTS = 6_000


async def test_pages_whose_processes_are_killed_are_sent_again_exactly_once(
    dev_server_env: WorkflowEnvironment,
    settings: Settings,
    engine: Engine,
    fake_sendgrid: FakeSendGrid,
    tmp_path: Path,
    fault_summary: Callable[[str], None],
) -> None:
    defs = one_pass_digest(tmp_path / "defs")
    apply_paths(engine, [defs])
    audience(engine, RECIPIENTS)
    # The first page's request is held at the provider while its process is killed: the
    # provider takes it, and the page's retry must find that out rather than send again.
    fake_sendgrid.hang_next(1.0)
    async for client in run_worker(
        dev_server_env, with_providers(settings, sendgrid=fake_sendgrid)
    ):
        handle = await start_run(client, engine, settings, "weekly-digest")
        await asyncio.to_thread(
            wait_until, lambda: fake_sendgrid.attempts >= 1, 60, "a page's request"
        )
        killed = page_processes(os.getpid())
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        received_at_kill = len(fake_sendgrid.requests)
        report = await handle.result()

    sent_to = reachable(RECIPIENTS)
    received = Counter(m.to[0] for m in fake_sendgrid.requests)
    fault_summary(
        f"{RECIPIENTS:,} recipients, {len(killed)} page processes killed, "
        f"{received_at_kill:,} received at the kill, {sum(received.values()):,} received in all "
        f"by {len(received):,} distinct recipients, duplicates "
        f"{sum(n - 1 for n in received.values())}, report sent {report.sent}"
    )
    assert killed and not any(map(alive, killed))
    assert received_at_kill < len(sent_to), "the kill happened mid-run"
    assert received == Counter(sent_to), "each reachable recipient exactly once"
    assert report.sent == len(sent_to) and report.failed == {}
