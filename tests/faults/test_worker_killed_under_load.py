"""A worker killed with SIGKILL in the middle of a triggered load: 500 entries, two emails each
through the real `sendgrid` library to the fake SendGrid. Nothing may be lost or sent twice."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.fakes.sendgrid import FakeSendGrid
from tests.stack import DevStack, wait_until

pytestmark = pytest.mark.devserver

ENTRIES = 500
BURST = """
kind: template
id: burst
channel: email
subject: "Burst {{ journey.node }} for {{ profile.id }}"
body: "burst"
---
kind: journey
id: burst
entry: {event: burst}
start: first
nodes:
  - {id: first, type: message, channel: email, template: burst, next: pause}
  - {id: pause, type: wait, duration: 3s, next: second}
  - {id: second, type: message, channel: email, template: burst, next: done}
  - {id: done, type: end}
"""


@pytest.fixture
def stack(tmp_path: Path, fake_sendgrid: FakeSendGrid) -> Iterator[DevStack]:
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "burst.yaml").write_text(BURST)
    provider = {
        "SENDGRID_API_KEY": fake_sendgrid.api_key,
        "PARCOURS_SENDGRID_URL": fake_sendgrid.url,
    }
    dev = DevStack(tmp_path / "data", tmp_path / "defs", env=provider).start()
    yield dev
    dev.stop()


def test_a_worker_killed_under_a_500_entry_load_loses_and_doubles_nothing(
    stack: DevStack, fake_sendgrid: FakeSendGrid, fault_summary: Callable[[str], None]
) -> None:
    key = (stack.data_dir / "api.key").read_text().strip()
    events = [{"type": "burst", "profile_id": f"p{n}", "id": f"burst-{n}"} for n in range(ENTRIES)]
    people = stack.data_dir.parent / "people.jsonl"
    people.write_text(
        "".join(f'{{"id": "p{n}", "email": "p{n}@example.com"}}\n' for n in range(ENTRIES))
    )
    stack.cli("profiles", "import", str(people))
    with httpx.Client(
        base_url=f"http://127.0.0.1:{stack.api_port}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    ) as api:
        for start in range(0, ENTRIES, 100):
            answer = api.post("/v1/events", json={"events": events[start : start + 100]})
            assert answer.status_code == 202 and answer.json()["accepted"] == 100
            if start == 200:
                # In the middle of the load: sends and timers are under way.
                wait_until(lambda: len(fake_sendgrid.requests) >= 50, 60, "the first sends")
                old = stack.pid("worker")
                os.kill(old, signal.SIGKILL)
        wait_until(lambda: stack.pid("worker") != old, 30, "a new worker")

    store = create_engine(f"sqlite:///{stack.data_dir / 'parcours.db'}")

    def finished() -> int:
        with store.connect() as connection:
            query = "SELECT count(*) FROM journey_finishes WHERE journey_id = 'burst'"
            return int(connection.execute(text(query)).scalar() or 0)

    wait_until(lambda: finished() == ENTRIES, 240, f"{ENTRIES} entries to finish")
    with store.connect() as connection:
        rows = connection.execute(text("SELECT status, count(*) FROM deliveries GROUP BY 1"))
        statuses = Counter({status: count for status, count in rows})
    store.dispose()
    received = Counter((mail.to[0], mail.subject) for mail in fake_sendgrid.requests)
    doubled = [sent for sent, times in received.items() if times > 1]
    fault_summary(
        f"{ENTRIES} entries finished, "
        f"{len(received)} distinct mails at the fake from {len(fake_sendgrid.requests)} requests, "
        f"duplicates {len(doubled)}, deliveries by status {dict(statuses)}"
    )
    assert doubled == []
    assert len(received) == 2 * ENTRIES, "every entry sent both its emails"
    assert statuses == {"sent": 2 * ENTRIES}
