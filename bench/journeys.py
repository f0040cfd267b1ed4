"""Journey throughput against a bare Temporal baseline, and Temporal actions per entry.

    python bench/journeys.py            # or `make bench`, which runs every bench/*.py

One run starts its own Temporal dev server (the installed `temporal` binary, in-memory store,
127.0.0.1 only) and a Parcours store (SQLite in a temp dir), then:

1. alternates baseline and journey rounds: the same number of entries, fed by signal-with-start (baseline) and `send_event` (journeys)
   with the same bounded concurrency, each round timed from the first send until every entry
   has completed. The journey is `message` (email, to the outbox) then `end`, entered through
   `send_event` and run by the real `ParcoursPlugin` worker; the baseline is the bare workflow
   in bench/__init__.py, which runs one trivial activity. Alternating keeps drift (CPU
   frequency, the server's store growing) from favouring one side.
2. reads the histories of a few entries, and of a wait → message → end journey, and counts
   the Temporal actions each entry cost.

It prints a table and rewrites the `## Journeys` section of docs/benchmarks.md, leaving any
other section of that file alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import temporalio
from sqlalchemy.engine import Engine
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import catalog
from activities.db import close_engine, engine_for
from activities.profiles import set_profile
from parcours import ParcoursPlugin
from parcours import search_attributes as sa
from parcours.compiled import compile_once
from parcours.contracts import JourneyPosition
from parcours.loader import load_paths
from parcours.records import NewEvent
from parcours.settings import Settings
from starter.binaries import temporal_cli
from starter.routing import send_event
from workflows.journey import JourneyWorkflow

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, only bench/ itself is on sys.path; the baseline workflow is imported from
# the `bench` package (see bench/__init__.py for why it does not live in this file).
sys.path.insert(0, str(ROOT))
from bench import BASELINE_QUEUE, BaselineWorkflow, touch  # noqa: E402
from bench.report import (  # noqa: E402
    DASH,
    command,
    cpu_seconds,
    machine,
    spread,
    verdict,
    write_docs,
)
from tests.stack import descendants, process_name  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Journeys"
JOURNEY_QUEUE = "bench-journeys"
# `parcours dev`'s relaxed durability, passed for parity with it: the dev server accepts them
# with its in-memory store, where they change nothing (no journal file, no fsync). Should a
# later binary refuse them there, the run falls back to its defaults.
SQLITE_PRAGMAS = ["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=off"]
# Long enough for a loaded 2-core machine, short enough that a stuck entry fails the run.
ROUND_TIMEOUT = 180.0
# Completed entries whose histories are read for the action counts.
HISTORY_SAMPLE = 5
# Spreads are typeset "min, en dash, max"; spelt out because ruff flags the character itself.

DEFINITIONS = """
kind: template
id: bench-email
channel: email
subject: "Hello {{ profile.attributes.first_name | default('there') }}"
body: "Hello {{ profile.id }}, this is entry event {{ event.id }}."
---
kind: journey
id: bench-once
entry: {event: bench_once}
start: hello
nodes:
  - {id: hello, type: message, channel: email, template: bench-email, next: done}
  - {id: done, type: end}
---
kind: journey
id: bench-wait
entry: {event: bench_wait}
start: pause
nodes:
  - {id: pause, type: wait, duration: 1s, next: hello}
  - {id: hello, type: message, channel: email, template: bench-email, next: done}
  - {id: done, type: end}
"""

# The history events counted as Temporal actions, in the order the report shows them.
ACTIONS: dict[str, EventType.ValueType] = {
    "start": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
    "signals": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
    "timers": EventType.EVENT_TYPE_TIMER_STARTED,
    "activities": EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
    "upserts": EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
    # A local activity leaves a marker instead of ActivityTaskScheduled; Temporal Cloud bills
    # it as an action all the same. Other markers (patches) are not counted.
    "local activities": EventType.EVENT_TYPE_MARKER_RECORDED,
}
LOCAL_ACTIVITY_MARKER = "core_local_activity"


# --- measuring ------------------------------------------------------------------------------


class CpuClock:
    """CPU seconds used by this process (sender, both workers, the SDK's core threads) and by
    the dev server: on a small machine they compete for the same cores, so where an entry's
    cost lands matters as much as the rate."""

    def __init__(self) -> None:
        self.server_pid = _child_pid()

    def read(self) -> tuple[float, float | None]:
        return time.process_time(), cpu_seconds(self.server_pid) if self.server_pid else None


def _child_pid() -> int | None:
    # The SDK spawns the dev server itself and does not expose its pid.
    return next((p for p in descendants(os.getpid()) if process_name(p) == "temporal"), None)


@dataclass(frozen=True)
class Round:
    rate: float  # entries per second
    python_ms: float  # this process's CPU per entry
    server_ms: float | None  # the dev server's CPU per entry


@dataclass
class Rounds:
    baseline: list[Round] = field(default_factory=list)
    journey: list[Round] = field(default_factory=list)

    def ratios(self) -> list[float]:
        # Each journey round against the baseline round just before it, for the ratio's spread.
        return [j.rate / b.rate for j, b in zip(self.journey, self.baseline, strict=True)]


@dataclass(frozen=True)
class Actions:
    label: str
    counts: dict[str, float]  # mean per entry

    @property
    def total(self) -> float:
        return sum(self.counts.values())


Enter = Callable[[str], Awaitable[Awaitable[object]]]


@dataclass
class Bench:
    """What the rounds share: the clients, the store, and the ids of every entry started."""

    journey_client: Client
    baseline_client: Client
    engine: Engine
    settings: Settings
    concurrency: int
    clock: CpuClock
    journey_ids: list[str] = field(default_factory=list)
    baseline_ids: list[str] = field(default_factory=list)

    async def timed_round(self, enter: Enter, profiles: Sequence[str]) -> Round:
        """Time from the first send until the last entry has completed.

        `enter` sends one entry and returns what to await for its completion, so waiting for
        a result never holds one of the `concurrency` send slots.
        """
        slots = asyncio.Semaphore(self.concurrency)

        async def one(profile: str) -> None:
            async with slots:
                done = await enter(profile)
            await done

        python_before, server_before = self.clock.read()
        started = time.perf_counter()
        async with asyncio.timeout(ROUND_TIMEOUT):
            await asyncio.gather(*(one(p) for p in profiles))
        elapsed = time.perf_counter() - started
        python_after, server_after = self.clock.read()
        server = None
        if server_before is not None and server_after is not None:
            server = 1000 * (server_after - server_before) / len(profiles)
        return Round(
            rate=len(profiles) / elapsed,
            python_ms=1000 * (python_after - python_before) / len(profiles),
            server_ms=server,
        )

    async def enter_journey(self, event_type: str, profile: str) -> Awaitable[object]:
        routed = await send_event(
            self.journey_client,
            self.engine,
            self.settings,
            NewEvent(type=event_type, profile_id=profile),
        )
        (workflow_id,) = routed.journeys
        self.journey_ids.append(workflow_id)
        handle = self.journey_client.get_workflow_handle_for(JourneyWorkflow.run, workflow_id)
        return _check_journey(handle)

    async def once(self, profile: str) -> Awaitable[object]:
        return await self.enter_journey("bench_once", profile)

    async def with_wait(self, profile: str) -> Awaitable[object]:
        return await self.enter_journey("bench_wait", profile)

    async def baseline(self, profile: str) -> Awaitable[object]:
        # The router's id shape and start options, without Parcours's store or payloads.
        workflow_id = f"baseline:bench:{profile}"
        handle = await self.baseline_client.start_workflow(
            BaselineWorkflow.run,
            profile,
            id=workflow_id,
            task_queue=BASELINE_QUEUE,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            start_signal="event",
            start_signal_args=[f"event-{profile}"],
        )
        self.baseline_ids.append(workflow_id)
        return handle.result()


async def _check_journey(handle: WorkflowHandle[Any, JourneyPosition]) -> None:
    # An entry that suppressed or failed its message would have measured the wrong path.
    position = await handle.result()
    outcomes = [step.outcome for step in position.path]
    if not position.finished or outcomes[-2:] != ["sent", "ended"]:
        raise RuntimeError(f"{handle.id} did not send its message and end: {outcomes}")


async def count_actions(client: Client, label: str, workflow_ids: Sequence[str]) -> Actions:
    names = {event_type: name for name, event_type in ACTIONS.items()}
    totals: Counter[str] = Counter()
    for workflow_id in workflow_ids:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        totals.update(
            names[e.event_type]
            for e in history.events
            if e.event_type in names
            and (
                e.event_type != EventType.EVENT_TYPE_MARKER_RECORDED
                or e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
            )
        )
    return Actions(label, {name: totals[name] / len(workflow_ids) for name in ACTIONS})


# --- the run --------------------------------------------------------------------------------


@dataclass
class Results:
    rounds: Rounds
    actions: list[Actions]
    entries: int
    concurrency: int
    # Known only to `run`, which owns the server and the clock.
    pragmas: bool = False
    seconds: float = 0.0
    load: float = 0.0  # 1-minute load average as the run began


async def start_server() -> tuple[WorkflowEnvironment, bool]:
    """The dev server, with `parcours dev`'s SQLite pragmas when this binary accepts them."""
    options: dict[str, Any] = {
        "dev_server_existing_path": str(temporal_cli()),
        "search_attributes": list(sa.ALL),
        "ip": "127.0.0.1",
        "dev_server_log_level": "error",
    }
    try:
        env = await WorkflowEnvironment.start_local(**options, dev_server_extra_args=SQLITE_PRAGMAS)
        return env, True
    except RuntimeError as exc:
        print(f"the dev server refused the SQLite pragmas ({exc}); using its defaults")
        return await WorkflowEnvironment.start_local(**options), False


async def run(rounds: int, entries: int, concurrency: int, wait_entries: int) -> Results:
    began, load = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="parcours-bench-") as tmp:
        # env={}: no SendGrid key (or anything else) from the caller's environment, so every
        # message goes to the outbox and nothing leaves this machine.
        settings = Settings.load(Path(tmp) / "data", env={}).model_copy(
            update={"task_queue": JOURNEY_QUEUE}
        )
        engine = engine_for(settings.database_url)
        definitions = Path(tmp) / "bench.yaml"
        definitions.write_text(DEFINITIONS)
        catalog.publish(engine, load_paths([definitions]))

        # Fresh profiles for every entry, so no round meets an entry still running or a
        # delivery already claimed.
        warmup = [f"warm-{i:04d}" for i in range(max(concurrency, 20))]
        blocks = [[f"r{r}-{i:04d}" for i in range(entries)] for r in range(1, rounds + 1)]
        waits = [f"wait-{i:04d}" for i in range(wait_entries)]
        for profile in [*warmup, *(p for block in blocks for p in block), *waits]:
            set_profile(engine, profile, email=f"{profile}@example.com")

        env, pragmas = await start_server()
        try:
            target = env.client.service_client.config.target_host
            bench = Bench(
                journey_client=await Client.connect(target, plugins=[ParcoursPlugin(settings)]),
                baseline_client=env.client,
                engine=engine,
                settings=settings,
                concurrency=concurrency,
                clock=CpuClock(),
            )
            # The plugin on the client is all the journey worker needs (README).
            journey_worker = Worker(bench.journey_client, task_queue=JOURNEY_QUEUE)
            # Where Python writes no bytecode cache (PYTHONDONTWRITEBYTECODE, set on some
            # machines this runs on), the sandbox would compile the baseline's module for every
            # run: a cost no installed deployment pays, which would flatter the ratio. The
            # journey's modules get the same treatment from ParcoursPlugin.
            compile_once([BaselineWorkflow.__module__])
            baseline_worker = Worker(
                bench.baseline_client,
                task_queue=BASELINE_QUEUE,
                workflows=[BaselineWorkflow],
                activities=[touch],
            )
            async with journey_worker, baseline_worker:
                results = await measure(bench, warmup, blocks, waits)
        finally:
            await env.shutdown()
            close_engine(settings.database_url)
    results.pragmas = pragmas
    results.seconds = time.perf_counter() - began
    results.load = load
    return results


async def measure(
    bench: Bench, warmup: list[str], blocks: list[list[str]], waits: list[str]
) -> Results:
    # The first entries of each kind pay for imports into the workflow sandbox, connection
    # set-up and the like: spent off the clock.
    await bench.timed_round(bench.baseline, warmup)
    await bench.timed_round(bench.once, warmup)

    rounds = Rounds()
    for number, block in enumerate(blocks, start=1):
        rounds.baseline.append(await bench.timed_round(bench.baseline, block))
        rounds.journey.append(await bench.timed_round(bench.once, block))
        print(
            f"round {number}/{len(blocks)}: baseline {rounds.baseline[-1].rate:6.1f}/s  "
            f"journey {rounds.journey[-1].rate:6.1f}/s",
            flush=True,
        )

    first_wait = len(bench.journey_ids)
    await bench.timed_round(bench.with_wait, waits)

    baseline_sample = bench.baseline_ids[-HISTORY_SAMPLE:]
    once_sample = bench.journey_ids[first_wait - HISTORY_SAMPLE : first_wait]
    wait_sample = bench.journey_ids[first_wait:][:HISTORY_SAMPLE]
    actions = [
        await count_actions(bench.baseline_client, "baseline (bare workflow)", baseline_sample),
        await count_actions(bench.journey_client, "message → end", once_sample),
        await count_actions(bench.journey_client, "wait 1s → message → end", wait_sample),
    ]
    return Results(rounds, actions, len(blocks[0]), bench.concurrency)


# --- reporting ------------------------------------------------------------------------------


def count(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.2f}"


def cpu_per_entry(rounds: Sequence[Round]) -> tuple[float, float | None]:
    """Median CPU ms per entry over these rounds: this process's, and the dev server's."""
    server = [r.server_ms for r in rounds if r.server_ms is not None]
    python = statistics.median(r.python_ms for r in rounds)
    return python, statistics.median(server) if server else None


def versions() -> str:
    cli = subprocess.run(
        [str(temporal_cli()), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return f"Python {platform.python_version()}, temporalio {temporalio.__version__}, {cli}"


def summary_table(results: Results) -> str:
    rounds = results.rounds
    journey = [r.rate for r in rounds.journey]
    baseline = [r.rate for r in rounds.baseline]
    ratio = statistics.median(journey) / statistics.median(baseline)
    waited = results.actions[-1]
    return "\n".join(
        [
            f"| figure | goal | median | spread (min{DASH}max) | |",
            "|---|---|---|---|---|",
            f"| journey entries/s (message → end) | — | {statistics.median(journey):.1f} "
            f"| {spread(journey, 1)} | |",
            f"| baseline entries/s (bare workflow, one activity) | — "
            f"| {statistics.median(baseline):.1f} | {spread(baseline, 1)} | |",
            f"| median(journey) / median(baseline) | ≥ 0.8 | {ratio:.2f} "
            f"| {spread(rounds.ratios(), 2)} | {verdict(ratio >= 0.8)} |",
            f"| Temporal actions per entry, wait → message → end | ≤ 4 | {count(waited.total)} "
            f"| — | {verdict(waited.total <= 4)} |",
        ]
    )


def rounds_table(results: Results) -> str:
    rounds = results.rounds
    lines = ["| round | baseline entries/s | journey entries/s | ratio |", "|---|---|---|---|"]
    for number, (b, j) in enumerate(zip(rounds.baseline, rounds.journey, strict=True), 1):
        lines.append(f"| {number} | {b.rate:.1f} | {j.rate:.1f} | {j.rate / b.rate:.2f} |")
    return "\n".join(lines)


def cost_table(results: Results) -> str:
    def row(label: str, python: float, server: float | None) -> str:
        both = f"{python + server:.1f}" if server is not None else "n/a"
        shown = f"{server:.1f}" if server is not None else "n/a"
        return f"| {label} | {python:.1f} | {shown} | {both} |"

    baseline = cpu_per_entry(results.rounds.baseline)
    journey = cpu_per_entry(results.rounds.journey)
    extra_server = None
    if baseline[1] is not None and journey[1] is not None:
        extra_server = journey[1] - baseline[1]
    return "\n".join(
        [
            "| CPU ms per entry (median over rounds) | Python process | dev server | both |",
            "|---|---|---|---|",
            row("baseline", *baseline),
            row("journey", *journey),
            row("journey minus baseline", journey[0] - baseline[0], extra_server),
        ]
    )


def cpu_ratio(results: Results) -> float | None:
    """What the ratio would be if throughput only followed CPU per entry, as it does once
    every core is busy: a second reading of the ratio that other load on the machine moves
    less than it moves the rates."""
    python_b, server_b = cpu_per_entry(results.rounds.baseline)
    python_j, server_j = cpu_per_entry(results.rounds.journey)
    if server_b is None or server_j is None:
        return None
    return (python_b + server_b) / (python_j + server_j)


def actions_table(results: Results) -> str:
    lines = [
        "| entry | " + " | ".join(ACTIONS) + " | total |",
        "|---|" + "---|" * (len(ACTIONS) + 1),
    ]
    for a in results.actions:
        counts = " | ".join(count(a.counts[name]) for name in ACTIONS)
        lines.append(f"| {a.label} | {counts} | {count(a.total)} |")
    return "\n".join(lines)


def section(results: Results) -> str:
    pragmas = (
        "with `parcours dev`'s SQLite pragmas (`journal_mode=wal`, `synchronous=off`: accepted, "
        "though they change nothing in memory)"
        if results.pragmas
        else "with its default SQLite pragmas (it refused `parcours dev`'s)"
    )
    return f"""{SECTION}

Measured by `bench/journeys.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC (the run took {results.seconds:.0f} s).

- Command: `{command()}` (`make bench` runs it too)
- Machine: {machine()}; 1-minute load average {results.load:.2f} as the run began (other work on the machine lowers both rates; alternating rounds keeps it from skewing the ratio much)
- Software: {versions()}
- Setup: one Temporal dev server on 127.0.0.1, in-memory store, {pragmas}; the Parcours store is SQLite in a temp dir; the sender and both workers share one Python process. `JourneyWorkflow` runs outside Temporal's workflow sandbox (`sandboxed=False`: its imports were all passed through, so the sandbox only re-imported its module for every entry; tests/test_replay.py replays every journey history inside the sandbox instead); the baseline runs in the sandbox, the SDK's default, its module compiled once per process as Python's bytecode cache would (this machine sets `PYTHONDONTWRITEBYTECODE`, which would otherwise charge it a compile per entry that no installed deployment pays).

{summary_table(results)}

### Throughput

Each round starts {results.entries} entries ({"baseline by signal-with-start, journeys by `send_event`: a plain start, a signal only when an entry already runs"}), {results.concurrency} sends in flight, and is timed from the first send until every entry has completed. The journey (`message` by email to the outbox, then `end`) is entered through `send_event`, which records the event first, and runs on the `ParcoursPlugin` worker; the baseline is a bare workflow running one trivial activity, no store, on its own task queue and worker. Baseline and journey rounds alternate after an uncounted warm-up of each; the ratio's spread pairs each journey round with the baseline round before it.

{rounds_table(results)}

Where the time goes: CPU used per entry by this process (sender, both workers, the SDK's core threads) and by the dev server, measured over each round. {cpu_note(results)}

{cost_table(results)}

### Temporal actions per entry

Counted in the histories of {HISTORY_SAMPLE} completed entries of each kind (mean per entry): start = WorkflowExecutionStarted, signals = WorkflowExecutionSignaled, timers = TimerStarted, activities = ActivityTaskScheduled, upserts = UpsertWorkflowSearchAttributes, local activities = MarkerRecorded of a local activity.

{actions_table(results)}
"""


def cpu_note(results: Results) -> str:
    ratio = cpu_ratio(results)
    if ratio is None:
        return "(The dev server's CPU could not be read on this machine.)"
    return (
        f"Once every core is busy, throughput follows total CPU per entry: baseline CPU / "
        f"journey CPU = {ratio:.2f}, a reading of the ratio that other load on the machine "
        f"moves less than it moves the rates."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Journey throughput and Temporal actions.")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each kind")
    parser.add_argument("--entries", type=int, default=200, help="entries per round")
    parser.add_argument("--concurrency", type=int, default=32, help="sends in flight")
    parser.add_argument("--wait-entries", type=int, default=HISTORY_SAMPLE, help="wait journeys")
    parser.add_argument("--docs", type=Path, default=DOCS, help="markdown file to update")
    args = parser.parse_args()

    results = asyncio.run(run(args.rounds, args.entries, args.concurrency, args.wait_entries))
    print(f"\n{summary_table(results)}\n\n{cost_table(results)}\n{cpu_note(results)}\n")
    print(f"{actions_table(results)}\n")
    write_docs(args.docs, SECTION, section(results))
    print(f"{args.docs}: section {SECTION!r} rewritten; the run took {results.seconds:.0f} s")


if __name__ == "__main__":
    main()
