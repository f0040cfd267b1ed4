"""The webhook node against a local HTTP server that records requests and fails on demand."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.apply import apply_paths
from activities.profiles import set_profile
from parcours.records import NewEvent
from parcours.settings import Settings
from starter.routing import send_event
from tests.journeys import finish, run_worker


class Receiver:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[int] = []  # statuses to answer next, then 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = receiver.answers.pop(0) if receiver.answers else 200
                receiver.requests.append(
                    {"path": self.path, "body": body.decode(), "key": self.headers["Idempotency-Key"],
                     "auth": self.headers.get("Authorization"), "status": status}
                )  # fmt: skip
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
async def client(
    time_skipping_env: WorkflowEnvironment,
    settings: Settings,
    engine: Engine,
    tmp_path: Path,
    receiver: Receiver,
) -> AsyncIterator[Client]:
    (tmp_path / "hook.yaml").write_text(
        f"""
kind: journey
id: hook
entry: {{event: signed_up}}
start: call
nodes:
  - id: call
    type: webhook
    url: {receiver.url}/crm
    headers: {{Authorization: Bearer crm-token}}
    body: '{{"id": "{{{{ profile.id }}}}", "plan": "{{{{ event.properties.plan }}}}"}}'
    next: done
  - {{id: done, type: end}}
"""
    )
    apply_paths(engine, [tmp_path / "hook.yaml"])
    set_profile(engine, "ada", email="ada@example.com")
    async for client in run_worker(time_skipping_env, settings):
        yield client


async def test_a_webhook_posts_the_rendered_body_and_records_the_status(
    time_skipping_env: WorkflowEnvironment,
    client: Client,
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
) -> None:
    receiver.answers = [503, 503]  # retried until the receiver is back
    await send_event(
        client,
        engine,
        settings,
        NewEvent(type="signed_up", profile_id="ada", properties={"plan": "pro"}),
    )
    position = await finish(time_skipping_env, client, "journey:hook:ada")
    assert position.path[0].outcome == "status 200"
    assert [r["status"] for r in receiver.requests] == [503, 503, 200]
    assert json.loads(receiver.requests[-1]["body"]) == {"id": "ada", "plan": "pro"}
    assert receiver.requests[-1]["auth"] == "Bearer crm-token"
    assert len({r["key"] for r in receiver.requests}) == 1, "one idempotency key across retries"


async def test_a_refused_webhook_is_recorded_and_the_journey_goes_on(
    time_skipping_env: WorkflowEnvironment,
    client: Client,
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
) -> None:
    receiver.answers = [422]
    await send_event(
        client,
        engine,
        settings,
        NewEvent(type="signed_up", profile_id="ada", properties={"plan": "pro"}),
    )
    position = await finish(time_skipping_env, client, "journey:hook:ada")
    assert position.path[0].outcome is not None and position.path[0].outcome.startswith(
        "status 422"
    )
    assert position.finished and len(receiver.requests) == 1
