"""How journey throughput and campaign time grow with the number of profiles in the store.

    python bench/scaling.py                       # or `make bench`, which runs every bench/*.py
    python bench/scaling.py --sizes 10000,100000  # a quicker run

One run starts a throwaway PostgreSQL server (bench/segments.py's), a Temporal dev server
(bench/journeys.py's) and the fake SendGrid in a process of its own (bench/campaigns.py's),
then grows one store through each size in turn. At each size it:

1. imports the profiles that bring the store to that size from a JSONL file with
   `import_profiles`, the library function behind `parcours profiles import`, and times it;
   then runs VACUUM ANALYZE, as autovacuum would after a bulk load (it is off on this server so
   it cannot start in the middle of a timing);
2. times rounds of triggered journey entries (message by email, then end) entered through
   `send_event`, as bench/journeys.py does, for profiles of the store;
3. times one campaign run to the whole store (a newsletter segment every profile is in), from
   start to report, as bench/campaigns.py does, and counts its Temporal actions.

Nothing has a goal here: the figures say how the costs grow, for sizing a deployment. It
rewrites the `## Scaling` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from temporalio.client import Client
from temporalio.worker import Worker

from activities.apply import apply_paths
from activities.db import close_engine, engine_for
from activities.imports import DEFAULT_BATCH_SIZE, import_profiles
from parcours import ParcoursPlugin
from parcours.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.campaigns import DEFINITIONS as CAMPAIGN_DEFINITIONS  # noqa: E402
from bench.campaigns import campaign_round, count_actions, fake_sendgrid  # noqa: E402
from bench.journeys import DEFINITIONS as JOURNEY_DEFINITIONS  # noqa: E402
from bench.journeys import Bench, CpuClock, Round, start_server, versions  # noqa: E402
from bench.report import DASH, command, machine, spread, write_docs  # noqa: E402
from bench.segments import Server, postgres_server  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Scaling"
SIZES = (10_000, 100_000, 1_000_000)
# Sends in flight while entering journeys, as in bench/journeys.py.
CONCURRENCY = 32


def profile_id(number: int) -> str:
    return f"p{number:07d}"


@dataclass
class Step:
    """Everything measured with `size` profiles in the store."""

    size: int
    load: float  # 1-minute load average as the step began
    imported: int = 0
    import_seconds: float = 0.0
    analyze_seconds: float = 0.0
    journeys: list[Round] = field(default_factory=list)
    campaign_seconds: float = 0.0
    sent: int = 0
    pages: int = 0
    actions_per_1000: float = 0.0
    database_mib: float = 0.0

    @property
    def journey_rate(self) -> float:
        return statistics.median(r.rate for r in self.journeys)

    @property
    def campaign_rate(self) -> float:
        return self.sent / self.campaign_seconds


@dataclass
class Results:
    steps: list[Step]
    rounds: int
    entries: int
    batch_size: int
    postgres: str
    seconds: float = 0.0


def write_profiles(path: Path, start: int, stop: int) -> None:
    """The profiles `start` to `stop` as a JSONL import file: every one in the newsletter."""
    with path.open("w", encoding="utf-8") as file:
        for i in range(start, stop):
            profile = {
                "id": profile_id(i),
                "email": f"{profile_id(i)}@example.com",
                "attributes": {"newsletter": True, "first_name": f"P{i}"},
            }
            file.write(json.dumps(profile) + "\n")


def grow(
    server: Server, settings: Settings, directory: Path, step: Step, start: int, batch_size: int
) -> None:
    """Import profiles `start` to `step.size`, then refresh the planner's statistics."""
    path = directory / f"profiles-{step.size}.jsonl"
    write_profiles(path, start, step.size)
    engine = engine_for(settings.database_url)
    began = time.perf_counter()
    summary = import_profiles(engine, path, batch_size=batch_size)
    step.import_seconds = time.perf_counter() - began
    path.unlink()
    if summary.created != step.size - start or summary.failed:
        raise RuntimeError(f"the import did not create every profile: {summary}")
    step.imported = summary.created
    began = time.perf_counter()
    with psycopg.connect(server.conninfo, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE")
    step.analyze_seconds = time.perf_counter() - began


def database_mib(server: Server) -> float:
    with psycopg.connect(server.conninfo, autocommit=True) as connection:
        row = connection.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) / 2**20 if row else 0.0


def entry_profiles(start: int, stop: int, count: int) -> list[str]:
    """`count` profiles spread evenly over the ones the step imported, so that no entry meets
    an entry of an earlier step."""
    stride = (stop - start) // count
    if stride < 1:
        raise ValueError(f"{count} journey entries need at least {count} new profiles per size")
    return [profile_id(start + n * stride) for n in range(count)]


async def measure(
    bench: Bench, client: Client, server: Server, step: Step, start: int, rounds: int, entries: int
) -> None:
    profiles = entry_profiles(start, step.size, rounds * entries)
    for number in range(rounds):
        block = profiles[number * entries : (number + 1) * entries]
        step.journeys.append(await bench.timed_round(bench.once, block))
        print(f"  journeys round {number + 1}/{rounds}: {step.journeys[-1].rate:.1f}/s", flush=True)
    await asyncio.sleep(1)  # campaign run ids have a one-second resolution
    step.campaign_seconds, workflow_id, step.sent = await campaign_round(client, bench.settings)
    if step.sent != step.size:
        raise RuntimeError(f"the campaign sent {step.sent} of {step.size} recipients")
    actions, step.pages = await count_actions(client, workflow_id)
    step.actions_per_1000 = actions / (step.sent / 1000)
    step.database_mib = database_mib(server)
    print(
        f"  campaign: {step.sent:,} in {step.campaign_seconds:.1f} s ({step.campaign_rate:,.0f}/s)",
        flush=True,
    )


async def run(sizes: Sequence[int], rounds: int, entries: int, batch_size: int) -> Results:
    began = time.perf_counter()
    steps: list[Step] = []
    with (
        tempfile.TemporaryDirectory(prefix="parcours-bench-") as tmp,
        postgres_server() as server,
        fake_sendgrid() as (url, api_key),
    ):
        directory = Path(tmp)
        settings = Settings.load(
            directory / "data",
            env={
                "PARCOURS_DATABASE_URL": server.url,
                "SENDGRID_API_KEY": api_key,
                "PARCOURS_SENDGRID_URL": url,
            },
        )
        engine = engine_for(settings.database_url)
        (directory / "defs.yaml").write_text(f"{JOURNEY_DEFINITIONS}\n---\n{CAMPAIGN_DEFINITIONS}")
        apply_paths(engine, [directory / "defs.yaml"])
        env, _ = await start_server()
        try:
            client = await Client.connect(
                env.client.service_client.config.target_host, plugins=[ParcoursPlugin(settings)]
            )
            bench = Bench(
                journey_client=client,
                baseline_client=client,
                engine=engine,
                settings=settings,
                concurrency=CONCURRENCY,
                clock=CpuClock(),
            )
            async with Worker(client, task_queue=settings.task_queue):
                start = 0
                for size in sizes:
                    step = Step(size, os.getloadavg()[0])
                    print(f"{size:,} profiles (load average {step.load:.2f})", flush=True)
                    grow(server, settings, directory, step, start, batch_size)
                    print(
                        f"  imported {step.imported:,} in {step.import_seconds:.1f} s "
                        f"({step.imported / step.import_seconds:,.0f}/s)",
                        flush=True,
                    )
                    first = start
                    if not steps:
                        # Sandbox imports, connections and the like, off the clock; the warm-up
                        # entries take the first half of the new profiles, the rounds the rest.
                        first = start + (size - start) // 2
                        await bench.timed_round(bench.once, entry_profiles(start, first, 20))
                        await campaign_round(client, settings)
                    await measure(bench, client, server, step, first, rounds, entries)
                    steps.append(step)
                    start = size
        finally:
            await env.shutdown()
            close_engine(settings.database_url)
    results = Results(steps, rounds, entries, batch_size, server.version)
    results.seconds = time.perf_counter() - began
    return results


# --- reporting ------------------------------------------------------------------------------


def ratio(value: float, first: float) -> str:
    return f"{value / first:.2f}"


def store_table(results: Results) -> str:
    lines = [
        "| profiles in the store | load avg | imported | import s | profiles/s imported "
        "| VACUUM ANALYZE s | database size |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in results.steps:
        lines.append(
            f"| {s.size:,} | {s.load:.2f} | {s.imported:,} | {s.import_seconds:.1f} "
            f"| {s.imported / s.import_seconds:,.0f} | {s.analyze_seconds:.1f} "
            f"| {s.database_mib:,.0f} MiB |"
        )
    return "\n".join(lines)


def journey_table(results: Results) -> str:
    first = results.steps[0]
    lines = [
        f"| profiles in the store | entries/s (median) | spread (min{DASH}max) "
        f"| vs {first.size:,} | CPU ms per entry: Python | dev server |",
        "|---|---|---|---|---|---|",
    ]
    for s in results.steps:
        rates = [r.rate for r in s.journeys]
        server = [r.server_ms for r in s.journeys if r.server_ms is not None]
        shown = f"{statistics.median(server):.1f}" if server else "n/a"
        lines.append(
            f"| {s.size:,} | {s.journey_rate:.1f} | {spread(rates, 1)} "
            f"| {ratio(s.journey_rate, first.journey_rate)} "
            f"| {statistics.median(r.python_ms for r in s.journeys):.1f} | {shown} |"
        )
    return "\n".join(lines)


def campaign_table(results: Results) -> str:
    first = results.steps[0]
    lines = [
        f"| recipients (the whole store) | seconds, start to report | vs {first.size:,} "
        f"| recipients/s | vs {first.size:,} | pages | Temporal actions per 1,000 |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in results.steps:
        lines.append(
            f"| {s.sent:,} | {s.campaign_seconds:.1f} "
            f"| {ratio(s.campaign_seconds, first.campaign_seconds)} | {s.campaign_rate:,.0f} "
            f"| {ratio(s.campaign_rate, first.campaign_rate)} | {s.pages:,} "
            f"| {s.actions_per_1000:.2f} |"
        )
    return "\n".join(lines)


def section(results: Results) -> str:
    sizes = ", ".join(f"{s.size:,}" for s in results.steps)
    return f"""{SECTION}

Measured by `bench/scaling.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC (the run took {results.seconds:.0f} s). Informational: these figures have no goal; they say how the costs grow with the store, for sizing a deployment ([operations.md](operations.md#scaling) turns them into settings).

- Command: `{command()}` (`make bench` runs it too)
- Machine: {machine()}; the 1-minute load average as each size began is in the first table (other work on this shared machine lowers every rate, so compare sizes by their ratios, and read them with the load beside them)
- Software: {versions()}, PostgreSQL {results.postgres}
- Setup: one PostgreSQL store on a throwaway server (bench/segments.py's settings: durability and autovacuum off), grown through {sizes} profiles in turn; one Temporal dev server on 127.0.0.1, in memory; the fake SendGrid of `tests/fakes` on 127.0.0.1 in a process of its own, which both journeys and campaigns send to; one worker (`ParcoursPlugin`, SDK defaults), sharing its Python process with the sender.

### The store

Each size's new profiles are imported from a JSONL file by `import_profiles` (what `parcours profiles import FILE --batch-size {results.batch_size}` runs: validation and normalisation of every line, then `upsert_profiles`, one transaction per batch), then `VACUUM ANALYZE` refreshes the planner's statistics, as autovacuum would after a bulk load.

{store_table(results)}

### Journey throughput

At each size, {results.rounds} rounds of {results.entries} triggered entries (a `message` by email, then `end`; entered through `send_event`, {CONCURRENCY} sends in flight) for profiles of the store, each round timed from the first send until every entry has completed, as in the Journeys section.

{journey_table(results)}

### Campaign time

At each size, one run of a campaign whose audience is every profile of the store, timed from `start_run` to its report (audience snapshot, pages of 1,000 recipients rendered, recorded in the ledger and posted to the fake SendGrid); an uncounted run at the first size warms up first.

{campaign_table(results)}

### How it scales

{reading(results)}
"""


def reading(results: Results) -> str:
    """What the tables say, with the measured ratios in it: the explanations hold for any run,
    the figures are this run's."""
    first, last = results.steps[0], results.steps[-1]
    grown = f"{last.size / first.size:,.0f}"
    journey = last.journey_rate / first.journey_rate
    cpu = [
        statistics.median(r.python_ms + (r.server_ms or 0.0) for r in s.journeys)
        for s in (first, last)
    ]
    campaign_time = last.campaign_seconds / first.campaign_seconds
    campaign_rate = last.campaign_rate / first.campaign_rate
    imports = [s.imported / s.import_seconds for s in results.steps]
    steady = (
        "a steady rate"
        if max(imports) <= 1.25 * min(imports)
        else f"the rate fell {1 - imports[-1] / imports[0]:.0%} by the last size, with the load "
        f"at {last.load:.2f} against {first.load:.2f} and larger indexes to update"
    )
    rates = [s.journey_rate for s in results.steps]
    if cpu[1] <= 1.1 * cpu[0]:
        cpu_reading = "level, so what moved the rate between sizes is the machine's other load"
    else:
        # On a shared machine CPU time per entry rises with contention too (caches, frequency),
        # so a rise alone does not say how much of it the store's size caused.
        cpu_reading = (
            f"{cpu[1] / cpu[0] - 1:.0%} more, with the 1-minute load at {last.load:.2f} against "
            f"{first.load:.2f}: the part the larger indexes took and the part contention took "
            "cannot be told apart in this run"
        )
    if rates != sorted(rates, reverse=True):
        cpu_reading += (
            "; the rate did not fall steadily with the size (the table), a sign of the "
            "machine's load rather than the store"
        )
    if campaign_rate > 1.2:
        # Fixed costs and the machine's load both move it; the 10k run is only seconds long.
        level = "the rate rose (fixed costs spread wider, and a loaded machine's noise)"
    else:
        level = "the rate stayed level" if campaign_rate >= 0.8 else "the rate fell"
    return f"""- **Journeys.** With {grown} times the profiles ({last.size:,} against \
{first.size:,}), journey throughput was {journey:.2f} times the first size's; CPU per entry \
(Python and dev server together) was {cpu[1]:.0f} ms against {cpu[0]:.0f} ms, {cpu_reading}. \
An entry reads and writes only its own rows (its profile, event, entry and finish rows, one \
delivery claimed then settled), each through an index, so its cost is not meant to grow with \
the tables. What bounds it is the work per entry: 3 Temporal actions for message → end, 4 with a \
wait (Journeys section), each a workflow task on the worker and a history write on the server. \
To raise throughput, add worker processes and Temporal capacity; the store's size is not the lever.
- **Campaigns: time grows linearly with the audience; {level}.** {grown} times the \
recipients took {campaign_time:.1f} times as long, at {campaign_rate:.2f} times the first \
size's rate; the start, the snapshot and the report are fixed costs, of which a small run \
pays a larger share. Per recipient, a campaign renders a message and writes a ledger row before the send \
and settles it after, a page of 1,000 at a time; Temporal costs about one action per 1,000 \
recipients whatever the size, so it is never the bound. The worker's CPU and the database's \
writes are, then the provider's own limits and the campaign's `rate_limit`.
- **Imports: {steady}.** `import_profiles` ran at {spread(imports, 0)} profiles/s across \
the sizes: validation and normalisation of each line in Python, then one upsert transaction per \
batch. At that rate 1,000,000 profiles take {1_000_000 / statistics.median(imports) / 60:.0f} \
minutes on this machine; it is one process on one core.
"""


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not sizes or any(b <= a for a, b in zip([0, *sizes], sizes, strict=False)):
        raise argparse.ArgumentTypeError(f"expected growing positive sizes, got {text!r}")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description="Journeys and campaigns as the store grows.")
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=list(SIZES),
        help="profiles in the store, growing, comma-separated (default 10000,100000,1000000)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="journey rounds per size")
    parser.add_argument("--entries", type=int, default=200, help="journey entries per round")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="import batch")
    parser.add_argument("--docs", type=Path, default=DOCS, help="markdown file to update")
    args = parser.parse_args()
    results = asyncio.run(run(args.sizes, args.rounds, args.entries, args.batch_size))
    print(f"\n{store_table(results)}\n\n{journey_table(results)}\n\n{campaign_table(results)}\n")
    write_docs(args.docs, SECTION, section(results))
    print(f"{args.docs}: section {SECTION!r} rewritten; the run took {results.seconds:.0f} s")


if __name__ == "__main__":
    main()
