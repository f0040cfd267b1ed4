"""Segment evaluation at scale: batch SQL against hand-written SQL, streaming re-evaluation
latency, bulk-load time and memory, on SQLite and on PostgreSQL.

    python bench/segments.py                      # or `make bench`, which runs every bench/*.py
    python bench/segments.py --profiles 200000    # a smaller hub
    python bench/segments.py --only streaming     # the load, then the streaming part alone

One run builds a deterministic synthetic hub (seeded RNG; `--profiles` profiles with plan, age,
country, signup and vip attributes, about `--events-per-profile` events each of types order,
visit and cart_updated spread over the 90 days before a fixed `now`), writes it once as
tab-separated files, then for each store (a temp SQLite file, and a throwaway PostgreSQL server
started here from Debian's binaries on 127.0.0.1 and stopped afterwards):

1. bulk-loads the files (SQLite: executemany in large transactions with journal and
   synchronous off; PostgreSQL: COPY), rebuilds the events index and runs ANALYZE
   (PostgreSQL: CHECKPOINT, then VACUUM ANALYZE);
2. times, for five representative rules, `members_query` (built, run, every id fetched)
   against a hand-written SQL query of the same rule, alternating the two, and checks both
   return the same ids;
3. publishes 50 segments, records the membership of the sampled profiles, then times
   `refresh_profile` for a sample of existing events, profiles it briefly with cProfile, and
   times one `rebuild` (the batch path that records entries and exits);
4. reads this process's peak RSS during each phase (on Linux each phase's peak is its own).

It prints a table and rewrites the `## Segments` section of docs/benchmarks.md, leaving any
other section of that file alone.
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import gc
import glob
import json
import os
import platform
import pstats
import random
import re
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy
from sqlalchemy import Connection, Index, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.schema import CreateIndex

from activities import catalog
from activities.db import Base, close_engine, engine_for, plan_for_values
from activities.rule_sql import members_query, profiles
from activities.segments import rebuild, refresh_profile
from parcours.definitions import Segment
from parcours.loader import LoadFailed, load_paths

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, only bench/ itself is on sys.path.
sys.path.insert(0, str(ROOT))
from bench.report import DASH, command, machine, spread, verdict, write_docs  # noqa: E402
from starter.ports import free_port  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Segments"
# Spreads are typeset "min, en dash, max"; spelt out because ruff flags the character itself.
TABLES = Base.metadata.tables

# Every rule and every event is relative to this instant, so the data, the members and the
# counts are the same whatever the day of the run.
NOW = datetime(2026, 1, 1, tzinfo=UTC)
EVENT_DAYS = 90
SIGNUP_DAYS = 3 * 365
# Goals.
BATCH_RATIO_GOAL = 1.2  # members_query time / hand-written SQL time, per rule
STREAM_P99_GOAL_MS = 1.0  # refresh_profile after one event
# Rows read from the data files per SQLite transaction (about 64 MiB of text).
READ_HINT = 64 << 20
# A fast query runs more often than `--repeat` (up to this many times as often) until each side
# has been timed for `--min-seconds`: a pause of a few tens of milliseconds from another process
# on this 2-core machine moves a 0.4 s run by a tenth but a 3 s run by a hundredth, and the
# 0.4 s PostgreSQL queries read ratios from 1.02 to 1.24 across runs of identical code.
RUNS_CAP = 4
# Calls off the clock before the streaming timings, and calls under the profiler after them.
STREAM_WARMUP = 50

PLANS = (("free", 0.7), ("pro", 0.2), ("team", 0.1))
COUNTRIES = (
    ("US", 0.25), ("FR", 0.12), ("DE", 0.12), ("GB", 0.1), ("ES", 0.08), ("IT", 0.08),
    ("NL", 0.06), ("BE", 0.04), ("CA", 0.07), ("BR", 0.08),
)  # fmt: skip
VIP_SHARE = 0.05
# Event types by share: orders carry total and items, carts their items, visits a path.
ORDER_SHARE, CART_SHARE = 0.15, 0.25


# --- the synthetic hub ----------------------------------------------------------------------


@dataclass(frozen=True)
class Hub:
    profiles: int
    events_per_profile: int
    seed: int


@dataclass(frozen=True)
class HubFiles:
    """The hub as tab-separated text, PostgreSQL COPY's text format (nothing needs escaping:
    no value holds a tab, a newline or a backslash)."""

    profiles: Path
    events: Path
    profile_count: int
    event_count: int
    seconds: float


PROFILE_COLUMNS = ("id", "email", "attributes", "consent", "device_tokens", "created_at", "updated_at")  # fmt: skip
# Stored as routed, as an import stores them: the index of events waiting to be routed stays
# as small as in production instead of holding every event of the hub.
EVENT_COLUMNS = ("id", "profile_id", "type", "timestamp", "properties", "received_at", "routed_at")


def _pick(choices: Sequence[tuple[str, float]], r: float) -> str:
    for value, share in choices:
        if r < share:
            return value
        r -= share
    return choices[-1][0]


def _stamp(moment: datetime) -> str:
    # The text SQLAlchemy stores for a DateTime on SQLite, which PostgreSQL also reads (the
    # loading session's time zone is UTC).
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def profile_id(number: int) -> str:
    return f"p{number:08d}"


def write_hub(hub: Hub, directory: Path) -> HubFiles:
    """Generate the hub into two files. Formatting is table-driven: about 2 µs per event."""
    began = time.perf_counter()
    rng = random.Random(hub.seed)
    rand = rng.random
    first_day = NOW - timedelta(days=EVENT_DAYS)
    days = [(first_day + timedelta(days=d)).strftime("%Y-%m-%d ") for d in range(EVENT_DAYS)]
    minutes = [f"{h:02d}:{m:02d}:" for h in range(24) for m in range(60)]
    seconds = [f"{s:02d}.000000" for s in range(60)]
    visits = [f'{{"path": "/p/{i}"}}' for i in range(1000)]
    carts = [f'{{"items": {i}}}' for i in range(1, 9)]
    window = EVENT_DAYS * 86400
    created = _stamp(NOW)
    seq = 0
    profiles_path, events_path = directory / "profiles.tsv", directory / "events.tsv"
    with profiles_path.open("w") as profile_file, events_path.open("w") as event_file:
        for number in range(1, hub.profiles + 1):
            pid = profile_id(number)
            signup = NOW - timedelta(seconds=int(rand() * SIGNUP_DAYS * 86400))
            attributes = {
                "plan": _pick(PLANS, rand()),
                "age": 18 + int(rand() * 63),
                "country": _pick(COUNTRIES, rand()),
                "signup": signup.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "vip": rand() < VIP_SHARE,
            }
            profile_file.write(
                f"{pid}\tu{number}@example.com\t{json.dumps(attributes)}\t{{}}\t[]\t{created}\t{created}\n"
            )
            lines = []
            for _ in range(int(rand() * (2 * hub.events_per_profile + 1))):
                seq += 1
                minute, second = divmod(int(rand() * window), 60)
                day, minute = divmod(minute, 1440)
                stamp = days[day] + minutes[minute] + seconds[second]
                r = rand()
                if r < ORDER_SHARE:
                    kind = "order"
                    total = int(500 + rand() * 29500) / 100  # 5.00 to 300.00
                    properties = f'{{"total": {total}, "items": {1 + int(rand() * 5)}}}'
                elif r < ORDER_SHARE + CART_SHARE:
                    kind, properties = "cart_updated", carts[int(rand() * 8)]
                else:
                    kind, properties = "visit", visits[int(rand() * 1000)]
                lines.append(
                    f"e{seq:010d}\t{pid}\t{kind}\t{stamp}\t{properties}\t{stamp}\t{stamp}\n"
                )
            event_file.writelines(lines)
    return HubFiles(profiles_path, events_path, hub.profiles, seq, time.perf_counter() - began)


# --- loading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    insert_s: float  # rows into the tables, in the database's bulk path
    index_s: float  # the events index rebuilt, then ANALYZE (and VACUUM on PostgreSQL)
    size_bytes: int

    @property
    def total_s(self) -> float:
        return self.insert_s + self.index_s


def _events_index() -> Index:
    # ix_events_profile_type_time, the index every event rule reads: dropped during the load
    # and built once afterwards, from the model's own definition.
    (index,) = (i for i in TABLES["events"].indexes if i.name == "ix_events_profile_type_time")
    return index


def _create_index(engine: Engine) -> str:
    return str(CreateIndex(_events_index()).compile(dialect=engine.dialect))


def _lines(path: Path) -> Iterator[list[str]]:
    with path.open() as file:
        while lines := file.readlines(READ_HINT):
            yield lines


def load_sqlite(url: str, path: Path, files: HubFiles) -> Load:
    create_index = _create_index(engine_for(url))  # the schema, by the migrations
    close_engine(url)  # journal_mode can only change with no other connection open
    index = _events_index()
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-262144"):
            connection.execute(f"PRAGMA {pragma}")
        connection.execute(f"DROP INDEX {index.name}")
        began = time.perf_counter()
        for table, columns, source in (
            ("profiles", PROFILE_COLUMNS, files.profiles),
            ("events", EVENT_COLUMNS, files.events),
        ):
            statement = (
                f"INSERT INTO {table} ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})"
            )
            for lines in _lines(source):
                connection.execute("BEGIN")
                connection.executemany(statement, (line[:-1].split("\t") for line in lines))
                connection.execute("COMMIT")
        inserted = time.perf_counter()
        connection.execute(create_index)
        connection.execute("ANALYZE")
        indexed = time.perf_counter()
        connection.execute("PRAGMA journal_mode=WAL")  # as engine_for's connections set it
    finally:
        connection.close()
    return Load(inserted - began, indexed - inserted, path.stat().st_size)


def load_postgres(url: str, conninfo: str, files: HubFiles) -> Load:
    create_index = _create_index(engine_for(url))  # the schema and parcours_epoch, by migrations
    index = _events_index()
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute("SET TIME ZONE 'UTC'")
        connection.execute(f"DROP INDEX {index.name}")
        began = time.perf_counter()
        with connection.transaction(), connection.cursor() as cursor:
            for table, columns, source in (
                ("profiles", PROFILE_COLUMNS, files.profiles),
                ("events", EVENT_COLUMNS, files.events),
            ):
                with (
                    cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
                    source.open("rb") as file,
                ):
                    while block := file.read(1 << 20):
                        copy.write(block)
        inserted = time.perf_counter()
        connection.execute(create_index)
        # VACUUM marks pages all-visible (so index-only scans skip the heap) only once the
        # load's commit record is flushed, which synchronous_commit=off defers: flush it now.
        connection.execute("CHECKPOINT")
        connection.execute("VACUUM ANALYZE")
        indexed = time.perf_counter()
        row = connection.execute("SELECT pg_database_size(current_database())").fetchone()
        size = int(row[0]) if row else 0
    return Load(inserted - began, indexed - inserted, size)


# --- a throwaway PostgreSQL server ----------------------------------------------------------

# Durability off (a benchmark's data is disposable; SQLite runs with synchronous=NORMAL in WAL,
# which does not sync on commit either), memory sized for a 10M-event hub, autovacuum off so it
# cannot start in the middle of a timing (the load ends with VACUUM ANALYZE). Everything else,
# JIT and parallel query included, is PostgreSQL's default. Both sides get the same treatment
# from them (EXPLAIN ANALYZE, 1M profiles): two parallel workers for every query on both sides;
# JIT (expressions only, 35-50 ms) for the queries that read events, and for the hand-written
# all/any/not query, whose estimate is higher than members_query's, never for the attribute
# rules. Setting 1 or 0 workers per gather narrowed no ratio's spread in alternating runs.
PG_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "16GB",
    "checkpoint_timeout": "1h",
    "shared_buffers": "2GB",
    "work_mem": "64MB",
    "maintenance_work_mem": "1GB",
    "autovacuum": "off",
}


def pg_bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@dataclass(frozen=True)
class Server:
    url: str  # SQLAlchemy URL of the benchmark's database
    conninfo: str  # the same for psycopg
    version: str


@contextmanager
def postgres_server() -> Iterator[Server]:
    """Start a cluster in a temp dir (as `postgres` when run as root), stop and delete it after."""
    binaries = pg_bindir()
    if binaries is None:
        raise RuntimeError("PostgreSQL is not installed: `make postgres` installs it")
    root = Path(tempfile.mkdtemp(prefix="parcours-bench-pg-"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]

    def run(*command: str) -> str:
        done = subprocess.run(
            [*as_user, *command], check=True, capture_output=True, text=True, cwd=root
        )
        return done.stdout

    port = free_port()
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": str(root),
        **PG_SETTINGS,
    }
    try:
        run(str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--no-sync")  # fmt: skip
        options = " ".join(f"-c {key}={value}" for key, value in settings.items())
        run(str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"),
            "-w", "start")  # fmt: skip
        try:
            server = f"host=127.0.0.1 port={port} user=postgres"
            with psycopg.connect(f"{server} dbname=postgres", autocommit=True) as admin:
                admin.execute("CREATE DATABASE parcours_bench")
            version = run(str(binaries / "postgres"), "--version").strip()
            yield Server(
                url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/parcours_bench",
                conninfo=f"{server} dbname=parcours_bench",
                version=version.removeprefix("postgres (PostgreSQL) "),
            )
        finally:
            subprocess.run(
                [*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                capture_output=True,
                cwd=root,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- rules and segments ---------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A rule timed in batch: a published segment, and the SQL one would write for it by hand
    (id order, like members_query)."""

    segment: str
    label: str
    sql: dict[str, str]  # dialect name -> SELECT of the matching profile ids


def _since(days: int, dialect: str) -> str:
    moment = NOW - timedelta(days=days)
    return _stamp(moment) if dialect == "sqlite" else moment.isoformat()


def _cases() -> list[Case]:
    s30 = {dialect: _since(30, dialect) for dialect in ("sqlite", "postgresql")}
    return [
        Case(
            "plan-pro",
            "attribute eq",
            {
                "sqlite": "SELECT id FROM profiles WHERE json_extract(attributes, '$.plan') = 'pro' ORDER BY id",
                "postgresql": "SELECT id FROM profiles WHERE attributes->>'plan' = 'pro' ORDER BY id",
            },
        ),
        Case(
            "age-25-40-fr-de-es",
            "attribute between + in",
            {
                "sqlite": "SELECT id FROM profiles WHERE json_extract(attributes, '$.age') BETWEEN 25 AND 40 "
                "AND json_extract(attributes, '$.country') IN ('FR', 'DE', 'ES') ORDER BY id",
                "postgresql": "SELECT id FROM profiles WHERE (attributes->>'age')::int BETWEEN 25 AND 40 "
                "AND attributes->>'country' IN ('FR', 'DE', 'ES') ORDER BY id",
            },
        ),
        Case(
            "frequent-visitors",
            "event count within 30d",
            {
                dialect: "SELECT profile_id FROM events WHERE type = 'visit' "
                f"AND timestamp >= '{s30[dialect]}' GROUP BY profile_id HAVING count(*) >= 3 "
                "ORDER BY profile_id"
                for dialect in ("sqlite", "postgresql")
            },
        ),
        Case(
            "repeat-big-orders",
            "event where property + count",
            {
                "sqlite": "SELECT profile_id FROM events WHERE type = 'order' "
                "AND json_extract(properties, '$.total') > 100 "
                "GROUP BY profile_id HAVING count(*) >= 2 ORDER BY profile_id",
                "postgresql": "SELECT profile_id FROM events WHERE type = 'order' "
                "AND (properties->>'total')::float8 > 100 "
                "GROUP BY profile_id HAVING count(*) >= 2 ORDER BY profile_id",
            },
        ),
        Case(
            "valued-recent-buyers",
            "all/any/not + segment ref",
            {
                "sqlite": "SELECT id FROM profiles p "
                "WHERE (json_extract(attributes, '$.vip') = 1 "
                "OR json_extract(attributes, '$.plan') IN ('pro', 'team')) "
                "AND json_extract(attributes, '$.country') IS NOT 'US' "
                "AND EXISTS (SELECT 1 FROM events e WHERE e.profile_id = p.id "
                f"AND e.type = 'order' AND e.timestamp >= '{s30['sqlite']}') ORDER BY id",
                "postgresql": "SELECT id FROM profiles p "
                "WHERE ((attributes->>'vip')::boolean "
                "OR attributes->>'plan' IN ('pro', 'team')) "
                "AND attributes->>'country' IS DISTINCT FROM 'US' "
                "AND EXISTS (SELECT 1 FROM events e WHERE e.profile_id = p.id "
                f"AND e.type = 'order' AND e.timestamp >= '{s30['postgresql']}') ORDER BY id",
            },
        ),
    ]


CASES = _cases()


def _attr(name: str, op: str, value: Any = None) -> dict[str, Any]:
    return {"attribute": name, "op": op, "value": value}


def _event(kind: str, within: str | None = None, **extra: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {"event": kind, **extra}
    if within is not None:
        rule["within"] = within
    return rule


def _prop(name: str, op: str, value: Any) -> dict[str, Any]:
    return {"property": name, "op": op, "value": value}


EU = ["FR", "DE", "ES", "IT", "NL", "BE"]
# The five cases first, then variations: 50 segments, 14 on attributes only, the others
# reading events (directly, through `where`, or through segment references).
SEGMENTS: dict[str, dict[str, Any]] = {
    "plan-pro": _attr("plan", "eq", "pro"),
    "age-25-40-fr-de-es": {
        "all": [_attr("age", "between", [25, 40]), _attr("country", "in", ["FR", "DE", "ES"])]
    },
    "frequent-visitors": _event("visit", "30d", count={"gte": 3}),
    "repeat-big-orders": _event("order", where=_prop("total", "gt", 100), count={"gte": 2}),
    "valued-recent-buyers": {
        "all": [
            {"segment": "recent-buyers"},
            {"any": [_attr("vip", "eq", True), _attr("plan", "in", ["pro", "team"])]},
            {"not": _attr("country", "eq", "US")},
        ]
    },
    "plan-free": _attr("plan", "eq", "free"),
    "plan-team": _attr("plan", "eq", "team"),
    "age-18-24": _attr("age", "between", [18, 24]),
    "age-25-34": _attr("age", "between", [25, 34]),
    "age-35-49": _attr("age", "between", [35, 49]),
    "age-50-64": _attr("age", "between", [50, 64]),
    "age-65-plus": _attr("age", "gte", 65),
    "country-us": _attr("country", "eq", "US"),
    "country-eu": _attr("country", "in", EU),
    "vip": _attr("vip", "eq", True),
    # 52w, not 365d: `within_last` keeps its value as a timedelta, which pydantic dumps in
    # ISO 8601 with years from 365 days on ("P1Y"), a form parse_duration refuses on reading.
    "signed-up-last-year": _attr("signup", "within_last", "52w"),
    "new-signups": _attr("signup", "within_last", "30d"),
    "buyers-7d": _event("order", "7d"),
    "buyers-14d": _event("order", "14d"),
    "recent-buyers": _event("order", "30d"),
    "buyers-60d": _event("order", "60d"),
    "buyers-90d": _event("order", "90d"),
    "visitors-7d": _event("visit", "7d"),
    "visitors-30d-5": _event("visit", "30d", count={"gte": 5}),
    "visitors-90d-10": _event("visit", "90d", count={"gte": 10}),
    "carts-1d": _event("cart_updated", "1d"),
    "carts-3d": _event("cart_updated", "3d"),
    "carts-7d": _event("cart_updated", "7d"),
    "abandoned-carts": {"all": [_event("cart_updated", "3d"), {"not": _event("order", "3d")}]},
    "orders-over-50": _event("order", where=_prop("total", "gt", 50)),
    "orders-over-200": _event("order", where=_prop("total", "gt", 200)),
    "big-baskets": _event("order", "30d", where=_prop("items", "gte", 4)),
    "loyal-buyers": _event("order", count={"gte": 3}),
    "repeat-buyers-90d": _event("order", "90d", count={"gte": 2}),
    "one-time-buyers": _event("order", count={"eq": 1}),
    "no-orders": _event("order", count={"eq": 0}),
    "pro-buyers": {"all": [{"segment": "plan-pro"}, {"segment": "recent-buyers"}]},
    "vip-or-loyal": {"any": [{"segment": "vip"}, {"segment": "loyal-buyers"}]},
    "young-visitors": {"all": [{"segment": "age-18-24"}, {"segment": "visitors-30d-5"}]},
    "dormant": {"not": {"any": [_event("order", "90d"), _event("visit", "30d")]}},
    "eu-buyers": {"all": [{"segment": "country-eu"}, {"segment": "buyers-60d"}]},
    "free-with-carts": {
        "all": [_attr("plan", "eq", "free"), _event("cart_updated", "7d", count={"gte": 2})]
    },
    "upsell": {
        "all": [
            _attr("plan", "eq", "free"),
            _event("order", "30d", where=_prop("total", "gt", 150)),
        ]
    },
    "vip-recent-buyers": {"all": [_attr("vip", "eq", True), _event("order", "7d")]},
    "win-back": {"all": [{"segment": "loyal-buyers"}, {"not": {"segment": "recent-buyers"}}]},
    "vip-abandoned-carts": {"all": [{"segment": "abandoned-carts"}, {"segment": "vip"}]},
    "engaged": {
        "any": [_event("visit", "30d", count={"gte": 8}), _event("order", "30d", count={"gte": 2})]
    },
    "big-eu-orders": {
        "all": [
            {"segment": "country-eu"},
            _event("order", where={"all": [_prop("total", "gt", 100), _prop("items", "gte", 2)]}),
        ]
    },
    "new-and-active": {"all": [{"segment": "new-signups"}, _event("visit", "7d")]},
    "us-visitors": {"all": [{"segment": "country-us"}, _event("visit", "7d")]},
}
# Timed once through `rebuild`, from no memberships but the sampled profiles'.
REBUILD_PROBE = "vip-recent-buyers"


def publish_segments(engine: Engine, directory: Path) -> dict[str, Segment]:
    """Publish SEGMENTS once the loader has checked them (what `parcours apply` does), without
    the membership rebuild `apply` follows it with: the benchmark records the memberships it
    needs itself."""
    documents = [
        json.dumps({"kind": "segment", "id": segment_id, "rule": rule})
        for segment_id, rule in SEGMENTS.items()
    ]
    path = directory / "segments.yaml"
    path.write_text("\n---\n".join(documents) + "\n")
    loaded = load_paths([path])
    if loaded.errors:
        raise LoadFailed(loaded.errors)
    catalog.publish(engine, loaded)
    return catalog.known_segments(engine)


# --- batch ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    case: Case
    ours_s: list[float]  # members_query, built, run and fetched
    hand_s: list[float]
    members: int
    hand_members: int
    agree: bool  # the same ids, in the same order

    @property
    def ratio(self) -> float:
        return statistics.median(self.ours_s) / statistics.median(self.hand_s)

    def ratios(self) -> list[float]:
        return [o / h for o, h in zip(self.ours_s, self.hand_s, strict=True)]


def time_batch(
    engine: Engine,
    case: Case,
    segments: dict[str, Segment],
    repeat: int,
    min_seconds: float = 0.0,
) -> Batch:
    """At least `repeat` timed runs of each query, and more (up to RUNS_CAP times `repeat`)
    until each side has been timed for `min_seconds`."""
    dialect = engine.dialect.name
    rule = segments[case.segment].rule
    hand = text(case.sql[dialect])

    def ours_ids(connection: Connection) -> list[str]:
        plan_for_values(connection)  # as every batch evaluation does, on the clock
        return list(connection.execute(members_query(dialect, rule, NOW, segments)).scalars())

    def hand_ids(connection: Connection) -> list[str]:
        return list(connection.execute(hand).scalars())

    timings: dict[str, list[float]] = {"ours": [], "hand": []}
    runs: list[tuple[str, Callable[[Connection], list[str]]]] = [
        ("ours", ours_ids),
        ("hand", hand_ids),
    ]
    with engine.connect() as connection:
        # Off the clock: warms the caches, and gives the answers to compare.
        ours, theirs = ours_ids(connection), hand_ids(connection)
        number = 0
        while number < repeat or (
            number < RUNS_CAP * repeat and min(map(sum, timings.values())) < min_seconds
        ):
            # Alternating which goes first keeps warm-cache luck from favouring one side.
            for name, run in runs if number % 2 == 0 else runs[::-1]:
                began = time.perf_counter()
                run(connection)
                timings[name].append(time.perf_counter() - began)
            number += 1
    return Batch(case, timings["ours"], timings["hand"], len(ours), len(theirs), ours == theirs)


# --- streaming ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    latencies_ms: list[float]
    transitions: int  # 0 when the in-memory evaluator agrees with the SQL one on the sample
    profiled: int  # refreshes run under cProfile
    breakdown: list[tuple[str, float]]  # (part, ms per refresh under the profiler)
    statements: float  # SQL statements per refresh

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass(frozen=True)
class Rebuilt:
    segment: str
    entered: int
    seconds: float


def sample_events(engine: Engine, total: int, size: int, seed: int) -> list[tuple[str, str]]:
    """(profile id, event type) of `size` events drawn at random from the loaded ones."""
    seqs = random.Random(seed + 1).sample(range(1, total + 1), min(size, total))
    events = TABLES["events"]
    with engine.connect() as connection:
        rows = connection.execute(
            select(events.c.seq, events.c.profile_id, events.c.type).where(events.c.seq.in_(seqs))
        )
        found = {seq: (pid, kind) for seq, pid, kind in rows}
    return [found[seq] for seq in seqs]


def record_memberships(
    engine: Engine, segments: dict[str, Segment], profile_ids: Sequence[str]
) -> int:
    """Memberships of these profiles in every segment, as `parcours apply` would have left them
    (computed by members_query and written in bulk: `rebuild` would record them one by one)."""
    dialect = engine.dialect.name
    rows = []
    with engine.connect() as connection:
        for segment_id, segment in segments.items():
            query = members_query(dialect, segment.rule, NOW, segments).where(
                profiles.c.id.in_(sorted(set(profile_ids)))
            )
            rows += [
                {"segment_id": segment_id, "profile_id": pid, "active": True, "entered_at": NOW}
                for pid in connection.execute(query).scalars()
            ]
    with engine.begin() as connection:
        connection.execute(insert(TABLES["memberships"]), rows)
    return len(rows)


# Where a refresh's time goes: (label, file suffix, function) read from cProfile's cumulative
# times; what is left is refresh_profile's own loop and the dependency bookkeeping.
PARTS = (
    (
        "the catalog: read and parse the segments (a new revision only)",
        "activities/segments.py",
        "read",
    ),
    (
        "the read: one statement executed by the driver, its rows fetched (JSON decoded)",
        "activities/segments.py",
        "run",
    ),
    ("in-memory evaluation: the compiled rules", "parcours/evaluate.py", "in_segment"),
    ("_record: write memberships (transitions only)", "activities/segments.py", "_record"),
)


def time_streaming(
    engine: Engine, sample: Sequence[tuple[str, str]], profile_sample: int
) -> Stream:
    for pid, kind in sample[:STREAM_WARMUP]:
        refresh_profile(engine, pid, event_type=kind, now=NOW)
    latencies: list[float] = []
    transitions = 0
    for pid, kind in sample:
        began = time.perf_counter()
        moved = refresh_profile(engine, pid, event_type=kind, now=NOW)
        latencies.append(1000 * (time.perf_counter() - began))
        transitions += len(moved)

    # A shorter pass under the profiler, counting SQL statements as it goes.
    profiled = list(sample[:profile_sample])
    profiler = cProfile.Profile()
    with counting_statements(engine) as statements:
        for pid, kind in profiled[:1]:
            refresh_profile(engine, pid, event_type=kind, now=NOW)  # a connection, off count
        statements[0] = 0
        profiler.enable()
        for pid, kind in profiled:
            refresh_profile(engine, pid, event_type=kind, now=NOW)
        profiler.disable()
    return Stream(
        latencies,
        transitions,
        len(profiled),
        _breakdown(pstats.Stats(profiler), len(profiled)),
        statements[0] / len(profiled),
    )


@contextmanager
def counting_statements(engine: Engine) -> Iterator[list[int]]:
    """Count every statement the driver sends, pings included. Counted by the drivers
    themselves (sqlite3's trace callback, a psycopg cursor class): `refresh_profile` hands its
    read to the driver, under SQLAlchemy's own events. The pool's connections are made anew,
    with the counter, and again without it at the end."""
    counted = [0]

    def count(*_: Any) -> None:
        counted[0] += 1

    def install(dbapi_connection: Any, _record: Any) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.set_trace_callback(count)
            return

        class Counting(dbapi_connection.cursor_factory):  # type: ignore[misc]
            def execute(self, *args: Any, **kwargs: Any) -> Any:
                count()
                return super().execute(*args, **kwargs)

        dbapi_connection.cursor_factory = Counting

    engine.dispose()
    sqlalchemy.event.listen(engine, "connect", install)
    try:
        yield counted
    finally:
        sqlalchemy.event.remove(engine, "connect", install)
        engine.dispose()


def _breakdown(stats: pstats.Stats, calls: int) -> list[tuple[str, float]]:
    cumulative: dict[tuple[str, str], float] = {}
    for (filename, _line, function), row in stats.stats.items():  # type: ignore[attr-defined]
        key = (filename.replace(os.sep, "/"), function)
        cumulative[key] = cumulative.get(key, 0.0) + row[3]

    def total(suffix: str, function: str) -> float:
        return sum(t for (f, fn), t in cumulative.items() if fn == function and f.endswith(suffix))

    whole = total("activities/segments.py", "refresh_profile")
    parts = [(label, total(suffix, function)) for label, suffix, function in PARTS]
    parts.append(("the rest of refresh_profile", whole - sum(t for _, t in parts)))
    parts.append(("refresh_profile, all of it", whole))
    return [(label, 1000 * seconds / calls) for label, seconds in parts]


def time_rebuild(engine: Engine) -> Rebuilt:
    began = time.perf_counter()
    moved = rebuild(engine, REBUILD_PROBE, now=NOW)
    return Rebuilt(REBUILD_PROBE, len(moved), time.perf_counter() - began)


# --- the run --------------------------------------------------------------------------------


def _status_mib(field: str) -> float | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{field}:\s*(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) / 1024 if found else None


@dataclass(frozen=True)
class Phase:
    start_mib: float  # resident memory as the phase began
    peak_mib: float  # the highest it reached during the phase


@contextmanager
def phase(into: dict[str, Phase], name: str) -> Iterator[None]:
    """Record this process's peak resident memory during the block.

    What earlier phases freed is handed back to the system first (the collector, then glibc's
    malloc_trim), and Linux's peak is reset ("5" to clear_refs): each phase's peak is its own.
    Elsewhere the peak is the process's since it started.
    """
    gc.collect()
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    start = _status_mib("VmRSS") or maxrss
    try:
        yield
    finally:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        into[name] = Phase(start, _status_mib("VmHWM") or maxrss)


@dataclass
class StoreResult:
    label: str
    version: str
    load: Load
    batches: list[Batch] = field(default_factory=list)
    stream: Stream | None = None
    rebuilt: Rebuilt | None = None
    memberships: int = 0
    memory: dict[str, Phase] = field(default_factory=dict)  # load, batch, streaming
    settings: str = ""


@dataclass(frozen=True)
class Options:
    hub: Hub
    repeat: int
    min_seconds: float
    sample: int
    profile_sample: int
    stores: tuple[str, ...]
    only: str | None = None  # "batch" or "streaming": that part alone


def measure(
    label: str,
    url: str,
    load: Callable[[], Load],
    version: str,
    files: HubFiles,
    options: Options,
    tmp: Path,
) -> StoreResult:
    print(
        f"{label}: loading {files.profile_count:,} rows of profiles and {files.event_count:,} of events",
        flush=True,
    )
    memory: dict[str, Phase] = {}
    with phase(memory, "load"):
        result = StoreResult(label, version, load(), memory=memory)
    print(f"{label}: loaded in {result.load.total_s:.0f} s", flush=True)
    engine = engine_for(url)
    try:
        with phase(memory, "batch"):
            segments = publish_segments(engine, tmp)
            for case in CASES if options.only != "streaming" else ():
                batch = time_batch(engine, case, segments, options.repeat, options.min_seconds)
                result.batches.append(batch)
                print(
                    f"{label}: {case.label:<30} members_query "
                    f"{statistics.median(batch.ours_s):7.3f} s  "
                    f"hand {statistics.median(batch.hand_s):7.3f} s  ratio {batch.ratio:.2f}  {len(batch.ours_s)} runs  "
                    f"{batch.members:,} members{'' if batch.agree else '  IDS DIFFER'}",
                    flush=True,
                )
        if options.only == "batch":
            return result
        with phase(memory, "streaming"):
            sample = sample_events(engine, files.event_count, options.sample, options.hub.seed)
            result.memberships = record_memberships(engine, segments, [pid for pid, _ in sample])
            result.stream = time_streaming(engine, sample, options.profile_sample)
            print(
                f"{label}: refresh_profile p50 {result.stream.percentile(50):.2f} ms"
                f"  p99 {result.stream.percentile(99):.2f} ms",
                flush=True,
            )
            result.rebuilt = time_rebuild(engine)
    finally:
        close_engine(url)
    return result


@dataclass
class Results:
    options: Options
    files: HubFiles
    stores: list[StoreResult]
    generating: Phase
    seconds: float = 0.0
    load_average: float = 0.0

    @property
    def peak_mib(self) -> float:
        """The whole run's peak: the highest of its phases'."""
        peaks = [p.peak_mib for s in self.stores for p in s.memory.values()]
        return max([self.generating.peak_mib, *peaks])


def run(options: Options) -> Results:
    began, load_average = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="parcours-bench-segments-") as name:
        tmp = Path(name)
        print(f"generating {options.hub.profiles:,} profiles", flush=True)
        generating: dict[str, Phase] = {}
        with phase(generating, "generate"):
            files = write_hub(options.hub, tmp)
        print(f"generated {files.event_count:,} events in {files.seconds:.0f} s", flush=True)
        stores: list[StoreResult] = []
        if "sqlite" in options.stores:
            path = tmp / "hub.db"
            url = f"sqlite:///{path}"
            load = partial(load_sqlite, url, path, files)
            stores.append(measure("SQLite", url, load, sqlite3.sqlite_version, files, options, tmp))
            for leftover in tmp.glob("hub.db*"):
                leftover.unlink()  # the disk space, before PostgreSQL's copy
        if "postgresql" in options.stores:
            with postgres_server() as server:
                load = partial(load_postgres, server.url, server.conninfo, files)
                result = measure(
                    "PostgreSQL", server.url, load, server.version, files, options, tmp
                )
                result.settings = ", ".join(f"{k}={v}" for k, v in PG_SETTINGS.items())
                stores.append(result)
    elapsed = time.perf_counter() - began
    return Results(options, files, stores, generating["generate"], elapsed, load_average)


# --- reporting ------------------------------------------------------------------------------


def versions(results: Results) -> str:
    stores = ", ".join(f"{s.label} {s.version}" for s in results.stores)
    return (
        f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
        f"psycopg {psycopg.__version__}, {stores}"
    )


def seconds(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.3f} s ({spread(values, 3)})"


def summary_table(results: Results) -> str:
    lines = [
        f"| figure | store | goal | median | spread (min{DASH}max) | |",
        "|---|---|---|---|---|---|",
    ]
    for store in results.stores:
        for batch in store.batches:
            lines.append(
                f"| batch `members_query` / hand-written SQL, {batch.case.label} | {store.label} "
                f"| ≤ {BATCH_RATIO_GOAL} | {batch.ratio:.2f} | {spread(batch.ratios())} "
                f"| {verdict(batch.ratio <= BATCH_RATIO_GOAL and batch.agree)} |"
            )
    for store in results.stores:
        if store.stream is None:
            continue
        p99 = store.stream.percentile(99)
        lines.append(
            f"| streaming `refresh_profile` p99 (p50) | {store.label} "
            f"| < {STREAM_P99_GOAL_MS:g} ms | {p99:.2f} ms ({store.stream.percentile(50):.2f} ms) "
            f"| {spread(store.stream.latencies_ms)} ms | {verdict(p99 < STREAM_P99_GOAL_MS)} |"
        )
    for store in results.stores:
        lines.append(
            f"| bulk load (insert + index + analyze) | {store.label} | — "
            f"| {store.load.total_s:.0f} s | — | |"
        )
    for store in results.stores:
        measured = [store.memory[p] for p in ("batch", "streaming") if p in store.memory]
        if measured:
            lines.append(
                f"| peak RSS of the process, batch and streaming phases | {store.label} | — "
                f"| {max(p.peak_mib for p in measured):.0f} MiB | — | |"
            )
    lines.append(
        f"| peak RSS of the process, whole run (bulk load included) | both | — "
        f"| {results.peak_mib:.0f} MiB | — | |"
    )
    return "\n".join(lines)


def batch_table(results: Results) -> str:
    lines = [
        "| rule | store | members | runs | `members_query` median (spread) "
        "| hand-written median (spread) | ratio (spread) | same ids |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for store in results.stores:
        for b in store.batches:
            same = "yes" if b.agree else f"**no** (hand-written: {b.hand_members:,})"
            lines.append(
                f"| {b.case.label} (`{b.case.segment}`) | {store.label} | {b.members:,} "
                f"| {len(b.ours_s)} | {seconds(b.ours_s)} | {seconds(b.hand_s)} "
                f"| {b.ratio:.2f} ({spread(b.ratios())}) | {same} |"
            )
    return "\n".join(lines)


def stream_table(results: Results) -> str:
    lines = [
        "| store | refreshes | p50 ms | p90 ms | p99 ms | max ms | SQL statements per refresh "
        "| transitions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for store in results.stores:
        s = store.stream
        if s is None:
            continue
        lines.append(
            f"| {store.label} | {len(s.latencies_ms):,} | {s.percentile(50):.2f} "
            f"| {s.percentile(90):.2f} | {s.percentile(99):.2f} | {max(s.latencies_ms):.2f} "
            f"| {s.statements:.1f} | {s.transitions} |"
        )
    return "\n".join(lines)


def breakdown_table(results: Results) -> str:
    streams = [(s.label, s.stream) for s in results.stores if s.stream is not None]
    if not streams:
        return ""
    labels = [label for label, _ in streams[0][1].breakdown]
    lines = [
        "| ms per refresh, under cProfile | " + " | ".join(label for label, _ in streams) + " |",
        "|---|" + "---|" * len(streams),
    ]
    for i, part in enumerate(labels):
        cells = []
        for _, stream in streams:
            ms = stream.breakdown[i][1]
            whole = stream.breakdown[-1][1]
            cells.append(f"{ms:.2f} ({100 * ms / whole:.0f} %)" if whole else f"{ms:.2f}")
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_table(results: Results) -> str:
    files = results.files
    rows = files.profile_count + files.event_count
    lines = [
        "| store | insert s | index + analyze s | total s | rows/s (insert) | size on disk |",
        "|---|---|---|---|---|---|",
    ]
    for store in results.stores:
        load = store.load
        lines.append(
            f"| {store.label} | {load.insert_s:.1f} | {load.index_s:.1f} | {load.total_s:.1f} "
            f"| {rows / load.insert_s:,.0f} | {load.size_bytes / 2**30:.2f} GiB |"
        )
    return "\n".join(lines)


def memory_table(results: Results) -> str:
    phases = ("load", "batch", "streaming")
    titles = ("bulk load", "batch (5 rules)", "streaming and rebuild")
    lines = [
        "| MiB: peak (at the start) during | " + " | ".join(titles) + " |",
        "|---|" + "---|" * len(phases),
    ]
    for store in results.stores:
        cells = []
        for name in phases:
            p = store.memory.get(name)
            cells.append(f"{p.peak_mib:.0f} ({p.start_mib:.0f})" if p else "—")
        lines.append(f"| {store.label} | " + " | ".join(cells) + " |")
    g = results.generating
    lines.append(f"| generating the files | {g.peak_mib:.0f} ({g.start_mib:.0f}) | | |")
    return "\n".join(lines)


def rebuild_line(results: Results) -> str:
    parts = []
    for store in results.stores:
        r = store.rebuilt
        if r is None:
            continue
        per = f", {1e6 * r.seconds / r.entered:.0f} µs per entry" if r.entered else ""
        parts.append(f"{store.label} {r.seconds:.2f} s for {r.entered:,} entries{per}")
    return "; ".join(parts)


def attribute_only() -> int:
    """How many of SEGMENTS read attributes only."""
    return sum(
        1 for rule in SEGMENTS.values() if not re.search(r'"(event|segment)"', json.dumps(rule))
    )


def rules_block() -> str:
    lines = []
    for case in CASES:
        lines.append(f"# {case.label}: {json.dumps(SEGMENTS[case.segment])}")
        for dialect, sql in case.sql.items():
            lines.append(f"{dialect}: {sql}")
        lines.append("")
    return "```\n" + "\n".join(lines).rstrip() + "\n```"


def section(results: Results) -> str:
    o = results.options
    f = results.files
    pg = next((s.settings for s in results.stores if s.settings), "")
    pg_line = f" PostgreSQL runs with {pg}; everything else is its default." if pg else ""
    only = (
        f" Only the {o.only} part was run after the load (`--only {o.only}`): the other part's"
        " figures are absent from this section."
        if o.only
        else ""
    )
    return f"""{SECTION}

Measured by `bench/segments.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC (the run took {results.seconds:.0f} s).{only}

- Command: `{command()}` (`make bench` runs it with the defaults: 1,000,000 profiles, 10 events each on average)
- Machine: {machine()}; 1-minute load average {results.load_average:.2f} as the run began
- Software: {versions(results)}
- Data: {f.profile_count:,} profiles and {f.event_count:,} events (seed {o.hub.seed}; generated in {f.seconds:.0f} s), events spread over the {EVENT_DAYS} days before a fixed `now` ({NOW:%Y-%m-%d}); SQLite in a temp file, PostgreSQL a throwaway server on 127.0.0.1.{pg_line}

{summary_table(results)}

### Batch: `members_query` against hand-written SQL

Each rule is a published segment. `members_query` is built, run and every id fetched through one SQLAlchemy connection, after `plan_for_values` as every batch evaluation calls it (on PostgreSQL, `SET LOCAL plan_cache_mode = force_custom_plan`: a statement run again is still planned for its values), against the hand-written query below run through the same connection and transaction; at least {o.repeat} timed runs of each, and more for a fast query (up to {RUNS_CAP * o.repeat}) until each side has been timed for {o.min_seconds:g} s (the runs column), alternating which goes first, after one run of each off the clock whose ids are compared. The ratio is median over median; its spread pairs the runs.

{batch_table(results)}

{rules_block()}

### Streaming: `refresh_profile` after one event

{len(SEGMENTS)} segments are published (the five above and variations: {attribute_only()} on attributes only, the others reading events directly, through `where` or through segment references). The memberships of the sampled profiles are recorded first, as `parcours apply` would have left them. Then `refresh_profile(engine, profile_id, event_type=type, now=now)` is timed for {o.sample:,} events drawn at random from the loaded ones, after {STREAM_WARMUP} calls off the clock; nothing changed since the memberships were computed, so every transition would be a disagreement between the in-memory and the SQL evaluators. The segments are published by `catalog.publish`, as `parcours apply` does.

{stream_table(results)}

Where the time goes: {results.stores[0].stream.profiled if results.stores and results.stores[0].stream else 0} more refreshes under cProfile (which slows them; the shares are what matters), cumulative time of each part:

{breakdown_table(results)}

The batch path that records memberships, `rebuild(engine, {REBUILD_PROBE!r})` from no memberships but the sampled profiles': {rebuild_line(results)}.

### Load and memory

Both stores load the same tab-separated files. SQLite: `executemany` through the `sqlite3` module, one transaction per 64 MiB of text, `journal_mode=OFF`, `synchronous=OFF` and a 256 MiB page cache during the load (WAL again afterwards); PostgreSQL: `COPY … FROM STDIN` through psycopg, one transaction. The events index is dropped before and built after the insert; then `ANALYZE` (PostgreSQL: `CHECKPOINT`, so that vacuum can mark the freshly loaded pages all-visible, then `VACUUM ANALYZE`).

{load_table(results)}

Resident memory of the benchmark process (Python, SQLite's page cache and sorter, the fetched ids; not the PostgreSQL server), peak during each phase and at its start: between phases the process hands freed memory back (`gc.collect()`, glibc's `malloc_trim`) and Linux's peak is reset. The whole run's peak is {results.peak_mib:.0f} MiB.

{memory_table(results)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description="Segment evaluation: batch, streaming, load.")
    parser.add_argument("--profiles", type=int, default=1_000_000, help="profiles in the hub")
    parser.add_argument("--events-per-profile", type=int, default=10, help="mean events each")
    parser.add_argument("--seed", type=int, default=20260101, help="the generator's seed")
    # Five runs left the median at the mercy of a couple of slow ones: on PostgreSQL, SQL the
    # same as the hand-written query's read 1.16 (0.96-1.21) in one run, 1.01 in a controlled
    # test of that pair alone.
    parser.add_argument("--repeat", type=int, default=9, help="timed runs of each batch query")
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=10.0,
        help="more timed runs of a fast batch query until each side has run this long",
    )
    parser.add_argument("--sample", type=int, default=2000, help="events for streaming")
    parser.add_argument("--profile-sample", type=int, default=300, help="refreshes profiled")
    parser.add_argument(
        "--stores", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql"
    )
    parser.add_argument(
        "--only",
        choices=("batch", "streaming"),
        help="that part alone, after the load (the section written says which)",
    )
    parser.add_argument("--docs", type=Path, default=DOCS, help="markdown file to update")
    args = parser.parse_args()
    stores = tuple(s.strip() for s in args.stores.split(",") if s.strip())
    unknown = set(stores) - {"sqlite", "postgresql"}
    if unknown:
        parser.error(f"unknown store(s): {', '.join(sorted(unknown))}")

    options = Options(
        Hub(args.profiles, args.events_per_profile, args.seed),
        args.repeat,
        args.min_seconds,
        args.sample,
        args.profile_sample,
        stores,
        args.only,
    )
    results = run(options)
    print(f"\n{summary_table(results)}\n\n{batch_table(results)}\n")
    print(f"{stream_table(results)}\n\n{breakdown_table(results)}\n")
    print(f"rebuild: {rebuild_line(results)}\n\n{load_table(results)}\n\n{memory_table(results)}\n")
    write_docs(args.docs, SECTION, section(results))
    print(f"{args.docs}: section {SECTION!r} rewritten; the run took {results.seconds:.0f} s")


if __name__ == "__main__":
    main()
