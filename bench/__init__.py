"""Benchmarks (run them with `make bench`), and the baseline workflow they compare against.

The baseline lives here rather than in bench/journeys.py because Temporal's workflow sandbox
re-imports a workflow's module for every run: a module this small costs the baseline what
workflows/journey.py costs a journey, while the benchmark script would cost it far more.
Run directly (`make bench` runs every bench/*.py), this file does nothing.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

BASELINE_QUEUE = "bench-baseline"


@activity.defn(name="bench_touch")
async def touch(profile_id: str) -> str:
    return profile_id


@workflow.defn(name="BenchBaseline")
class BaselineWorkflow:
    """Signal-with-start, one trivial activity, done: what any such workflow costs."""

    @workflow.run
    async def run(self, profile_id: str) -> str:
        return await workflow.execute_activity(
            touch, profile_id, start_to_close_timeout=timedelta(seconds=60)
        )

    @workflow.signal
    def event(self, event_id: str) -> None:
        # Like the journey, the entry event arrives as the start signal and needs no handling.
        pass
