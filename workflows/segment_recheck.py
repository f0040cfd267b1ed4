"""The periodic re-check of time-windowed segments, run by a Temporal Schedule.

Memberships can change with no new event (a last purchase leaving a "within 30d" window);
a schedule, not a home-made loop, makes sure someone looks.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from parcours.contracts import RecheckResult


@workflow.defn(name="SegmentRecheckWorkflow")
class SegmentRecheckWorkflow:
    @workflow.run
    async def run(self) -> RecheckResult:
        result: RecheckResult = await workflow.execute_activity(
            "recheck_segments",
            result_type=RecheckResult,
            # Batch evaluation of every time-windowed segment: minutes on a large hub.
            start_to_close_timeout=timedelta(minutes=30),
            summary="recheck time-windowed segments",
        )
        workflow.set_current_details(f"{result.entered} entered, {result.exited} exited")
        return result
