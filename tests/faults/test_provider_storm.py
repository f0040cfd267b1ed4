"""A provider storm on the real dev server: SendGrid and Twilio answer 30% of sends with 503 or
429 + Retry-After, and every message still arrives exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import ledger
from activities.apply import apply_paths
from activities.profiles import profile_update, upsert_profiles
from parcours.records import NewEvent
from parcours.settings import Settings
from starter.routing import send_event
from tests.conftest import client_with_plugin
from tests.delivery import with_providers
from tests.fakes.sendgrid import FakeSendGrid
from tests.fakes.server import Failure
from tests.fakes.twilio import FakeTwilio

ENTRIES = 200
ORDER_JOURNEY = """
kind: template
id: receipt-email
channel: email
subject: "Order {{ event.properties.order }}"
body: "Thanks for order {{ event.properties.order }}"
---
kind: template
id: receipt-sms
channel: sms
body: "Order {{ event.properties.order }} confirmed"
---
kind: journey
id: order-receipt
entry: {event: ordered}
start: mail
nodes:
  - {id: mail, type: message, channel: email, template: receipt-email, next: text}
  - {id: text, type: message, channel: sms, template: receipt-sms, next: done}
  - {id: done, type: end}
"""
STORM = [Failure(503)] * 4 + [Failure(429, retry_after=1)]


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


async def test_every_message_arrives_exactly_once_through_a_provider_storm(
    dev_server_env: WorkflowEnvironment,
    settings: Settings,
    engine: Engine,
    fake_sendgrid: FakeSendGrid,
    twilio: FakeTwilio,
    tmp_path: Path,
    fault_summary: Callable[[str], None],
) -> None:
    (tmp_path / "order.yaml").write_text(ORDER_JOURNEY)
    apply_paths(engine, [tmp_path / "order.yaml"])
    upsert_profiles(
        engine,
        [
            profile_update(f"p{i}", email=f"p{i}@example.com", phone=f"+336123{i:05d}")
            for i in range(ENTRIES)
        ],
    )
    settings = with_providers(settings, sendgrid=fake_sendgrid, twilio=twilio)
    fake_sendgrid.fail_randomly(0.3, STORM, seed=1)
    twilio.fail_randomly(0.3, STORM, seed=2)

    client = client_with_plugin(dev_server_env, settings)
    async with Worker(client, task_queue=settings.task_queue):
        limit = asyncio.Semaphore(16)

        async def order(i: int) -> str:
            async with limit:
                event = NewEvent(type="ordered", profile_id=f"p{i}", properties={"order": i})
                [workflow_id] = (await send_event(client, engine, settings, event)).journeys
                return workflow_id

        workflow_ids = await asyncio.gather(*(order(i) for i in range(ENTRIES)))
        async with asyncio.timeout(240):
            await asyncio.gather(*(client.get_workflow_handle(w).result() for w in workflow_ids))
        statuses = [(await client.get_workflow_handle(w).describe()).status for w in workflow_ids]

    mails, texts = fake_sendgrid.requests, twilio.requests
    deliveries = ledger.list_deliveries(engine, limit=10 * ENTRIES)
    counts = {
        "entries completed": statuses.count(WorkflowExecutionStatus.COMPLETED),
        "emails at the fake": len(mails),
        "sms at the fake": len(texts),
        "send attempts refused by the storm": (
            fake_sendgrid.attempts - len(mails) + twilio.attempts - len(texts)
        ),
        **{f"deliveries {s}": n for s, n in Counter(d.status for d in deliveries).items()},
    }
    fault_summary(", ".join(f"{name} {n}" for name, n in counts.items()))
    assert counts["send attempts refused by the storm"] > 0.2 * 2 * ENTRIES
    assert statuses.count(WorkflowExecutionStatus.COMPLETED) == ENTRIES
    # Exactly once, by count and by recipient.
    assert sorted(m.to[0] for m in mails) == sorted(f"p{i}@example.com" for i in range(ENTRIES))
    assert sorted(t.to for t in texts) == sorted(f"+336123{i:05d}" for i in range(ENTRIES))
    assert Counter(d.status for d in deliveries) == {"sent": 2 * ENTRIES}
    assert {d.provider_message_id for d in deliveries} == (
        {m.message_id for m in mails} | {t.sid for t in texts}
    )
