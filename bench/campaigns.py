"""Campaign throughput against a bare send loop, and Temporal actions per 1,000 recipients.

    python bench/campaigns.py            # or `make bench`, which runs every bench/*.py

One run starts a Temporal dev server (the installed binary, in memory, 127.0.0.1 only), the
fake SendGrid of tests/fakes on 127.0.0.1 in a process of its own, and a SQLite store holding a
newsletter segment of `--recipients` profiles; then it alternates rounds of:

- the baseline: a bare loop that selects the same audience with one query and posts the same
  1,000-recipient requests (subject, text and html per recipient, formatted in Python, and the
  same custom args: an id per mail, a tag per request) to the same fake through the same
  `sendgrid` client: no ledger, no consent, no Temporal;
- a campaign run, `CampaignWorkflow` on the real `ParcoursPlugin` worker, from start to report.

It prints a table and rewrites the `## Campaigns` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from activities.apply import apply_paths
from activities.campaigns import PAGE_TAG
from activities.catalog import known_segments
from activities.channels.base import DELIVERY_TAG, Outgoing
from activities.channels.email import MAX_PERSONALIZATIONS, SendGridEmail
from activities.child_processes import process_count
from activities.db import ProfileRow, close_engine, engine_for, ordered_ids
from activities.profiles import profile_update, upsert_profiles
from activities.rule_sql import members_query
from parcours import ParcoursPlugin
from parcours.definitions import Segment
from parcours.settings import Settings
from starter.campaigns import start_run
from workflows.campaign import PAGE_SIZE

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.journeys import start_server  # noqa: E402
from bench.report import (  # noqa: E402
    DASH,
    command,
    cpu_seconds,
    machine,
    spread,
    verdict,
    write_docs,
)
from tests.stack import descendants, page_processes, process_name  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Campaigns"
RATE_GOAL, RATIO_GOAL, ACTIONS_GOAL = 20_000, 0.7, 3.0
DEFINITIONS = """
kind: segment
id: newsletter
rule: {attribute: newsletter, op: eq, value: true}
---
kind: template
id: digest
channel: email
subject: "Your week, {{ profile.attributes.first_name }}"
body: "Hello {{ profile.attributes.first_name }}, here is your week."
html: "<p>Hello {{ profile.attributes.first_name }}, here is your week.</p>"
---
kind: campaign
id: digest
audience: {segment: newsletter}
channel: email
template: digest
"""
COUNTED = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
    EventType.EVENT_TYPE_TIMER_STARTED,
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
    EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
}


# Where the CPU goes, by the processes that do the work.
KINDS = ("this process", "page processes", "fake SendGrid", "dev server")


def cpu_by_kind(fake_pid: int) -> dict[str, float]:
    """CPU seconds used so far by this process and by each kind of process under it."""
    used = dict.fromkeys(KINDS, 0.0)
    used["this process"] = time.process_time()
    pages = set(page_processes(os.getpid()))
    for pid in descendants(os.getpid()):
        if pid == fake_pid:
            kind = "fake SendGrid"
        elif pid in pages:
            kind = "page processes"
        elif process_name(pid) == "temporal":
            kind = "dev server"
        else:
            continue
        used[kind] += cpu_seconds(pid) or 0.0
    return used


@dataclass
class Results:
    recipients: int
    baseline: list[float] = field(default_factory=list)  # recipients/s
    campaign: list[float] = field(default_factory=list)
    # CPU ms per 1,000 recipients by kind of process, one dict per round.
    baseline_cpu: list[dict[str, float]] = field(default_factory=list)
    campaign_cpu: list[dict[str, float]] = field(default_factory=list)
    page_processes: int = 0
    actions_per_1000: float = 0.0
    pages: int = 0
    load_seconds: float = 0.0
    peak_rss_mib: float = 0.0
    seconds: float = 0.0


def load(settings: Settings, recipients: int, directory: Path) -> float:
    began = time.perf_counter()
    engine = engine_for(settings.database_url)
    (directory / "defs.yaml").write_text(DEFINITIONS)
    apply_paths(engine, [directory / "defs.yaml"])
    for start in range(0, recipients, 10_000):
        upsert_profiles(
            engine,
            [
                profile_update(
                    f"p{i:07d}",
                    email=f"p{i:07d}@example.com",
                    attributes={"newsletter": True, "first_name": f"P{i}"},
                )
                for i in range(start, min(start + 10_000, recipients))
            ],
        )
    return time.perf_counter() - began


@contextmanager
def measured(into: list[dict[str, float]], fake_pid: int, recipients: int) -> Iterator[None]:
    """Record the CPU each kind of process used in the block, in ms per 1,000 recipients."""
    before = cpu_by_kind(fake_pid)
    yield
    after = cpu_by_kind(fake_pid)
    into.append({k: (after[k] - before[k]) * 1000 / (recipients / 1000) for k in KINDS})


@contextmanager
def fake_sendgrid() -> Iterator[tuple[str, str, int]]:
    """The fake SendGrid in a process of its own, for both sides alike: parsing and recording
    400,000 mails would otherwise take the GIL (and the garbage collector's time) of the very
    process being measured. Yields its URL, API key and pid."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.sendgrid"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        url, api_key = process.stdout.readline().split()
        yield url, api_key, process.pid
    finally:
        process.stdin.close()
        process.wait(timeout=30)


def bare_loop(settings: Settings, sendgrid: SendGridEmail) -> int:
    """Select the audience, post it in 1,000-recipient requests: the least a sender must do."""
    engine = engine_for(settings.database_url)
    segments: dict[str, Segment] = known_segments(engine)
    ids = members_query(
        engine.dialect.name, segments["newsletter"].rule, datetime.now(UTC), segments
    )
    with Session(engine) as session:
        rows = session.execute(
            select(ProfileRow.id, ProfileRow.email, ProfileRow.attributes).where(
                ProfileRow.id.in_(ids.subquery().select())
            )
        ).all()
    # Each mail carries an id of a campaign's delivery id's size, for its webhook events.
    ids = ordered_ids(len(rows))
    for start in range(0, len(rows), MAX_PERSONALIZATIONS):
        batch = [
            Outgoing(
                to=email,
                subject=f"Your week, {attributes['first_name']}",
                text=f"Hello {attributes['first_name']}, here is your week.",
                html=f"<p>Hello {attributes['first_name']}, here is your week.</p>",
                correlation={DELIVERY_TAG: ids[n]},
            )
            for n, (_, email, attributes) in enumerate(
                rows[start : start + MAX_PERSONALIZATIONS], start
            )
        ]
        sendgrid.send_bulk(batch, {PAGE_TAG: f"bare/{start}"})
    return len(rows)


async def campaign_round(client: Client, settings: Settings) -> tuple[float, str, int]:
    engine = engine_for(settings.database_url)
    began = time.perf_counter()
    handle = await start_run(client, engine, settings, "digest")
    report = await handle.result()
    return time.perf_counter() - began, handle.id, report.sent


async def count_actions(client: Client, workflow_id: str) -> tuple[int, int]:
    """Actions over every run of the chain (continue-as-new), and the pages sent."""
    actions = pages = 0
    async for workflow in client.list_workflows(f'WorkflowId = "{workflow_id}"'):
        history = await client.get_workflow_handle(
            workflow_id, run_id=workflow.run_id
        ).fetch_history()
        for event in history.events:
            actions += event.event_type in COUNTED
            attributes = event.activity_task_scheduled_event_attributes
            pages += attributes.activity_type.name == "send_campaign_page"
    return actions, pages


async def run(rounds: int, recipients: int) -> Results:
    began = time.perf_counter()
    results = Results(recipients)
    with tempfile.TemporaryDirectory() as tmp, fake_sendgrid() as (url, api_key, fake_pid):
        directory = Path(tmp)
        # The page processes setting is the one a worker would read from the environment.
        env = {"SENDGRID_API_KEY": api_key, "PARCOURS_SENDGRID_URL": url}
        if os.environ.get("PARCOURS_PAGE_PROCESSES"):
            env["PARCOURS_PAGE_PROCESSES"] = os.environ["PARCOURS_PAGE_PROCESSES"]
        settings = Settings.load(directory / "data", env=env)
        results.load_seconds = load(settings, recipients, directory)
        results.page_processes = process_count(settings.page_processes)
        sendgrid = SendGridEmail(api_key, settings.email_from, base_url=url)
        env, _ = await start_server()
        try:
            client = await Client.connect(
                env.client.service_client.config.target_host, plugins=[ParcoursPlugin(settings)]
            )
            async with Worker(client, task_queue=settings.task_queue):
                await campaign_round(client, settings)  # warm-up, uncounted
                last = ""
                for _ in range(rounds):
                    with measured(results.baseline_cpu, fake_pid, recipients):
                        t = time.perf_counter()
                        sent = await asyncio.to_thread(bare_loop, settings, sendgrid)
                        results.baseline.append(sent / (time.perf_counter() - t))
                    await asyncio.sleep(1)  # run ids have a one-second resolution
                    with measured(results.campaign_cpu, fake_pid, recipients):
                        seconds, last, sent = await campaign_round(client, settings)
                    results.campaign.append(sent / seconds)
                    print(
                        f"baseline {results.baseline[-1]:,.0f}/s, campaign {results.campaign[-1]:,.0f}/s"
                    )
                actions, results.pages = await count_actions(client, last)
                results.actions_per_1000 = actions / (recipients / 1000)
        finally:
            await env.shutdown()
            close_engine(settings.database_url)
    results.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results.seconds = time.perf_counter() - began
    return results


def section(results: Results) -> str:
    ratios = [c / b for b, c in zip(results.baseline, results.campaign, strict=True)]
    base, camp = statistics.median(results.baseline), statistics.median(results.campaign)
    ratio = camp / base
    return f"""{SECTION}

Measured by `bench/campaigns.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC (the run took {results.seconds:.0f} s).

- Command: `{command()}` (`make bench` runs it too)
- Machine: {machine()}
- Setup: {results.recipients:,} profiles in a newsletter segment (loaded in {results.load_seconds:.0f} s), SQLite store in a temp dir; the Temporal dev server in memory; the fake SendGrid of `tests/fakes` on 127.0.0.1 in a process of its own (it parses and records every personalization, and sets what it recorded aside from its garbage collector; both sides post to it alike); the worker and the baseline share one Python process, and the worker sends pages from processes of its own. Rounds alternate after an uncounted warm-up run.

| figure | goal | median | spread (min{DASH}max) | |
|---|---|---|---|---|
| campaign recipients/s (start to report) | ≥ {RATE_GOAL:,} | {camp:,.0f} | {spread(results.campaign, 0)} | {verdict(camp >= RATE_GOAL)} |
| bare loop recipients/s (select + post) | — | {base:,.0f} | {spread(results.baseline, 0)} | |
| campaign / bare loop | ≥ {RATIO_GOAL} | {ratio:.2f} | {spread(ratios)} | {verdict(ratio >= RATIO_GOAL)} |
| Temporal actions per 1,000 recipients | ≤ {ACTIONS_GOAL:.0f} | {results.actions_per_1000:.2f} | — | {verdict(results.actions_per_1000 <= ACTIONS_GOAL)} |
| peak RSS of the process (worker, baseline) | — | {results.peak_rss_mib:.0f} MiB | — | |

{cpu_table(results)}

Actions are counted in the last run's histories (every run of its continue-as-new chain): workflow starts, signals, timers, scheduled activities and search-attribute upserts; it sent {results.pages} pages of up to {PAGE_SIZE:,} (SendGrid requests of up to 1,000). What a campaign does beyond the bare loop, per recipient: a ledger row claimed before the send and settled after it (exactly-once), consent, suppression and frequency-cap checks, and a template render (printed by plain lookups, as its text-and-lookups template allows; see docs/channels.md).
"""


def cpu_table(results: Results) -> str:
    cores = len(os.sched_getaffinity(0))

    def row(name: str, rounds: list[dict[str, float]]) -> tuple[str, float]:
        medians = [statistics.median(r[k] for r in rounds) for k in KINDS]
        total = statistics.median(sum(r.values()) for r in rounds)
        cells = " | ".join(f"{m:.1f}" for m in medians)
        return f"| {name} | {cells} | {total:.1f} |", total

    bare, bare_total = row("bare loop", results.baseline_cpu)
    camp, camp_total = row("campaign", results.campaign_cpu)
    return f"""### Where the CPU goes

CPU used in each round by the processes that do the work, per 1,000 recipients (median over rounds). This process is the worker (the Temporal SDK, the campaign workflow, page activities waiting for their processes) and, in its own rounds, the bare loop; the campaign's pages run in {results.page_processes} page processes (`PARCOURS_PAGE_PROCESSES`, one more than the cores by default).

| CPU ms per 1,000 recipients | {" | ".join(KINDS)} | all |
|---|---|---|---|---|---|
{bare}
{camp}

With all {cores} cores busy and nothing else running, that CPU would allow {cores * 1e6 / camp_total:,.0f} campaign recipients/s at most, {camp_total / bare_total:.1f} times the bare loop's CPU per recipient. The bare loop waits for each request before it sends the next, so it keeps about one core busy; a campaign keeps pages in flight on every core."""


def main() -> None:
    parser = argparse.ArgumentParser(description="Campaign throughput and Temporal actions.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--docs", type=Path, default=DOCS)
    args = parser.parse_args()
    results = asyncio.run(run(args.rounds, args.recipients))
    text = section(results)
    print(text)
    write_docs(args.docs, SECTION, text)


if __name__ == "__main__":
    main()
