"""`kill -9` of the worker in the middle of a 50,000-recipient campaign run: a new worker
finishes the run and the fake SendGrid received each recipient exactly once."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from activities.campaigns import run_reports
from activities.db import DeliveryRow, engine_for
from tests.conftest import EXAMPLES
from tests.fakes.sendgrid import FakeSendGrid
from tests.stack import DevStack, alive, descendants, wait_until
from tests.test_campaigns import BOUNCED, OPTED_OUT, audience

pytestmark = pytest.mark.devserver
RECIPIENTS = 50_000


def test_a_run_survives_a_killed_worker_and_sends_each_recipient_exactly_once(
    tmp_path: Path, fake_sendgrid: FakeSendGrid, fault_summary: Callable[[str], None]
) -> None:
    defs = tmp_path / "defs"
    shutil.copytree(EXAMPLES / "weekly-digest", defs)
    campaign = (defs / "campaign.yaml").read_text()
    (defs / "campaign.yaml").write_text(
        campaign.replace("follow_up:", "# follow_up:").replace("rate_limit:", "# rate_limit:")
    )
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

    left_out = set(OPTED_OUT) | set(BOUNCED)
    reachable = [f"p{i:05d}@example.com" for i in range(RECIPIENTS) if i not in left_out]
    received = Counter(m.to[0] for m in fake_sendgrid.requests)
    with Session(engine) as session:
        # Rows the kill left `sending` were found at SendGrid: they keep its message id too.
        sent_without_id = session.scalar(
            select(func.count()).where(
                DeliveryRow.status == "sent", DeliveryRow.provider_message_id.is_(None)
            )
        )
    fault_summary(
        f"{RECIPIENTS:,} recipients, {len(reachable):,} reachable, "
        f"{len(under_worker)} processes under the killed worker, all gone, "
        f"{received_at_kill:,} received at the kill, {sum(received.values()):,} received in all "
        f"by {len(received):,} distinct recipients, duplicates "
        f"{sum(n - 1 for n in received.values())}, report "
        f"{ {k: report[k] for k in ('sent', 'suppressed', 'failed')} }"
    )
    assert received_at_kill < len(reachable), "the kill happened mid-run"
    assert under_worker, "the killed worker sent its pages from processes of its own"
    assert received == Counter(reachable), "each reachable recipient exactly once"
    assert report["sent"] == len(reachable) and report["failed"] == {}
    assert sent_without_id == 0
