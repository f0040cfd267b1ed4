"""Activities behind journey steps that read or change the profile hub: conditions and
`update_profile`. Journeys keep ids in their history; the facts are read here, fresh."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session
from temporalio import activity

from activities.bound import BoundActivities
from activities.catalog import known_segments
from activities.db import ProfileRow, utcnow
from activities.events import get_event
from activities.segments import Transition, dependencies, facts, refresh_profile
from parcours.contracts import RulesInput, UpdateProfileInput, WaitUntilInput
from parcours.evaluate import EventFacts, ProfileFacts, epoch, matches
from parcours.timing import next_local_time
from starter.routing import route_transitions


class JourneyActivities(BoundActivities):
    @activity.defn(name="evaluate_rules")
    async def evaluate_rules(self, request: RulesInput) -> int:
        """The index of the first rule the profile matches now, or -1."""
        return await asyncio.to_thread(self._evaluate, request)

    def _evaluate(self, request: RulesInput) -> int:
        segments = known_segments(self.engine)
        types: set[str] = set()
        for rule in request.rules:
            types |= dependencies(rule, segments).events
        profile = facts(self.engine, request.profile_id, types) or ProfileFacts()
        stored = get_event(self.engine, request.event_id) if request.event_id else None
        event = EventFacts(stored.type, stored.timestamp, stored.properties) if stored else None
        now = utcnow()
        return next(
            (
                i
                for i, rule in enumerate(request.rules)
                if matches(rule, profile, now, segments, event)
            ),
            -1,
        )

    @activity.defn(name="update_profile")
    async def update_profile(self, request: UpdateProfileInput) -> None:
        transitions = await asyncio.to_thread(self._update, request)
        # Joining or leaving a segment starts or ends other journeys' entries.
        await route_transitions(activity.client(), self.engine, self.settings, transitions)

    def _update(self, request: UpdateProfileInput) -> list[Transition]:
        with Session(self.engine) as session, session.begin():
            row = session.get(ProfileRow, request.profile_id, with_for_update=True)
            if row is None:
                row = ProfileRow(id=request.profile_id, attributes={})
                session.add(row)
            attributes = {**(row.attributes or {}), **request.set}
            for key in request.unset:
                attributes.pop(key, None)
            row.attributes = attributes
        # Setting the same values again is harmless, so a retried activity is too.
        return refresh_profile(self.engine, request.profile_id, profile_changed=True)

    @activity.defn(name="resolve_wait")
    async def resolve_wait(self, request: WaitUntilInput) -> datetime | None:
        """When the wait ends, in UTC; None when there is nothing to wait for (no such
        attribute, or not a datetime)."""
        return await asyncio.to_thread(self._resolve, request)

    def _resolve(self, request: WaitUntilInput) -> datetime | None:
        with Session(self.engine) as session:
            profile = session.get(ProfileRow, request.profile_id)
            attributes = dict(profile.attributes) if profile else {}
            zone_name = profile.timezone if profile else None
        if request.until is not None:
            until = request.until
            name = (
                until.timezone
                if until.timezone != "profile"
                else (zone_name or until.fallback_timezone)
            )
            hour, minute = map(int, until.time.split(":"))
            return next_local_time(request.now, time(hour, minute), ZoneInfo(name))
        seconds = epoch(attributes.get(request.attribute or ""))
        return datetime.fromtimestamp(seconds, UTC) if seconds is not None else None
