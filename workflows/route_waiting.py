"""The periodic pass over events stored but never routed, run by a Temporal Schedule.

A request whose routing failed is retried by its caller; a schedule, not a home-made loop,
makes sure an event whose caller never came back still reaches its journeys.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from parcours.contracts import WaitingRouted


@workflow.defn(name="RouteWaitingEventsWorkflow")
class RouteWaitingEventsWorkflow:
    @workflow.run
    async def run(self) -> WaitingRouted:
        result: WaitingRouted = await workflow.execute_activity(
            "route_waiting_events",
            result_type=WaitingRouted,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(minutes=2),
            # Temporal down again: the next scheduled pass tries, not a pile of retries.
            retry_policy=RetryPolicy(maximum_attempts=3),
            summary="route events left waiting",
        )
        workflow.set_current_details(f"{result.routed} events routed")
        return result
