"""Temporal Schedules Parcours keeps on the cluster: created when missing, left alone when
an operator has paused or tuned them."""

from __future__ import annotations

import contextlib
from datetime import timedelta

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
    with contextlib.suppress(ScheduleAlreadyRunningError):
        await client.create_schedule(
            RECHECK_SCHEDULE_ID,
            Schedule(
                action=ScheduleActionStartWorkflow(
                    SegmentRecheckWorkflow.run,
                    id="segments:recheck",
                    task_queue=settings.task_queue,
                ),
                spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
                # A slow run must not pile up behind itself.
                policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            ),
        )


async def ensure_waiting_schedule(
    client: Client, settings: Settings, every: timedelta = WAITING_EVERY
) -> None:
    """The pass that routes events stored but left waiting (see activities/waiting.py)."""
    with contextlib.suppress(ScheduleAlreadyRunningError):
        await client.create_schedule(
            WAITING_SCHEDULE_ID,
            Schedule(
                action=ScheduleActionStartWorkflow(
                    RouteWaitingEventsWorkflow.run,
                    id="events:route-waiting",
                    task_queue=settings.task_queue,
                ),
                spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
                policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            ),
        )
