"""Campaigns on Temporal: a Schedule per scheduled campaign (`campaign:{id}` on the UI's
Schedules page), runs started on demand, and pause / resume / cancel by signal."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

from sqlalchemy.engine import Engine
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleBackfill,
    ScheduleHandle,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from activities import catalog
from activities.campaigns import running_runs
from parcours import search_attributes as sa
from parcours.contracts import CampaignInput, CampaignReport
from parcours.definitions import Campaign
from parcours.settings import Settings
from workflows.campaign import CampaignScheduleWorkflow, CampaignWorkflow, run_workflow_id


def schedule_id(campaign_id: str) -> str:
    return f"campaign:{campaign_id}"


def _schedule(campaign: Campaign, status: str, settings: Settings) -> Schedule:
    assert campaign.schedule is not None
    return Schedule(
        action=ScheduleActionStartWorkflow(
            CampaignScheduleWorkflow.run,
            campaign.id,
            id=f"campaign-schedule:{campaign.id}",
            task_queue=settings.task_queue,
            static_summary=f"start a run of campaign {campaign.id}",
            typed_search_attributes=TypedSearchAttributes(
                [SearchAttributePair(sa.CAMPAIGN, campaign.id)]
            ),
        ),
        spec=ScheduleSpec(
            cron_expressions=[campaign.schedule.cron],
            time_zone_name=campaign.schedule.timezone,
            start_at=campaign.schedule.starts,
            end_at=campaign.schedule.ends,
        ),
        # A run still sending when the next is due is not doubled: the next one is skipped.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(
            paused=status == "paused",
            note=f"campaign {campaign.id}: {campaign.schedule.cron} {campaign.schedule.timezone}",
        ),
    )


async def sync_schedules(client: Client, engine: Engine, settings: Settings) -> list[str]:
    """Make the cluster's campaign Schedules match the applied campaigns; returns their ids."""
    ids = []
    for found, status in catalog.campaigns(engine):
        handle = client.get_schedule_handle(schedule_id(found.id))
        if found.schedule is None:
            with contextlib.suppress(RPCError):
                await handle.delete()
            continue
        wanted = _schedule(found, status, settings)
        try:
            await client.create_schedule(schedule_id(found.id), wanted)
        except ScheduleAlreadyRunningError:

            def replace(_: ScheduleUpdateInput, wanted: Schedule = wanted) -> ScheduleUpdate:
                return ScheduleUpdate(schedule=wanted)

            await handle.update(replace)
        ids.append(schedule_id(found.id))
    return ids


async def start_run(
    client: Client, engine: Engine, settings: Settings, campaign_id: str
) -> WorkflowHandle[CampaignWorkflow, CampaignReport]:
    """Start a run now, as `campaign:{id}:{now}`."""
    catalog.campaign(engine, campaign_id)  # fails with a clear error when it is not applied
    at = datetime.now(UTC)
    return await client.start_workflow(
        CampaignWorkflow.run,
        CampaignInput(campaign_id=campaign_id),
        id=run_workflow_id(campaign_id, f"{at:%Y-%m-%dT%H:%M:%SZ}"),
        task_queue=settings.task_queue,
        static_summary=f"campaign {campaign_id}, run on demand",
    )


async def backfill(client: Client, campaign_id: str, start: datetime, end: datetime) -> None:
    """Run the schedule's missed actions between `start` and `end` (an outage, say)."""
    handle: ScheduleHandle = client.get_schedule_handle(schedule_id(campaign_id))
    await handle.backfill(
        ScheduleBackfill(start_at=start, end_at=end, overlap=ScheduleOverlapPolicy.ALLOW_ALL)
    )


async def set_paused(
    client: Client, engine: Engine, settings: Settings, campaign_id: str, paused: bool
) -> list[str]:
    """Pause (or resume) the campaign: its schedule and every run still going. Returns the
    runs signalled."""
    found = catalog.set_campaign_status(engine, campaign_id, "paused" if paused else "active")
    if found.schedule is not None:
        handle = client.get_schedule_handle(schedule_id(campaign_id))
        try:
            await (handle.pause() if paused else handle.unpause())
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
    return await signal_runs(client, engine, campaign_id, "pause" if paused else "resume")


async def signal_runs(client: Client, engine: Engine, campaign_id: str, signal: str) -> list[str]:
    signalled = []
    for run_id in running_runs(engine, campaign_id):
        handle = client.get_workflow_handle(run_id)
        with contextlib.suppress(RPCError):
            if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                await handle.signal(signal)
                signalled.append(run_id)
    return signalled
