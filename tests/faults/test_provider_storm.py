"""A provider storm on the real dev server: SendGrid and Twilio answer 30% of sends with 503 or
429 + Retry-After, and every message still arrives exactly once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import Engine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import ledger
from activities.apply import apply_paths
from parcours.settings import Settings
from tests.conftest import client_with_plugin
from tests.delivery import with_providers
from tests.fakes.sendgrid import FakeSendGrid
from tests.fakes.server import Failure
from tests.fakes.twilio import FakeTwilio
from tests.faults.load import add_people, completed, enter, order_receipt, phone

ENTRIES = 200
STORM = [Failure(503)] * 4 + [Failure(429, retry_after=1)]


async def test_every_message_arrives_exactly_once_through_a_provider_storm(
    dev_server_env: WorkflowEnvironment,
    settings: Settings,
    engine: Engine,
    fake_sendgrid: FakeSendGrid,
    fake_twilio: FakeTwilio,
    tmp_path: Path,
    fault_summary: Callable[[str], None],
) -> None:
    (tmp_path / "order.yaml").write_text(order_receipt())
    apply_paths(engine, [tmp_path / "order.yaml"])
    add_people(engine, ENTRIES)
    settings = with_providers(settings, sendgrid=fake_sendgrid, twilio=fake_twilio)
    fake_sendgrid.fail_randomly(0.3, STORM, seed=1)
    fake_twilio.fail_randomly(0.3, STORM, seed=2)

    client = client_with_plugin(dev_server_env, settings)
    async with Worker(client, task_queue=settings.task_queue):
        workflow_ids = await enter(client, engine, settings, "ordered", ENTRIES)
        finished = await completed(client, workflow_ids, 240)

    mails, texts = fake_sendgrid.requests, fake_twilio.requests
    deliveries = ledger.list_deliveries(engine, limit=10 * ENTRIES)
    counts = {
        "entries completed": finished,
        "emails at the fake": len(mails),
        "sms at the fake": len(texts),
        "send attempts refused by the storm": (
            fake_sendgrid.attempts - len(mails) + fake_twilio.attempts - len(texts)
        ),
        **{f"deliveries {s}": n for s, n in Counter(d.status for d in deliveries).items()},
    }
    fault_summary(", ".join(f"{name} {n}" for name, n in counts.items()))
    assert counts["send attempts refused by the storm"] > 0.2 * 2 * ENTRIES
    assert finished == ENTRIES
    # Exactly once, by count and by recipient.
    assert sorted(m.to[0] for m in mails) == sorted(f"p{i}@example.com" for i in range(ENTRIES))
    assert sorted(t.to for t in texts) == sorted(phone(i) for i in range(ENTRIES))
    assert Counter(d.status for d in deliveries) == {"sent": 2 * ENTRIES}
    assert {d.provider_message_id for d in deliveries} == (
        {m.message_id for m in mails} | {t.sid for t in texts}
    )
