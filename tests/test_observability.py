"""What operators see: Prometheus metrics from the API and the worker (and the Temporal SDK's),
`/readyz`, and JSON log lines that name the workflow they come from."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from activities import catalog, ledger
from activities.apply import apply_paths
from activities.db import DeliveryRow, close_engine
from activities.profiles import profile_update, set_profile, upsert_profiles
from parcours import ParcoursPlugin
from parcours.contracts import SendMessageInput
from parcours.loader import load_paths
from parcours.records import NewEvent
from parcours.settings import Settings
from starter import logs
from starter.api import create_app
from starter.campaigns import start_run
from starter.routing import send_event
from starter.schedules import RECHECK_SCHEDULE_ID, WAITING_SCHEDULE_ID
from tests.conftest import EXAMPLES
from tests.delivery import SendGridSigner, with_providers
from tests.fakes.sendgrid import FakeSendGrid
from tests.journeys import finish, run_worker
from tests.postgres import postgres_server
from tests.stack import NO_QUIET_HOURS, free_port, wait_until
from worker.telemetry import metrics_server

KEY = "metrics-key"


def value(name: str, **labels: str) -> float:
    """A sample of this process's registry (what the API and an in-process worker serve)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scraped(text: str, name: str, **labels: str) -> float | None:
    """A sample from Prometheus' text format, as a scraper reads it."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


@pytest.fixture
def welcome(engine: Engine) -> None:
    catalog.publish(engine, load_paths([EXAMPLES / "welcome"]))
    set_profile(engine, "ada", email="ada@example.com")


def asgi(app: Any, key: str | None = KEY) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api", headers=headers
    )


@pytest.fixture
async def api(settings: Settings, temporal: Client) -> AsyncIterator[httpx.AsyncClient]:
    async def client() -> Client:
        return temporal

    async with asgi(create_app(settings, client, keys=[KEY])) as http:
        yield http


async def test_the_api_counts_events_and_the_journeys_they_start(
    time_skipping_env: WorkflowEnvironment,
    api: httpx.AsyncClient,
    temporal: Client,
    welcome: None,
) -> None:
    before = (await api.get("/metrics")).text
    event = {"id": f"e-{uuid.uuid4()}", "type": "signed_up", "profile_id": "ada"}
    assert (await api.post("/v1/events", json=event)).status_code == 202
    assert (await api.post("/v1/events", json={"events": [event]})).json()["duplicates"] == 1
    await finish(time_skipping_env, temporal, "journey:welcome:ada")

    scrape = await api.get("/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
    after = scrape.text

    def moved(name: str, **labels: str) -> float:
        return (scraped(after, name, **labels) or 0) - (scraped(before, name, **labels) or 0)

    assert moved("parcours_events_received_total", result="accepted") == 1
    assert moved("parcours_events_received_total", result="duplicate") == 1
    assert moved("parcours_journeys_started_total", journey="welcome") == 1
    # No provider configured: the journey's two emails went to the outbox, counted as sent.
    assert moved("parcours_deliveries_total", channel="email", status="sent") == 2
    assert scraped(after, "parcours_ingest_queue_depth") == 0
    assert (await api.get("/metrics", headers={"Authorization": ""})).status_code == 401
    paths = (await api.get("/openapi.json")).json()["paths"]
    assert "/metrics" not in paths and "/readyz" not in paths


async def test_the_ingest_queue_depth_counts_events_the_api_is_still_routing(
    api: httpx.AsyncClient, welcome: None
) -> None:
    batch = {"events": [{"type": "visited", "profile_id": f"p{i}"} for i in range(50)]}
    posting = asyncio.create_task(api.post("/v1/events", json=batch))
    seen = 0.0
    while not posting.done():
        seen = max(
            seen, scraped((await api.get("/metrics")).text, "parcours_ingest_queue_depth") or 0
        )
        await asyncio.sleep(0)
    assert (await posting).json()["accepted"] == 50
    assert seen == 50, "the whole batch is waiting while the API routes it"
    assert value("parcours_ingest_queue_depth") == 0


@pytest.fixture
async def sendgrid_worker(
    time_skipping_env: WorkflowEnvironment,
    settings: Settings,
    fake_sendgrid: FakeSendGrid,
) -> AsyncIterator[Client]:
    async for client in run_worker(
        time_skipping_env, with_providers(settings, sendgrid=fake_sendgrid)
    ):
        yield client


async def test_the_worker_counts_deliveries_by_channel_and_status_and_times_the_provider(
    time_skipping_env: WorkflowEnvironment,
    sendgrid_worker: Client,
    engine: Engine,
    settings: Settings,
    fake_sendgrid: FakeSendGrid,
    welcome: None,
) -> None:
    sent = value("parcours_deliveries_total", channel="email", status="sent")
    failed = value("parcours_deliveries_total", channel="email", status="failed")
    timed_ok = value(
        "parcours_provider_request_seconds_count",
        provider="sendgrid",
        operation="send",
        outcome="ok",
    )
    timed_error = value(
        "parcours_provider_request_seconds_count",
        provider="sendgrid",
        operation="send",
        outcome="error",
    )
    # The first mail is refused for good, the second goes out.
    fake_sendgrid.fail_next(400, message="The from address does not match a verified Sender.")
    await send_event(
        sendgrid_worker, engine, settings, NewEvent(type="signed_up", profile_id="ada")
    )
    await finish(time_skipping_env, sendgrid_worker, "journey:welcome:ada")

    assert value("parcours_deliveries_total", channel="email", status="failed") - failed == 1
    assert value("parcours_deliveries_total", channel="email", status="sent") - sent == 1
    labels = {"provider": "sendgrid", "operation": "send"}
    assert value("parcours_provider_request_seconds_count", **labels, outcome="ok") - timed_ok == 1
    assert (
        value("parcours_provider_request_seconds_count", **labels, outcome="error") - timed_error
        == 1
    )
    assert value("parcours_provider_request_seconds_sum", **labels, outcome="ok") > 0


async def test_campaign_pages_count_every_settled_delivery_once(
    sendgrid_worker: Client,
    engine: Engine,
    settings: Settings,
    tmp_path: Path,
) -> None:
    (tmp_path / "digest").mkdir()
    for name in ("campaign.yaml", "segments.yaml", "templates.yaml"):
        (tmp_path / "digest" / name).write_text((EXAMPLES / "weekly-digest" / name).read_text())
    apply_paths(engine, [tmp_path / "digest"])
    upsert_profiles(
        engine,
        [
            profile_update(
                f"r{i}",
                email=f"r{i}@example.com",
                attributes={"newsletter": True},
                consent={"email": False} if i == 0 else None,
            )
            for i in range(20)
        ]
        + [profile_update("r-nowhere", attributes={"newsletter": True})],
    )
    statuses = ("sent", "suppressed", "failed")
    before = {s: value("parcours_deliveries_total", channel="email", status=s) for s in statuses}
    bulk = value(
        "parcours_provider_request_seconds_count",
        provider="sendgrid",
        operation="send_bulk",
        outcome="ok",
    )
    report = await (await start_run(sendgrid_worker, engine, settings, "weekly-digest")).result()
    assert report.status == "completed"

    with Session(engine) as session:
        in_ledger = dict(
            session.execute(
                select(DeliveryRow.status, func.count()).group_by(DeliveryRow.status)
            ).all()
        )
    assert in_ledger["sent"] >= 19 and in_ledger["suppressed"] == 2  # opted out, no address
    for status in statuses:
        counted = value("parcours_deliveries_total", channel="email", status=status)
        assert counted - before[status] == in_ledger.get(status, 0), status
    assert (
        value(
            "parcours_provider_request_seconds_count",
            provider="sendgrid",
            operation="send_bulk",
            outcome="ok",
        )
        > bulk
    )


async def test_the_api_counts_what_provider_callbacks_report(
    settings: Settings, engine: Engine
) -> None:
    set_profile(engine, "ada", email="ada@example.com")
    claim = ledger.claim(
        engine,
        SendMessageInput(idempotency_key="k", profile_id="ada", channel="email", template="t"),
    )
    ledger.finish(engine, claim.delivery_id, "sent", provider="sendgrid")
    signer = SendGridSigner()

    async def no_temporal() -> Client:
        raise AssertionError("callbacks do not need Temporal")

    configured = settings.model_copy(update={"sendgrid_webhook_public_key": signer.public_key})
    events = [
        {"event": kind, "sg_event_id": f"ev-{kind}", "parcours_delivery_id": claim.delivery_id}
        for kind in ("delivered", "click", "open")  # an open after a click changes nothing
    ]
    statuses = ("delivered", "clicked", "opened")
    before = {s: value("parcours_deliveries_total", channel="email", status=s) for s in statuses}
    async with asgi(create_app(configured, no_temporal, keys=[KEY]), key=None) as http:
        for _ in range(2):  # the second time, a replay: applied once, counted once
            body, headers = signer.sign(events)
            answer = await http.post("/v1/webhooks/sendgrid", content=body, headers=headers)
            assert answer.status_code == 200, answer.text
    moved = {
        s: value("parcours_deliveries_total", channel="email", status=s) - before[s]
        for s in statuses
    }
    assert moved == {"delivered": 1, "clicked": 1, "opened": 0}


async def test_readyz_is_ready_when_the_store_and_temporal_answer(api: httpx.AsyncClient) -> None:
    ready = await api.get("/readyz", headers={"Authorization": ""})
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "temporal": "ok"}}


async def test_readyz_says_temporal_is_not_ready_when_it_cannot_be_reached(
    settings: Settings,
) -> None:
    closed = f"127.0.0.1:{free_port()}"

    async def client() -> Client:
        return await Client.connect(closed)

    async with asgi(create_app(settings, client, keys=[KEY]), key=None) as http:
        answer = await http.get("/readyz")
    assert answer.status_code == 503
    assert answer.json() == {
        "status": "not_ready",
        "checks": {"database": "ok", "temporal": "unreachable"},
    }


async def test_readyz_says_the_database_is_not_ready_when_it_is_down(
    time_skipping_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async def client() -> Client:
        return time_skipping_env.client

    with postgres_server() as server:
        url = f"{server.url}/postgres"
        settings = Settings.load(tmp_path / "pg", env={"PARCOURS_DATABASE_URL": url})
        http = asgi(create_app(settings, client, keys=[KEY]), key=None)
        assert (await http.get("/readyz")).status_code == 200
    # The server is gone now.
    try:
        answer = await http.get("/readyz")
    finally:
        await http.aclose()
        close_engine(url)
    assert answer.status_code == 503
    assert answer.json() == {
        "status": "not_ready",
        "checks": {"database": "unreachable", "temporal": "ok"},
    }


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Log records of this process as `parcours worker` writes them (JSON, one a line)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    on_message = activity.logger.activity_info_on_message, workflow.logger.workflow_info_on_message
    lines = io.StringIO()
    logs.configure("json")
    root.handlers[0].setStream(lines)  # type: ignore[attr-defined]
    try:
        yield lines
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        activity.logger.activity_info_on_message, workflow.logger.workflow_info_on_message = (
            on_message
        )


async def test_an_activity_log_line_is_json_naming_its_workflow_and_run(
    time_skipping_env: WorkflowEnvironment,
    temporal: Client,
    engine: Engine,
    settings: Settings,
    welcome: None,
    json_lines: io.StringIO,
) -> None:
    await send_event(temporal, engine, settings, NewEvent(type="signed_up", profile_id="ada"))
    position = await finish(time_skipping_env, temporal, "journey:welcome:ada")
    assert position.finished
    records = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    sends = [r for r in records if r.get("activity") == "send_message"]
    assert len(sends) == 2, records
    run_id = (await temporal.get_workflow_handle("journey:welcome:ada").describe()).run_id
    for record in sends:
        assert record["workflow_id"] == "journey:welcome:ada"
        assert record["run_id"] == run_id
        assert record["level"] == "INFO" and record["logger"] == "temporalio.activity"
        assert record["message"].endswith("(email welcome-email): sent") or record[
            "message"
        ].endswith("(email tips-email): sent")
        assert "{" not in record["message"], "the workflow is a field, not text in the message"
        assert record["time"].endswith("+00:00")


def test_a_workflow_log_record_carries_its_workflow_and_run() -> None:
    record = logging.makeLogRecord(
        {
            "name": "temporalio.workflow",
            "levelname": "INFO",
            "msg": "skipped: %s is still running",
            "args": ("campaign:digest:1",),
            "temporal_workflow": {
                "workflow_id": "campaign-schedule:digest",
                "run_id": "r-1",
                "workflow_type": "CampaignScheduleWorkflow",
                "attempt": 1,
                "namespace": "default",
                "task_queue": "parcours",
            },
            "delivery_id": "d-1",
        }
    )
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["message"] == "skipped: campaign:digest:1 is still running"
    assert line["workflow_id"] == "campaign-schedule:digest" and line["run_id"] == "r-1"
    assert line["workflow_type"] == "CampaignScheduleWorkflow"
    assert line["delivery_id"] == "d-1", "a call's own extra fields are kept"
    assert "temporal_workflow" not in line and "activity" not in line


def test_metrics_and_log_settings_are_checked(tmp_path: Path) -> None:
    loaded = Settings.load(
        tmp_path,
        env={
            "PARCOURS_WORKER_METRICS_ADDRESS": "0.0.0.0:9100",
            "PARCOURS_TEMPORAL_METRICS_ADDRESS": "off",
            "PARCOURS_LOG_FORMAT": "text",
            "PARCOURS_LOG_LEVEL": "debug",
        },
    )
    assert loaded.worker_metrics_address == "0.0.0.0:9100"
    assert loaded.temporal_metrics_address is None
    assert (loaded.log_format, loaded.log_level) == ("text", "DEBUG")
    with pytest.raises(ValueError, match=r"expected host:port \(or off\), got '9100'"):
        Settings.load(tmp_path, env={"PARCOURS_WORKER_METRICS_ADDRESS": "9100"})
    with pytest.raises(ValueError, match="log_format"):
        Settings.load(tmp_path, env={"PARCOURS_LOG_FORMAT": "xml"})


def test_a_taken_metrics_port_stops_the_worker_with_the_setting_to_change(
    tmp_path: Path,
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        settings = Settings.load(tmp_path, env={"PARCOURS_WORKER_METRICS_ADDRESS": address})
        with (
            pytest.raises(ValueError, match="PARCOURS_WORKER_METRICS_ADDRESS"),
            metrics_server(settings),
        ):
            pass


JOURNEY = """
kind: journey
id: {id}
entry: {{event: signed_up}}
start: hello
nodes:
  - {{id: hello, type: message, channel: email, template: welcome-email, next: done}}
  - {{id: done, type: end}}
"""


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_parcours_worker_serves_its_metrics_the_sdks_and_json_logs(
    dev_server_env: WorkflowEnvironment,
    settings: Settings,
    engine: Engine,
    fake_sendgrid: FakeSendGrid,
    tmp_path: Path,
) -> None:
    """The real `parcours worker` process, against the dev server, as an operator runs it."""
    journey = f"hello-{uuid.uuid4().hex[:8]}"
    (tmp_path / "journey.yaml").write_text(JOURNEY.format(id=journey))
    apply_paths(engine, [tmp_path / "journey.yaml", EXAMPLES / "welcome" / "templates.yaml"])
    set_profile(engine, "ada", email="ada@example.com")
    target = dev_server_env.client.service_client.config.target_host
    ours, sdks = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    log = tmp_path / "worker.log"
    env = {
        **os.environ,
        **NO_QUIET_HOURS,
        "PARCOURS_DATA_DIR": str(settings.data_dir),
        "PARCOURS_DATABASE_URL": settings.database_url,
        "PARCOURS_TASK_QUEUE": settings.task_queue,
        "TEMPORAL_ADDRESS": target,
        "SENDGRID_API_KEY": fake_sendgrid.api_key,
        "PARCOURS_SENDGRID_URL": fake_sendgrid.url,
        "PARCOURS_WORKER_METRICS_ADDRESS": ours,
        "PARCOURS_TEMPORAL_METRICS_ADDRESS": sdks,
    }
    # The worker makes Parcours's schedules when they are missing, for its own task queue:
    # on this shared server, take them away again so later tests make their own.
    made_here = []
    for schedule_id in (RECHECK_SCHEDULE_ID, WAITING_SCHEDULE_ID):
        schedule = dev_server_env.client.get_schedule_handle(schedule_id)
        try:
            await schedule.describe()
        except RPCError as exc:
            assert exc.status == RPCStatusCode.NOT_FOUND, exc
            made_here.append(schedule)
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "starter", "worker"], env=env, stdout=out, stderr=out
        )
    try:
        wait_until(lambda: "worker polling task queue" in log.read_text(), 60, "the worker")
        client = await Client.connect(target, plugins=[ParcoursPlugin(settings)])
        routed = await send_event(
            client, engine, settings, NewEvent(type="signed_up", profile_id="ada")
        )
        [workflow_id] = routed.journeys
        await client.get_workflow_handle(workflow_id).result()
        [delivery] = ledger.list_deliveries(engine, "ada")
        assert (delivery.status, delivery.provider) == ("sent", "sendgrid")

        text = await asyncio.to_thread(get, f"http://{ours}/metrics")
        assert scraped(text, "parcours_deliveries_total", channel="email", status="sent") == 1
        assert (
            scraped(
                text,
                "parcours_provider_request_seconds_count",
                provider="sendgrid",
                operation="send",
                outcome="ok",
            )
            == 1
        )
        sdk = await asyncio.to_thread(get, f"http://{sdks}/metrics")
        names = {f.name for f in text_string_to_metric_families(sdk)}
        assert any(n.startswith("temporal_activity_execution") for n in names), sorted(names)
        assert any(n.startswith("temporal_workflow_completed") for n in names), sorted(names)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        for schedule in made_here:
            await schedule.delete()
    assert worker.returncode == 0, log.read_text()[-2000:]

    records = [json.loads(line) for line in log.read_text().splitlines()]
    [sent] = [r for r in records if r.get("activity") == "send_message"]
    assert sent["workflow_id"] == workflow_id and sent["level"] == "INFO"
    assert sent["message"] == f"delivery {delivery.id} (email welcome-email): sent"
    assert any(f"worker metrics on http://{ours}/metrics" == r["message"] for r in records)
