"""Events taken in over HTTP against a raw bulk insert, and audience reads under that load.

    python bench/ingest.py               # or `make bench`, which runs every bench/*.py

One run makes a SQLite store under a temporary directory with the examples applied and
`--profiles` profiles (a tenth of them VIPs), starts two `parcours api` processes on it
(uvicorn, 127.0.0.1 only): one that takes the events in, and one that takes none and serves
only reads, as the API processes a decision engine calls do in the layout
docs/operations.md recommends. Each round has:

- the baseline: the same number of events inserted into the same `events` table with plain
  SQLAlchemy Core `INSERT`s, `--batch` rows per transaction: no validation, no duplicate
  check, no HTTP;
- the API, twice, once per layout, in an order that alternates from round to round:
  `POST /v1/events` to the ingesting process with `--batch` events per request (encoded
  beforehand), `--concurrency` requests in flight, while another process reads
  `GET /v1/profiles/{id}/segments` for random profiles, `--read-rate` requests a second,
  one at a time (their latencies give the p99), from the ingesting process itself
  ("shared") or from the read-serving one ("own");
- the same reads with no ingestion running, for `--quiet-seconds`, from the read-serving
  process, so the report shows what the load costs a read.

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
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
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
from bench.report import command, cpu_seconds, machine, spread, verdict, write_docs  # noqa: E402
from starter.ports import free_port  # noqa: E402

T = TypeVar("T")
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Ingestion"
RATE_GOAL, P99_GOAL_MS = 5_000, 10.0
KEY = "bench-key"
# Where the reads go while events are taken in: the process taking them, or one of its own.
LAYOUTS = ("own", "shared")


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


def read_segments(port: int, profiles: int, rate: float, stop: Event, out: Connection) -> None:
    """In its own process, so the load generator's work does not count in the latencies:
    `rate` requests a second, one at a time on one kept-alive connection (a late answer makes
    the next request go at once). A steady rate, not requests back to back, so that faster
    answers do not make more reads, which would take cores from ingestion: both layouts get
    the same read load."""
    connection = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Authorization": f"Bearer {KEY}"}
    rng = random.Random(1)
    latencies: list[float] = []
    due = time.perf_counter()
    while not stop.is_set():
        time.sleep(max(0.0, due - time.perf_counter()))
        started = time.perf_counter()
        due = max(due + 1 / rate, started)  # late: the next one goes when this one is answered
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


@dataclass(frozen=True)
class Reads:
    port: int  # of the API process read from
    profiles: int  # read at random among p0, p1, …
    rate: float  # reads a second


def reading_while(reads: Reads, work: Callable[[], T]) -> tuple[T, list[float]]:
    """`work()` while the reader process reads segments; its result and the read latencies."""
    stop = multiprocessing.Event()
    receive, send = multiprocessing.Pipe(duplex=False)
    reader = multiprocessing.Process(
        target=read_segments, args=(reads.port, reads.profiles, reads.rate, stop, send)
    )
    reader.start()
    try:
        result = work()
    finally:
        stop.set()
    latencies: list[float] = receive.recv()
    reader.join()
    return result, latencies


def over_http(
    port: int, batch: list[dict[str, object]], size: int, concurrency: int, reads: Reads
) -> tuple[float, list[float]]:
    """Events posted to the API on `port` while `reads` go to it or to another process on the
    same store."""
    bodies = [
        json.dumps({"events": batch[i : i + size]}).encode() for i in range(0, len(batch), size)
    ]
    url = f"http://127.0.0.1:{port}"
    return reading_while(reads, lambda: asyncio.run(post_events(url, bodies, concurrency, size)))


def quiet_p99(reads: Reads, seconds: float) -> tuple[float, int]:
    """The reads' p99 (ms) with nothing else sent to the API, and how many reads it is over."""
    _, latencies = reading_while(reads, lambda: time.sleep(seconds))
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


def start_api(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "starter", "api", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument(
        "--read-rate", type=float, default=250, help="segment reads a second, in each layout"
    )
    parser.add_argument(
        "--quiet-seconds", type=float, default=5.0, help="reads with no ingestion, per round"
    )
    args = parser.parse_args()

    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="parcours-bench-ingest-") as tmp:
        database = f"sqlite:///{tmp}/parcours.db"
        engine = engine_for(database)
        prepare(engine, args.profiles)
        ports = {layout: free_port() for layout in LAYOUTS}
        env = {
            **os.environ,
            "PARCOURS_DATA_DIR": tmp,
            "PARCOURS_DATABASE_URL": database,
            "PARCOURS_API_KEYS": KEY,
        }
        # "shared" takes the events in and serves reads too; "own" serves only reads.
        apis = {layout: start_api(port, env) for layout, port in ports.items()}
        ingesting = ports["shared"]
        reads = {
            layout: Reads(port, args.profiles, args.read_rate) for layout, port in ports.items()
        }
        raw_rates: list[float] = []
        rates: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
        p99s: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
        served: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}  # reads a second
        quiet_p99s: list[float] = []
        try:
            for layout, api in apis.items():
                wait_until_up(f"http://127.0.0.1:{ports[layout]}", api)
            for round_ in range(args.rounds):
                quiet, quiet_reads = quiet_p99(reads["own"], args.quiet_seconds)
                quiet_p99s.append(quiet)
                raw = raw_insert(
                    engine, events(args.events, args.profiles, f"raw{round_}"), args.batch
                )
                raw_rates.append(raw)
                print(
                    f"round {round_ + 1}: raw insert {raw:,.0f}/s; with no load p99 "
                    f"{quiet:.2f} ms over {quiet_reads} reads",
                    flush=True,
                )
                for layout in LAYOUTS if round_ % 2 == 0 else LAYOUTS[::-1]:
                    tag = f"api{round_}-{layout}-{uuid.uuid4().hex[:6]}"
                    cpu_before = {name: cpu_seconds(api.pid) or 0.0 for name, api in apis.items()}
                    started = time.perf_counter()
                    rate, latencies = over_http(
                        ingesting,
                        events(args.events, args.profiles, tag),
                        args.batch,
                        args.concurrency,
                        reads[layout],
                    )
                    elapsed = time.perf_counter() - started
                    # Cores each API process used meanwhile: the read-serving one's share is
                    # what the reads cost, the rest is what they leave ingestion.
                    cores = {
                        name: ((cpu_seconds(api.pid) or 0.0) - cpu_before[name]) / elapsed
                        for name, api in apis.items()
                    }
                    cuts = statistics.quantiles(latencies, n=100)
                    rates[layout].append(rate)
                    p99s[layout].append(cuts[98])
                    served[layout].append(len(latencies) / elapsed)
                    print(
                        f"  reads on {layout:6}: API {rate:,.0f}/s (ratio {rate / raw:.2f}), "
                        f"segments p50 {cuts[49]:.2f} p90 {cuts[89]:.2f} p99 {cuts[98]:.2f} ms "
                        f"over {len(latencies)} reads ({served[layout][-1]:,.0f}/s); cores "
                        f"used by the ingesting API {cores['shared']:.2f}, by the read-serving "
                        f"one {cores['own']:.2f}",
                        flush=True,
                    )
        finally:
            for api in apis.values():
                api.terminate()
                api.wait(timeout=30)
            close_engine(database)

    ratios = {
        layout: [r / b for r, b in zip(rates[layout], raw_rates, strict=True)] for layout in LAYOUTS
    }
    rate, p99 = (statistics.median(v["own"]) for v in (rates, p99s))
    segments = "`GET /v1/profiles/{id}/segments` p99"
    shared = "reads on the process taking the events in:"

    def row(figure: str, values: list[float], shown: str, unit: str = "", digits: int = 2) -> str:
        return (
            f"| {figure} | — | {statistics.median(values):{shown}}{unit} "
            f"| {spread(values, digits)}{unit} | — |"
        )

    table = [
        "| figure | goal | median | spread | verdict |",
        "|---|---|---|---|---|",
        f"| events accepted/s over HTTP (batches of {args.batch}) | ≥ {RATE_GOAL:,} | {rate:,.0f} "
        f"| {spread(rates['own'], 0)} | {verdict(rate >= RATE_GOAL)} |",
        row("raw bulk insert/s (baseline)", raw_rates, ",.0f", digits=0),
        row("API / raw insert", ratios["own"], ".2f"),
        f"| {segments} under that load, from an API process that takes no events "
        f"| < {P99_GOAL_MS:.0f} ms | {p99:.2f} ms | {spread(p99s['own'])} ms "
        f"| {verdict(p99 < P99_GOAL_MS)} |",
        row("reads served a second", served["own"], ",.0f", digits=0),
        row(f"{shared} events accepted/s", rates["shared"], ",.0f", digits=0),
        row(f"{shared} API / raw insert", ratios["shared"], ".2f"),
        row(f"{shared} {segments}", p99s["shared"], ".2f", " ms"),
        row(f"{shared} reads served a second", served["shared"], ",.0f", digits=0),
        row("the same p99 with no ingestion running", quiet_p99s, ".2f", " ms"),
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
        f"{args.read_rate:g} segment reads a second, one at a time; "
        f"{args.quiet_seconds:g} s of reads from the read-serving process with no ingestion "
        "before each round; "
        "two `parcours api` processes on the same store, one taking the events in and one "
        "serving only reads, the load generator in this one, the reader in another.\n\n"
        + "\n".join(table)
        + "\n\nEach round takes the events in twice: once with the reads sent to the "
        "read-serving process, once with them sent to the process taking the events in (the "
        "order alternates from round to round). A read answered late delays the next, so the "
        "slower layout is also offered fewer reads. "
        "The goal is for the layout [operations.md](operations.md#api-processes) recommends "
        "for decision engines: reads from API processes that take no events in, which then "
        "never wait for the interpreter lock behind ingestion's threads, only for a core. "
        "The API validates each event, stores the batch in one transaction "
        "(`INSERT … ON CONFLICT DO NOTHING`, profiles created on first sight), looks up which "
        "journeys and segments follow each type, and answers with a result per event. The "
        "load generator, the reader and both API processes share the machine's two cores; "
        f"the 1-minute load average was {load[0]:.2f} as the run began and "
        f"{os.getloadavg()[0]:.2f} as it ended.\n",
    )


if __name__ == "__main__":
    main()
