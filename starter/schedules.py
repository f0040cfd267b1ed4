"""Temporal Schedules Parcours keeps on the cluster: created when missing, left alone when
an operator has paused or tuned them."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)
from temporalio.types import MethodAsyncNoParam

from parcours.settings import Settings
from workflows.route_waiting import RouteWaitingEventsWorkflow
from workflows.segment_recheck import SegmentRecheckWorkflow

RECHECK_SCHEDULE_ID = "parcours:segments:recheck"
RECHECK_EVERY = timedelta(minutes=15)
WAITING_SCHEDULE_ID = "parcours:events:route-waiting"
# Each pass is a workflow in the UI's list: often enough for a late journey, not so often as to
# crowd out the journeys people watch there.
WAITING_EVERY = timedelta(minutes=5)


async def ensure_recheck_schedule(
    client: Client, settings: Settings, every: timedelta = RECHECK_EVERY
) -> None:
    """The re-check of time-windowed segments (see activities/recheck.py)."""
    await _ensure(
        client, RECHECK_SCHEDULE_ID, SegmentRecheckWorkflow.run, "segments:recheck", settings, every
    )


async def ensure_waiting_schedule(
    client: Client, settings: Settings, every: timedelta = WAITING_EVERY
) -> None:
    """The pass that routes events stored but left waiting (see activities/waiting.py)."""
    await _ensure(
        client,
        WAITING_SCHEDULE_ID,
        RouteWaitingEventsWorkflow.run,
        "events:route-waiting",
        settings,
        every,
    )


async def _ensure(
    client: Client,
    schedule_id: str,
    run: MethodAsyncNoParam[Any, Any],
    workflow_id: str,
    settings: Settings,
    every: timedelta,
) -> None:
    with contextlib.suppress(ScheduleAlreadyRunningError):
        await client.create_schedule(
            schedule_id,
            Schedule(
                action=ScheduleActionStartWorkflow(
                    run, id=workflow_id, task_queue=settings.task_queue
                ),
                spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
                # A slow run must not pile up behind itself.
                policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            ),
        )
