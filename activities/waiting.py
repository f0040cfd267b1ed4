"""The `route_waiting_events` activity, run by the waiting-events schedule.

An event is stored before it is routed, and marked routed once its segments and journeys have
heard of it. The caller of a request whose routing failed is told to retry it; one that never
does (a client that gave up, an API process killed mid-request) would leave the event stored
but never heard of by the journeys it should start. This pass routes such events late rather
than never: entries ignore an event id they have seen, so an event routed twice changes nothing.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import activity

from activities.bound import BoundActivities
from activities.db import utcnow
from activities.events import waiting_events
from parcours.contracts import WaitingRouted
from starter.ingest import route_stored, routes_and_followed
from starter.routing import Routed

# Younger events may be in the middle of their own request's routing: leave them to it.
GRACE = timedelta(minutes=1)
BATCH = 500


class WaitingEventActivities(BoundActivities):
    @activity.defn(name="route_waiting_events")
    async def route_waiting_events(self) -> WaitingRouted:
        # Events received from now on are the next pass's: this one always ends.
        received_before = utcnow() - GRACE
        routed = 0
        while True:
            events = await asyncio.to_thread(waiting_events, self.engine, received_before, BATCH)
            if not events:
                break
            routes, followed = await asyncio.to_thread(routes_and_followed, self.engine, events)
            done, failure = await route_stored(
                activity.client(),
                self.engine,
                self.settings,
                [Routed(event, duplicate=False) for event in events],
                routes,
                followed,
            )
            routed += done
            if failure is not None:
                # Those routed are marked so; Temporal retries the rest.
                raise failure
            activity.heartbeat(routed)
            if len(events) < BATCH:
                break
        if routed:
            activity.logger.info("routed %d events left waiting", routed)
        return WaitingRouted(routed=routed)
