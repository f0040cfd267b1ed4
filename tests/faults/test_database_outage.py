"""PostgreSQL goes away in the middle of a triggered load on the real dev server, and comes back.

The server is stopped in `immediate` mode, PostgreSQL's crash: every connection dies at once,
whatever it was doing, including between a provider's answer and the ledger's record of it.
Sends fail and Temporal retries them; a send the provider took whose `sent` was never written
is found at the provider (SendGrid's Email Activity, Twilio's message list) and not sent again.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import ledger
from activities.apply import apply_paths
from activities.db import close_engine, engine_for
from parcours.settings import Settings
from tests.conftest import client_with_plugin
from tests.delivery import with_providers
from tests.fakes.sendgrid import FakeSendGrid
from tests.fakes.twilio import FakeTwilio
from tests.faults.load import add_people, completed, enter, order_receipt, phone
from tests.postgres import PostgresServer, postgres_server
from tests.stack import NO_QUIET_HOURS

ENTRIES = 150
OUTAGE_SECONDS = 4.0


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[tuple[PostgresServer, str]]:
    """A server of this test's own, since it is stopped: the session's serves the others."""
    with postgres_server() as server:
        admin = create_engine(f"{server.url}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text('CREATE DATABASE "outage"'))
        admin.dispose()
        url = f"{server.url}/outage"
        yield server, url
        close_engine(url)


def outage_after(
    fake: FakeSendGrid, mails: int, server: PostgresServer, seconds: float
) -> tuple[threading.Thread, list[int]]:
    """Stop the server once `mails` emails went out, start it again `seconds` later; the
    list gets the number of emails sent when it went down."""
    at: list[int] = []

    def run() -> None:
        fake.wait_for(mails, timeout=60)
        server.stop("immediate")
        at.append(len(fake.requests))
        time.sleep(seconds)
        server.start()

    thread = threading.Thread(target=run, name="outage", daemon=True)
    thread.start()
    return thread, at


async def test_a_database_outage_during_sends_loses_and_doubles_nothing(
    dev_server_env: WorkflowEnvironment,
    private_postgres: tuple[PostgresServer, str],
    fake_sendgrid: FakeSendGrid,
    fake_twilio: FakeTwilio,
    tmp_path: Path,
    fault_summary: Callable[[str], None],
) -> None:
    server, url = private_postgres
    settings = Settings.load(
        tmp_path / "data", env={"PARCOURS_DATABASE_URL": url, **NO_QUIET_HOURS}
    )
    settings = with_providers(
        settings.model_copy(update={"task_queue": f"outage-{uuid.uuid4()}"}),
        sendgrid=fake_sendgrid,
        twilio=fake_twilio,
    )
    engine: Engine = engine_for(url)
    (tmp_path / "order.yaml").write_text(order_receipt(settle="2s"))
    apply_paths(engine, [tmp_path / "order.yaml"])
    add_people(engine, ENTRIES)

    client = client_with_plugin(dev_server_env, settings)
    async with Worker(client, task_queue=settings.task_queue):
        workflow_ids = await enter(client, engine, settings, "ordered", ENTRIES)
        outage, down_at = outage_after(fake_sendgrid, ENTRIES // 5, server, OUTAGE_SECONDS)
        finished = await completed(client, workflow_ids, 90)
        await asyncio.to_thread(outage.join)

    mails, texts = fake_sendgrid.requests, fake_twilio.requests
    deliveries = ledger.list_deliveries(engine, limit=10 * ENTRIES)
    statuses = Counter(d.status for d in deliveries)
    counts = {
        "entries completed": finished,
        "emails sent when the database went down": down_at[0],
        "emails at the fake": len(mails),
        "sms at the fake": len(texts),
        # Sends whose outcome the outage left unknown, asked about before any resend.
        "lookups at the providers": fake_sendgrid.lookups + fake_twilio.lookups,
        "addresses reached twice": sum(
            n > 1 for n in Counter([m.to[0] for m in mails] + [t.to for t in texts]).values()
        ),
        **{f"deliveries {s}": n for s, n in statuses.items()},
    }
    fault_summary(", ".join(f"{name} {n}" for name, n in counts.items()))
    assert 0 < down_at[0] < ENTRIES, "the outage fell among the sends"
    assert finished == ENTRIES
    assert counts["addresses reached twice"] == 0
    assert sorted(m.to[0] for m in mails) == sorted(f"p{i}@example.com" for i in range(ENTRIES))
    assert sorted(t.to for t in texts) == sorted(phone(i) for i in range(ENTRIES))
    assert statuses == {"sent": 2 * ENTRIES}
    assert {d.provider_message_id for d in deliveries} == (
        {m.message_id for m in mails} | {t.sid for t in texts}
    )
