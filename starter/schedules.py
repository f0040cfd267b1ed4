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
from workflows.segment_recheck import SegmentRecheckWorkflow

RECHECK_SCHEDULE_ID = "parcours:segments:recheck"
RECHECK_EVERY = timedelta(minutes=15)


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
