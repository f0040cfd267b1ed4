"""Taking events in over HTTP: each event on its own, limits, and pushing back when the store or
Temporal cannot keep up, without losing or doubling anything."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities import catalog
from activities.events import get_event, unrouted
from activities.profiles import set_profile
from parcours.loader import load_paths
from parcours.settings import Settings
from starter.api import MAX_BATCH, create_app, lazy_client
from tests.api import KEY, serve
from tests.conftest import EXAMPLES


def _event(n: int, **extra: object) -> dict[str, object]:
    return {"type": "page_viewed", "profile_id": f"p{n % 7}", "id": f"e-{n}", **extra}


async def test_a_batch_takes_each_good_event_and_names_the_field_of_each_bad_one(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    batch = [
        _event(1),
        {"type": "has space", "profile_id": "ada", "id": "bad-1"},
        {"type": "clicked", "id": "bad-2"},
        _event(1),
        _event(2, properties={"path": "/"}),
    ]
    answer = await api.post("/v1/events", json={"events": batch})
    assert answer.status_code == 202
    body = answer.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 1, 2)
    statuses = [(r["index"], r["id"], r["status"]) for r in body["results"]]
    assert statuses == [
        (0, "e-1", "accepted"),
        (1, "bad-1", "rejected"),
        (2, "bad-2", "rejected"),
        (3, "e-1", "duplicate"),
        (4, "e-2", "accepted"),
    ]
    assert body["results"][1]["errors"][0]["loc"] == ["events", 1, "type"]
    assert body["results"][2]["errors"][0]["loc"] == ["events", 2, "profile_id"]
    assert get_event(engine, "e-2") is not None and get_event(engine, "bad-1") is None

    nothing_good = await api.post("/v1/events", json={"events": [{"type": "x"}]})
    assert nothing_good.status_code == 422
    assert nothing_good.json()["detail"][0]["loc"] == ["events", 0, "profile_id"]


async def test_bodies_and_batches_over_the_limits_are_refused_with_413(
    settings: Settings, temporal: Client
) -> None:
    async def client() -> Client:
        return temporal

    async with serve(create_app(settings, client, keys=[KEY], max_body=20_000)) as http:
        many = {"events": [{"type": "a", "profile_id": "p"} for _ in range(MAX_BATCH + 1)]}
        too_many = await http.post("/v1/events", json=many)
        assert too_many.status_code == 413
        big = {"type": "a", "profile_id": "p", "properties": {"blob": "x" * 30_000}}
        assert (await http.post("/v1/events", json=big)).status_code == 413

        async def chunks() -> object:  # no Content-Length: counted as it streams in
            yield b'{"type": "a", "profile_id": "p", "properties": {"blob": "'
            for _ in range(30):
                yield b"x" * 1000
            yield b'"}}'

        streamed = await http.post(
            "/v1/events", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413
        assert "larger than 20000 bytes" in streamed.json()["detail"]


async def test_events_stored_while_temporal_is_down_are_routed_by_the_retry(
    settings: Settings, engine: Engine, temporal: Client, unused_tcp_port: int
) -> None:
    catalog.publish(engine, load_paths([EXAMPLES / "welcome"]))
    profile = f"ada-{uuid.uuid4().hex[:8]}"  # the test server keeps other tests' entries
    entry = f"journey:welcome:{profile}"
    set_profile(engine, profile, email="ada@example.com")
    event = {"type": "signed_up", "profile_id": profile, "id": "signup-1"}
    down = settings.model_copy(update={"temporal_address": f"127.0.0.1:{unused_tcp_port}"})
    async with serve(create_app(down, lazy_client(down), keys=[KEY])) as http:
        refused = await http.post("/v1/events", json=event)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert "Temporal is unavailable" in refused.json()["detail"]
    assert get_event(engine, "signup-1") is not None, "stored before the answer"
    assert unrouted(engine, ["signup-1"]) == {"signup-1"}
    with pytest.raises(RPCError) as no_entry:
        await temporal.get_workflow_handle(entry).describe()
    assert no_entry.value.status == RPCStatusCode.NOT_FOUND

    async def client() -> Client:
        return temporal

    async with serve(create_app(settings, client, keys=[KEY])) as http:
        retried = (await http.post("/v1/events", json=event)).json()
        assert (retried["accepted"], retried["journeys"]) == (1, [entry])
        again = (await http.post("/v1/events", json=event)).json()
        assert (again["accepted"], again["duplicates"], again["journeys"]) == (0, 1, [])
    assert unrouted(engine, ["signup-1"]) == set()


@contextlib.contextmanager
def events_locked(engine: Engine, settings: Settings) -> Iterator[None]:
    """Another writer holds the events table, as a long migration or a stuck transaction would."""
    if engine.dialect.name == "sqlite":
        path = settings.database_url.removeprefix("sqlite:///")
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    with engine.connect() as connection, connection.begin():
        connection.execute(text("LOCK TABLE events IN ACCESS EXCLUSIVE MODE"))
        yield


async def test_a_stuck_store_answers_503_and_a_full_queue_429_and_nothing_is_lost(
    settings: Settings, engine: Engine, temporal: Client
) -> None:
    async def client() -> Client:
        return temporal

    app = create_app(settings, client, keys=[KEY], max_inflight=150, ingest_timeout=1.0)
    first = {"events": [_event(n) for n in range(100)]}
    second = {"events": [_event(n) for n in range(100, 200)]}
    async with serve(app) as http:
        with events_locked(engine, settings):
            slow = asyncio.create_task(http.post("/v1/events", json=first))
            await asyncio.sleep(0.3)  # the first batch now waits for the lock
            full = await http.post("/v1/events", json=second)
            assert full.status_code == 429 and full.headers["Retry-After"] == "1"
            stuck = await slow
            assert stuck.status_code == 503 and stuck.headers["Retry-After"] == "5"
        # The lock is gone: both batches are taken when retried; none is stored twice.
        for _ in range(50):
            retried = await http.post("/v1/events", json=first)
            if retried.status_code == 202:
                break
            await asyncio.sleep(0.2)
        done = retried.json()
        assert done["accepted"] + done["duplicates"] == 100
        assert (await http.post("/v1/events", json=second)).json()["accepted"] == 100
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM events")).scalar() == 200
