"""The `recheck_segments` activity, run by the segment re-check schedule."""

from __future__ import annotations

import asyncio

from temporalio import activity

from activities.bound import BoundActivities
from activities.segments import recheck_time_windows
from parcours.contracts import RecheckResult
from starter.routing import route_transitions


class SegmentActivities(BoundActivities):
    @activity.defn(name="recheck_segments")
    async def recheck_segments(self) -> RecheckResult:
        transitions = await asyncio.to_thread(recheck_time_windows, self.engine)
        await route_transitions(activity.client(), self.engine, self.settings, transitions)
        entered = sum(t.entered for t in transitions)
        return RecheckResult(entered=entered, exited=len(transitions) - entered)
