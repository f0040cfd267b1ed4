"""An SMS storm on the real dev server: Twilio answers 429 with Retry-After, and hangs past the
client timeout (some hung requests it refuses, others it takes after the client gave up), then
recovers. Each SMS arrives exactly once: a hung request Twilio did take is found in its message
list when the send is retried, and not sent a second time."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import ledger
from activities.apply import apply_paths
from parcours.settings import Settings
from tests.conftest import client_with_plugin
from tests.delivery import with_providers
from tests.fakes.server import Failure
from tests.fakes.twilio import FakeTwilio
from tests.faults.load import add_people, completed, enter, phone

ENTRIES = 60
TIMEOUT = 1.0  # the Twilio client's, PARCOURS_PROVIDER_TIMEOUT_SECONDS
HANG = 1.5  # past the timeout; the retry asks Twilio after as long again
HUNG_REFUSED, HUNG_TAKEN = 6, 10
CODE_JOURNEY = """
kind: template
id: code-sms
channel: sms
body: "Order {{ event.properties.order }} is on its way"
---
kind: journey
id: code
entry: {event: shipped}
start: text
nodes:
  - {id: text, type: message, channel: sms, template: code-sms, next: done}
  - {id: done, type: end}
"""


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_each_sms_arrives_once_through_429s_and_hangs_past_the_client_timeout(
    dev_server_env: WorkflowEnvironment,
    settings: Settings,
    engine: Engine,
    fake_twilio: FakeTwilio,
    tmp_path: Path,
    fault_summary: Callable[[str], None],
) -> None:
    (tmp_path / "code.yaml").write_text(CODE_JOURNEY)
    apply_paths(engine, [tmp_path / "code.yaml"])
    add_people(engine, ENTRIES)
    settings = with_providers(settings, twilio=fake_twilio).model_copy(
        update={"provider_timeout_seconds": TIMEOUT}
    )
    # The first sends hang; the first of those are then refused, the others taken.
    fake_twilio.hang_next(HANG, times=HUNG_REFUSED + HUNG_TAKEN)
    fake_twilio.fail_next(429, times=HUNG_REFUSED, retry_after=1)
    # Then a storm of rate limits, until Twilio recovers.
    fake_twilio.fail_randomly(0.4, [Failure(429, retry_after=1)], seed=3)

    client = client_with_plugin(dev_server_env, settings)
    async with Worker(client, task_queue=settings.task_queue):
        workflow_ids = await enter(client, engine, settings, "shipped", ENTRIES)
        # Off the event loop, which the worker needs meanwhile.
        await asyncio.to_thread(fake_twilio.wait_for, ENTRIES // 2, 60)
        fake_twilio.fail_randomly(0, [])
        finished = await completed(client, workflow_ids, 60)

    texts = fake_twilio.requests
    deliveries = ledger.list_deliveries(engine, limit=10 * ENTRIES)
    statuses = Counter(d.status for d in deliveries)
    counts = {
        "entries completed": finished,
        "sms at the fake": len(texts),
        "numbers texted twice": sum(n > 1 for n in Counter(t.to for t in texts).values()),
        "send attempts": fake_twilio.attempts,
        "hung past the client timeout": HUNG_REFUSED + HUNG_TAKEN,
        **{f"deliveries {s}": n for s, n in statuses.items()},
    }
    fault_summary(", ".join(f"{name} {n}" for name, n in counts.items()))
    assert finished == ENTRIES
    assert counts["numbers texted twice"] == 0
    assert sorted(t.to for t in texts) == sorted(phone(n) for n in range(ENTRIES))
    assert statuses == {"sent": ENTRIES}
    # Each delivery holds the sid of its own message, those taken after the hang included.
    assert sorted(d.provider_message_id or "" for d in deliveries) == sorted(t.sid for t in texts)
    assert fake_twilio.attempts > ENTRIES + HUNG_REFUSED, "the storm refused sends"
