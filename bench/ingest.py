"""Events taken in over HTTP against a raw bulk insert, and audience reads under that load.

    python bench/ingest.py               # or `make bench`, which runs every bench/*.py

One run makes a SQLite store under a temporary directory with the examples applied and
`--profiles` profiles (a tenth of them VIPs), starts `parcours api` on it as its own process
(uvicorn, 127.0.0.1 only), and alternates rounds of:

- the baseline: the same number of events inserted into the same `events` table with plain
  SQLAlchemy Core `INSERT`s, `--batch` rows per transaction: no validation, no duplicate
  check, no HTTP;
- the API: `POST /v1/events` with `--batch` events per request (encoded beforehand),
  `--concurrency` requests in flight, while another process reads
  `GET /v1/profiles/{id}/segments` for random profiles one request after another (its
  latencies give the p99);
- the same reads with no ingestion running, for `--quiet-seconds`, so the report shows what
  the load costs a read.

The events are page views, which no journey or segment of the examples follows: they are
stored, checked for duplicates and acknowledged, and need no Temporal call (an event that
starts a journey costs a workflow start, measured by bench/journeys.py).

It prints a table and rewrites the `## Ingestion` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import TypeVar

import httpx
from sqlalchemy import insert
from sqlalchemy.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from activities.apply import apply_paths  # noqa: E402
from activities.db import EventRow, close_engine, engine_for  # noqa: E402
from activities.profiles import profile_update, upsert_profiles  # noqa: E402
from activities.segments import rebuild  # noqa: E402
from bench.report import command, machine, spread, verdict, write_docs  # noqa: E402

T = TypeVar("T")
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Ingestion"
RATE_GOAL, P99_GOAL_MS = 5_000, 10.0
KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(engine: Engine, profiles: int) -> None:
    apply_paths(engine, [ROOT / "examples"])
    updates = [
        profile_update(
            f"p{n}", email=f"p{n}@example.com", attributes={"vip": n % 10 == 0, "newsletter": True}
        )
        for n in range(profiles)
    ]
    for start in range(0, len(updates), 1000):
        upsert_profiles(engine, updates[start : start + 1000])
    for segment in ("vip", "newsletter"):
        rebuild(engine, segment)


def events(count: int, profiles: int, tag: str) -> list[dict[str, object]]:
    rng = random.Random(tag)
    return [
        {
            "id": f"{tag}-{n}",
            "type": "page_viewed",
            "profile_id": f"p{rng.randrange(profiles)}",
            "properties": {"path": f"/products/{rng.randrange(500)}", "referrer": "search"},
        }
        for n in range(count)
    ]


def raw_insert(engine: Engine, batch: list[dict[str, object]], size: int) -> float:
    now = datetime.now(UTC)
    rows = [{**e, "timestamp": now, "received_at": now, "routed_at": now} for e in batch]
    started = time.perf_counter()
    for start in range(0, len(rows), size):
        with engine.begin() as connection:
            connection.execute(insert(EventRow.__table__), rows[start : start + size])  # type: ignore[arg-type]
    return len(rows) / (time.perf_counter() - started)


def read_segments(port: int, profiles: int, stop: Event, out: Connection) -> None:
    """In its own process, so the load generator's work does not count in the latencies:
    one request after another on one kept-alive connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Authorization": f"Bearer {KEY}"}
    rng = random.Random(1)
    latencies: list[float] = []
    while not stop.is_set():
        started = time.perf_counter()
        connection.request(
            "GET", f"/v1/profiles/p{rng.randrange(profiles)}/segments", headers=headers
        )
        answer = connection.getresponse()
        answer.read()
        latencies.append((time.perf_counter() - started) * 1000)
        if answer.status != 200:
            raise RuntimeError(f"segments answered {answer.status}")
    out.send(latencies)


async def post_events(url: str, bodies: list[bytes], concurrency: int, size: int) -> float:
    """Post the (already encoded) batches, `concurrency` at a time; returns events/s."""
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    queue = list(bodies)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=60
    ) as client:

        async def post() -> None:
            while queue:
                answer = await client.post("/v1/events", content=queue.pop())
                if answer.status_code != 202 or b'"accepted":%d' % size not in answer.content:
                    raise RuntimeError(f"{answer.status_code}: {answer.text[:300]}")

        started = time.perf_counter()
        await asyncio.gather(*(post() for _ in range(concurrency)))
        return len(bodies) * size / (time.perf_counter() - started)


def reading_while(port: int, profiles: int, work: Callable[[], T]) -> tuple[T, list[float]]:
    """`work()` while the reader process reads segments; its result and the read latencies."""
    stop = multiprocessing.Event()
    receive, send = multiprocessing.Pipe(duplex=False)
    reader = multiprocessing.Process(target=read_segments, args=(port, profiles, stop, send))
    reader.start()
    try:
        result = work()
    finally:
        stop.set()
    latencies: list[float] = receive.recv()
    reader.join()
    return result, latencies


def over_http(
    port: int, batch: list[dict[str, object]], size: int, concurrency: int, profiles: int
) -> tuple[float, list[float]]:
    bodies = [
        json.dumps({"events": batch[i : i + size]}).encode() for i in range(0, len(batch), size)
    ]
    url = f"http://127.0.0.1:{port}"
    return reading_while(
        port, profiles, lambda: asyncio.run(post_events(url, bodies, concurrency, size))
    )


def quiet_p99(port: int, profiles: int, seconds: float) -> tuple[float, int]:
    """The reads' p99 (ms) with nothing else sent to the API, and how many reads it is over."""
    _, latencies = reading_while(port, profiles, lambda: time.sleep(seconds))
    return statistics.quantiles(latencies, n=100)[98], len(latencies)


def wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if process.poll() is not None:
            raise RuntimeError(f"parcours api exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("parcours api did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument(
        "--quiet-seconds", type=float, default=5.0, help="reads with no ingestion, per round"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="parcours-bench-ingest-") as tmp:
        database = f"sqlite:///{tmp}/parcours.db"
        engine = engine_for(database)
        prepare(engine, args.profiles)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "PARCOURS_DATA_DIR": tmp,
            "PARCOURS_DATABASE_URL": database,
            "PARCOURS_API_KEYS": KEY,
        }
        api = subprocess.Popen(
            [sys.executable, "-m", "starter", "api", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until_up(url, api)
            raw_rates, api_rates, ratios, p99s, quiet_p99s = [], [], [], [], []
            for round_ in range(args.rounds):
                quiet, quiet_reads = quiet_p99(port, args.profiles, args.quiet_seconds)
                quiet_p99s.append(quiet)
                raw = raw_insert(
                    engine, events(args.events, args.profiles, f"raw{round_}"), args.batch
                )
                batch = events(args.events, args.profiles, f"api{round_}-{uuid.uuid4().hex[:6]}")
                rate, latencies = over_http(
                    port, batch, args.batch, args.concurrency, args.profiles
                )
                cuts = statistics.quantiles(latencies, n=100)
                p50, p90, p99 = cuts[49], cuts[89], cuts[98]
                raw_rates.append(raw)
                api_rates.append(rate)
                ratios.append(rate / raw)
                p99s.append(p99)
                print(
                    f"round {round_ + 1}: raw insert {raw:,.0f}/s, API {rate:,.0f}/s "
                    f"(ratio {rate / raw:.2f}), segments p50 {p50:.2f} p90 {p90:.2f} "
                    f"p99 {p99:.2f} ms "
                    f"over {len(latencies)} reads; with no load p99 {quiet:.2f} ms "
                    f"over {quiet_reads} reads",
                    flush=True,
                )
        finally:
            api.terminate()
            api.wait(timeout=30)
            close_engine(database)

    rate, ratio, p99, quiet = (statistics.median(v) for v in (api_rates, ratios, p99s, quiet_p99s))
    raw = statistics.median(raw_rates)
    table = [
        "| figure | goal | median | spread | verdict |",
        "|---|---|---|---|---|",
        f"| events accepted/s over HTTP (batches of {args.batch}) | ≥ {RATE_GOAL:,} | {rate:,.0f} "
        f"| {spread(api_rates, 0)} | {verdict(rate >= RATE_GOAL)} |",
        f"| raw bulk insert/s (baseline) | — | {raw:,.0f} | {spread(raw_rates, 0)} | — |",
        f"| API / raw insert | — | {ratio:.2f} | {spread(ratios)} | — |",
        f"| `GET /v1/profiles/{{id}}/segments` p99 under that load | < {P99_GOAL_MS:.0f} ms "
        f"| {p99:.2f} ms | {spread(p99s)} ms | {verdict(p99 < P99_GOAL_MS)} |",
        f"| the same p99 with no ingestion running | — | {quiet:.2f} ms "
        f"| {spread(quiet_p99s)} ms | — |",
    ]
    print("\n".join(table))
    write_docs(
        DOCS,
        SECTION,
        f"{SECTION}\n\nMeasured by `bench/ingest.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.\n\n"
        f"- Command: `{command()}` (`make bench` runs it too)\n"
        f"- Machine: {machine()}\n"
        f"- Store: SQLite (WAL), {args.profiles:,} profiles; {args.events:,} events per round "
        f"and side, {args.rounds} rounds, {args.concurrency} requests in flight; "
        f"{args.quiet_seconds:g} s of reads with no ingestion before each round; "
        "`parcours api` in its own process, the load generator in this one.\n\n"
        + "\n".join(table)
        + "\n\nThe API validates each event, stores the batch in one transaction "
        "(`INSERT … ON CONFLICT DO NOTHING`, profiles created on first sight), looks up which "
        "journeys and segments follow each type, and answers with a result per event. The "
        "load generator shares the machine's two cores with the server.\n",
    )


if __name__ == "__main__":
    main()
