"""`kill -9` of the worker in the middle of a 50,000-recipient campaign run: a new worker
finishes the run and the fake SendGrid received each recipient exactly once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from activities.campaigns import run_reports
from activities.db import DeliveryRow, engine_for
from tests.fakes.sendgrid import FakeSendGrid
from tests.stack import DevStack, alive, descendants, wait_until
from tests.test_campaigns import audience, one_pass_digest, reachable

pytestmark = pytest.mark.devserver
RECIPIENTS = 50_000


def test_a_run_survives_a_killed_worker_and_sends_each_recipient_exactly_once(
    tmp_path: Path, fake_sendgrid: FakeSendGrid, fault_summary: Callable[[str], None]
) -> None:
    defs = one_pass_digest(tmp_path / "defs")
    stack = DevStack(
        tmp_path / "data",
        defs,
        env={"SENDGRID_API_KEY": fake_sendgrid.api_key, "PARCOURS_SENDGRID_URL": fake_sendgrid.url},
    ).start()
    try:
        engine = engine_for(f"sqlite:///{tmp_path / 'data' / 'parcours.db'}")
        audience(engine, RECIPIENTS)
        stack.cli("campaigns", "run", "weekly-digest", "--no-wait")
        wait_until(lambda: len(fake_sendgrid.requests) >= 8_000, 120, "the run to be under way")
        first_worker = stack.pid("worker")
        # Its page processes (and the fork server they came from) must not send on without it.
        under_worker = descendants(first_worker)
        stack.kill9("worker")
        wait_until(lambda: not alive(first_worker), 10, "the worker to die")
        wait_until(lambda: not any(map(alive, under_worker)), 10, "the worker's processes to die")
        received_at_kill = len(fake_sendgrid.requests)
        wait_until(
            lambda: stack.pid("worker") != first_worker and alive(stack.pid("worker")),
            60,
            "a new worker",
        )
        [report] = wait_until(
            lambda: [r for r in run_reports(engine, "weekly-digest") if r["status"] == "completed"],
            300,
            "the run to complete",
        )
    finally:
        stack.stop()

    sent_to = reachable(RECIPIENTS)
    received = Counter(m.to[0] for m in fake_sendgrid.requests)
    with Session(engine) as session:
        # Rows the kill left `sending` were found at SendGrid: they keep its message id too.
        sent_without_id = session.scalar(
            select(func.count()).where(
                DeliveryRow.status == "sent", DeliveryRow.provider_message_id.is_(None)
            )
        )
    fault_summary(
        f"{RECIPIENTS:,} recipients, {len(sent_to):,} reachable, "
        f"{len(under_worker)} processes under the killed worker, all gone, "
        f"{received_at_kill:,} received at the kill, {sum(received.values()):,} received in all "
        f"by {len(received):,} distinct recipients, duplicates "
        f"{sum(n - 1 for n in received.values())}, report "
        f"{ {k: report[k] for k in ('sent', 'suppressed', 'failed')} }"
    )
    assert received_at_kill < len(sent_to), "the kill happened mid-run"
    assert under_worker, "the killed worker sent its pages from processes of its own"
    assert received == Counter(sent_to), "each reachable recipient exactly once"
    assert report["sent"] == len(sent_to) and report["failed"] == {}
    assert sent_without_id == 0
