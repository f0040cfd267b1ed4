"""Record the committed histories the replay test runs (`make histories`).

Run it after a deliberate change to workflow code, once the change is guarded with
`workflow.patched` so the histories recorded before it still replay (see
docs/changing-workflows.md). Each scenario walks a profile through an example journey on the
time-skipping server and writes its history to tests/histories/; others run the weekly-digest
campaign, what its schedule starts (a run, or a skip while one is still going), the segment
re-check and the pass over events left waiting (`--only NAME`, repeatable, records only those). tests/test_replay.py fails when a
workflow type registered by the plugin has no history here.

    python tests/record_histories.py --tag finish    # writes welcome-finish.json, ...

Histories already committed are never overwritten: entries recorded by older code may still be
running somewhere, so their histories must keep replaying. Give each recording a new tag.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.engine import Engine
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import catalog
from activities.apply import apply_paths
from activities.campaigns import running_runs
from activities.db import EventRow, engine_for
from activities.events import record_event
from activities.profiles import profile_update, set_profile, upsert_profiles
from activities.segments import refresh_profile
from parcours.contracts import CampaignInput, JourneyInput
from parcours.plugin import ParcoursPlugin
from parcours.records import NewEvent
from parcours.settings import Settings
from starter.binaries import temporal_test_server
from starter.campaigns import start_run as start_campaign
from starter.routing import route_transitions, send_event
from starter.search_attributes import register
from workflows.campaign import CampaignScheduleWorkflow, CampaignWorkflow
from workflows.journey import JourneyWorkflow
from workflows.route_waiting import RouteWaitingEventsWorkflow
from workflows.segment_recheck import SegmentRecheckWorkflow

ROOT = Path(__file__).parent.parent
HISTORIES = Path(__file__).parent / "histories"

# (file name, events sent in order as (type, properties, hours to wait before sending))
SCENARIOS: dict[str, list[tuple[str, dict[str, object], float]]] = {
    "welcome": [("signed_up", {}, 0)],
    "abandoned-cart-timeout": [("cart_updated", {"total": 40}, 0)],
    "abandoned-cart-vip-checkout": [
        ("cart_updated", {"total": 40}, 0),
        ("checkout_started", {"items": 0}, 2),
        ("checkout_started", {"items": 3}, 0),
    ],
    "abandoned-cart-big-cart": [("cart_updated", {"total": 500}, 0)],
    "abandoned-cart-exit": [("cart_updated", {"total": 40}, 0), ("order_completed", {}, 0.5)],
    # From extra-journeys.yaml: split, wait until a time and an attribute, a webhook whose
    # receiver is down (retried, then the journey goes on), entry by segment and exit from it.
    "tour": [("tour", {}, 0)],
    "segment-exit": [("join_pro", {}, 0), ("leave_pro", {}, 2)],
}
# A `wait_for_event` that hears events that do not match until its history is long, continues
# as new in the middle of the wait, and ends on the matching event in its second run (both runs
# are written). The entry starts with a short history limit, so it is started here directly.
WAIT_CONTINUES = "wait-continues"
WAIT_HISTORY_LIMIT = 30
# A campaign run: snapshot, pages paced by the rate limit, the follow-up, the report.
CAMPAIGN = "campaign-weekly-digest"
# Five pages of 2,000: more than the pages in flight, so every lane sends one.
CAMPAIGN_AUDIENCE = 8500
# What a campaign's Schedule starts: a run, or nothing while the previous run still goes.
SCHEDULE_STARTS = "campaign-schedule-starts"
SCHEDULE_SKIPS = "campaign-schedule-skips"
# The segment re-check schedule's workflow, with a member whose window has lapsed.
RECHECK = "segment-recheck"
RECHECK_SEGMENT = "kind: segment\nid: recent-buyers-30d\nrule: {event: order, within: 30d}\n"
# The pass over events left waiting to be routed, with one such event.
ROUTE_WAITING = "route-waiting"
SPECIAL = [WAIT_CONTINUES, CAMPAIGN, SCHEDULE_STARTS, SCHEDULE_SKIPS, RECHECK, ROUTE_WAITING]


def history_path(name: str, tag: str) -> Path:
    path = HISTORIES / (f"{name}-{tag}.json" if tag else f"{name}.json")
    if path.exists():
        raise SystemExit(f"{path} exists: record with another --tag (see the module docstring)")
    return path


async def record(tag: str, only: list[str] | None = None) -> None:
    unknown = set(only or []) - {*SCENARIOS, *SPECIAL}
    if unknown:
        raise SystemExit(f"no scenario named {', '.join(sorted(unknown))}")
    HISTORIES.mkdir(exist_ok=True)
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(temporal_test_server())
    )
    try:
        await register(env.client)
        for name, events in [*SCENARIOS.items(), *((n, []) for n in SPECIAL)]:
            if only and name not in only:
                continue
            data = Path(tempfile.mkdtemp())
            settings = Settings.load(data, env={}).model_copy(
                update={"task_queue": f"record-{uuid.uuid4()}"}
            )
            engine = engine_for(settings.database_url)
            apply_paths(engine, [ROOT / "examples", HISTORIES / "extra-journeys.yaml"])
            birthday = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
            set_profile(
                engine,
                "ada",
                email="ada@example.com",
                phone="+33612345678",
                timezone="Europe/Paris",
                attributes={"vip": "vip" in name, "birthday": birthday.isoformat()},
            )
            config = env.client.config()
            config["plugins"] = [ParcoursPlugin(settings)]
            client = Client(**config)
            async with Worker(client, task_queue=settings.task_queue):
                special = {
                    CAMPAIGN: campaign_run,
                    SCHEDULE_STARTS: schedule_starts,
                    SCHEDULE_SKIPS: schedule_skips,
                    RECHECK: recheck,
                    ROUTE_WAITING: route_waiting,
                }.get(name)
                if special is not None:
                    history = await special(env, client, engine, settings)
                    history_path(name, tag).write_text(history.to_json())
                    print(f"recorded {name}: {len(history.events)} events")
                    continue
                if name == WAIT_CONTINUES:
                    for run, history in enumerate(
                        await wait_continues(env, client, engine, settings), start=1
                    ):
                        history_path(f"{name}-run{run}", tag).write_text(history.to_json())
                        print(f"recorded {name} run {run}: {len(history.events)} events")
                    continue
                workflow_id = ""
                for kind, properties, hours in events:
                    if hours:
                        await env.sleep(timedelta(hours=hours))
                    if kind in ("join_pro", "leave_pro"):
                        plan = "pro" if kind == "join_pro" else "free"
                        set_profile(engine, "ada", attributes={"plan": plan})
                        changes = refresh_profile(engine, "ada", profile_changed=True)
                        reached = await route_transitions(client, engine, settings, changes)
                    else:
                        event = NewEvent(type=kind, profile_id="ada", properties=properties)
                        reached = (await send_event(client, engine, settings, event)).journeys
                    workflow_id = workflow_id or reached[0]
                handle = client.get_workflow_handle(workflow_id)
                while (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                    await env.sleep(timedelta(hours=1))
                history = await handle.fetch_history()
            history_path(name, tag).write_text(history.to_json())
            print(f"recorded {name}: {len(history.events)} events")
    finally:
        await env.shutdown()


async def campaign_run(
    env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> WorkflowHistory:
    """The weekly digest over a few pages, paced by its rate limit, with its follow-up."""
    upsert_profiles(
        engine,
        [
            profile_update(
                f"p{i:04d}", email=f"p{i:04d}@example.com", attributes={"newsletter": True}
            )
            for i in range(CAMPAIGN_AUDIENCE)
        ],
    )
    handle = await start_campaign(client, engine, settings, "weekly-digest")
    await handle.result()
    return await handle.fetch_history()


async def schedule_starts(
    env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> WorkflowHistory:
    """The schedule's workflow, started as the schedule would while no run is going: it
    starts the run as a child and ends."""
    handle = await client.start_workflow(
        CampaignScheduleWorkflow.run,
        "weekly-digest",
        id=f"campaign:weekly-digest:scheduled-{uuid.uuid4().hex[:8]}",
        task_queue=settings.task_queue,
    )
    run_id = await handle.result()
    assert run_id is not None
    # The run is left to itself (abandoned by its parent): see it end before the worker goes.
    run = client.get_workflow_handle(run_id)
    while (await run.describe()).status == WorkflowExecutionStatus.RUNNING:
        await env.sleep(timedelta(hours=1))
    return await handle.fetch_history()


async def schedule_skips(
    env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> WorkflowHistory:
    """The schedule's workflow while a (paused) run is still going: it starts nothing."""
    run = await client.start_workflow(
        CampaignWorkflow.run,
        CampaignInput(campaign_id="weekly-digest", paused=True),
        id="campaign:weekly-digest:still-going",
        task_queue=settings.task_queue,
    )
    while not running_runs(engine, "weekly-digest"):
        await asyncio.sleep(0.1)
    handle = await client.start_workflow(
        CampaignScheduleWorkflow.run,
        "weekly-digest",
        id=f"campaign:weekly-digest:scheduled-{uuid.uuid4().hex[:8]}",
        task_queue=settings.task_queue,
    )
    assert await handle.result() is None
    await run.signal(CampaignWorkflow.cancel)
    while (await run.describe()).status == WorkflowExecutionStatus.RUNNING:
        await asyncio.sleep(0.1)
    return await handle.fetch_history()


async def recheck(
    env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> WorkflowHistory:
    """One re-check that finds ada's 30-day window lapsed."""
    definitions = Path(tempfile.mkdtemp()) / "segment.yaml"
    definitions.write_text(RECHECK_SEGMENT)
    apply_paths(engine, [definitions])
    then = datetime.now(UTC) - timedelta(days=31)
    record_event(engine, NewEvent(type="order", profile_id="ada", timestamp=then))
    refresh_profile(engine, "ada", event_type="order", now=then)
    handle = await client.start_workflow(
        SegmentRecheckWorkflow.run,
        id=f"parcours:segments:recheck-{uuid.uuid4().hex[:8]}",
        task_queue=settings.task_queue,
    )
    result = await handle.result()
    assert (result.entered, result.exited) == (0, 1), result
    return await handle.fetch_history()


async def route_waiting(
    env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> WorkflowHistory:
    """One pass that routes an event whose request died after storing it."""
    record_event(engine, NewEvent(type="visited", profile_id="ada"), to_route=True)
    with engine.begin() as connection:
        connection.execute(
            update(EventRow).values(received_at=datetime.now(UTC) - timedelta(minutes=5))
        )
    handle = await client.start_workflow(
        RouteWaitingEventsWorkflow.run,
        id=f"events:route-waiting-{uuid.uuid4().hex[:8]}",
        task_queue=settings.task_queue,
    )
    result = await handle.result()
    assert result.routed == 1, result
    return await handle.fetch_history()


async def wait_continues(
    env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> list[WorkflowHistory]:
    found = catalog.current_journey(engine, "patient")
    assert found is not None
    first = await client.start_workflow(
        JourneyWorkflow.run,
        JourneyInput(
            journey=found[0],
            version=found[1],
            profile_id="ada",
            history_limit=WAIT_HISTORY_LIMIT,
            record_finish=True,
        ),
        id="journey:patient:ada",
        task_queue=settings.task_queue,
    )
    await env.sleep(timedelta(hours=1))
    handle = client.get_workflow_handle("journey:patient:ada")
    for n in range(10):
        event = NewEvent(type="ping", profile_id="ada", properties={"n": n})
        await send_event(client, engine, settings, event)
    while (await handle.describe()).run_id == first.first_execution_run_id:
        await asyncio.sleep(0.1)
    await send_event(
        client, engine, settings, NewEvent(type="ping", profile_id="ada", properties={"n": 99})
    )
    while (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
        await env.sleep(timedelta(hours=1))
    runs = [client.get_workflow_handle(first.id, run_id=first.first_execution_run_id), handle]
    return [await run.fetch_history() for run in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description="Record the histories the replay test runs.")
    parser.add_argument("--tag", default="", help="suffix for the new files' names")
    parser.add_argument(
        "--only",
        action="append",
        help="record only this scenario (repeatable), e.g. campaign-weekly-digest",
    )
    args = parser.parse_args()
    asyncio.run(record(args.tag, args.only))


if __name__ == "__main__":
    main()
