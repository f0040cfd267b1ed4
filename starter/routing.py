"""Events in: store the event, then start or feed the journeys it concerns.

Each journey entry has a deterministic workflow id: an event either starts the entry or is
signalled to the one already running, so the same profile never has two live entries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities import catalog, metrics
from activities.catalog import EventRoutes
from activities.db import utcnow
from activities.entries import may_enter, record_entry
from activities.events import mark_routed, record_event, unrouted
from activities.goals import record_conversions
from activities.segments import (
    Transition,
    dependencies,
    facts,
    followed_event_types,
    refresh_profile,
)
from parcours import search_attributes as sa
from parcours.contracts import EventRef, JourneyInput
from parcours.definitions import Journey
from parcours.errors import InputError, NotFound
from parcours.evaluate import EventFacts, ProfileFacts, matches
from parcours.records import Event, NewEvent
from parcours.settings import Settings
from workflows.journey import JourneyWorkflow


def journey_workflow_id(journey_id: str, profile_id: str) -> str:
    return f"journey:{journey_id}:{profile_id}"


@dataclass
class Routed:
    event: Event
    duplicate: bool
    journeys: list[str] = field(default_factory=list)  # workflow ids started or signalled
    segments: list[Transition] = field(default_factory=list)  # memberships this event changed
    conversions: list[str] = field(default_factory=list)  # journeys whose goal it reached
    # Entries it started (journey id, version), counted when the event is marked routed.
    entered: list[tuple[str, int]] = field(default_factory=list)

    def entries(self) -> list[tuple[str, int, str]]:
        return [(journey, version, self.event.profile_id) for journey, version in self.entered]


@dataclass
class _Prepared:
    """What one stored event does, decided from the store; Temporal is told next."""

    routed: Routed
    entering: list[tuple[Journey, int]] = field(default_factory=list)
    listening: list[str] = field(default_factory=list)
    allowed: set[str] = field(default_factory=set)  # entering journeys the profile may enter


async def send_event(
    client: Client, engine: Engine, settings: Settings, new: NewEvent, journey_id: str | None = None
) -> Routed:
    """Record the event and route it to every live journey it enters, or only to `journey_id`,
    which must then exist and enter on this event (checked before anything is recorded).

    An event stored earlier whose routing did not complete is routed now, not reported as a
    duplicate: retrying after a failure is safe (entries ignore an event id seen before). An
    event no journey and no segment follows is stored as routed, with nothing more to do."""

    def record() -> tuple[Routed, _Prepared | None]:
        routes = catalog.routes_for_event(engine, new.type)
        if journey_id is not None:
            routes = _only(engine, routes, journey_id, new.type)
        # Segments are asked only when no journey is: most events entering one need no
        # second read to know they must be routed.
        to_route = routes.reach_journeys or new.type in followed_event_types(engine)
        event, duplicate = record_event(engine, new, to_route=to_route)
        if duplicate and unrouted(engine, [event.id]):
            duplicate, to_route = False, True
        routed = Routed(event, duplicate)
        if duplicate or not to_route:
            return routed, None
        # In the same trip off the event loop: what routing it decides from the store.
        return routed, _prepare(engine, routed, routes, segments_follow=True)

    # The store blocks: keep it off the event loop that also serves Temporal calls.
    routed, prepared = await asyncio.to_thread(record)
    metrics.event_received(routed.duplicate)
    if prepared is not None:
        await _route_prepared(client, engine, settings, prepared)
        await asyncio.to_thread(mark_routed, engine, [routed.event.id], routed.entries())
    return routed


async def route_event(
    client: Client,
    engine: Engine,
    settings: Settings,
    routed: Routed,
    routes: EventRoutes,
    segments_follow: bool = True,
) -> None:
    """Route a stored event: segments first (unless none follows its type), then the journeys
    it enters, converts, or is awaited by. The caller marks it routed afterwards, with the
    entries it started (`Routed.entered`)."""
    prepared = await asyncio.to_thread(_prepare, engine, routed, routes, segments_follow)
    await _route_prepared(client, engine, settings, prepared)


async def _route_prepared(
    client: Client, engine: Engine, settings: Settings, prepared: _Prepared
) -> None:
    """Tell Temporal what `_prepare` decided: start or feed the entries, act on segment
    changes, signal the entries listening."""
    routed = prepared.routed
    event = routed.event
    ref = EventRef(id=event.id, type=event.type, timestamp=event.timestamp)
    for journey, version in prepared.entering:
        workflow_id, started = await _enter_or_feed(
            client,
            settings,
            journey,
            version,
            ref,
            event.profile_id,
            journey.id in prepared.allowed,
        )
        if workflow_id:
            routed.journeys.append(workflow_id)
        if started:
            routed.entered.append((journey.id, version))
    routed.journeys += await route_transitions(client, engine, settings, routed.segments)
    # Entries already running that wait for this event, or leave on it.
    for listener in prepared.listening:
        workflow_id = journey_workflow_id(listener, event.profile_id)
        if await signal_entry(client, workflow_id, "event", ref):
            routed.journeys.append(workflow_id)


def _only(engine: Engine, routes: EventRoutes, journey_id: str, event_type: str) -> EventRoutes:
    entering = [(j, v) for j, v in routes.entering if j.id == journey_id]
    if not entering:
        raise InputError("journey", _not_enterable(engine, journey_id, event_type))
    listening = [j for j in routes.listening if j == journey_id]
    return EventRoutes(entering=entering, listening=listening, converts=routes.converts)


def _prepare(
    engine: Engine, routed: Routed, routes: EventRoutes, segments_follow: bool
) -> _Prepared:
    event = routed.event
    if segments_follow:
        routed.segments = refresh_profile(engine, event.profile_id, event_type=event.type)
    if routes.converts:  # most events are nobody's goal: no need to read the entries
        routed.conversions = record_conversions(engine, event)
    entering = _admitted(engine, routes.entering, event)
    started = {journey.id for journey, _ in entering}
    listening = [j for j in routes.listening if j not in started]
    allowed = may_enter(engine, [journey for journey, _ in entering], event.profile_id)
    return _Prepared(routed, entering, listening, allowed)


async def enter_journey(
    client: Client, engine: Engine, settings: Settings, journey_id: str, profile_id: str
) -> str | None:
    """Start an entry explicitly (a journey with `entry: {api: true}`), applying its audience
    and re-entry rules; returns the workflow id, or None when the rules keep the profile out."""

    def check() -> tuple[Journey, int, bool] | None:
        found = catalog.current_journey(engine, journey_id)
        if found is None:
            raise NotFound("journey", f"no journey {journey_id!r} is published")
        journey, version, status = found
        if not journey.entry.api:
            raise InputError(
                "journey",
                f"journey {journey_id!r} enters on {journey.entry.describe()}, not through the API",
            )
        if status != "live":
            raise InputError("journey", f"journey {journey_id!r} is {status}, not live")
        if not _admitted(engine, [(journey, version)], None, profile_id):
            return None
        return journey, version, bool(may_enter(engine, [journey], profile_id))

    checked = await asyncio.to_thread(check)
    if checked is None:
        return None
    journey, version, allowed = checked
    workflow_id, started = await _enter_or_feed(
        client, settings, journey, version, None, profile_id, allowed
    )
    if started:
        await asyncio.to_thread(record_entry, engine, journey.id, version, profile_id)
    return workflow_id if started else None


async def route_transitions(
    client: Client, engine: Engine, settings: Settings, transitions: Sequence[Transition]
) -> list[str]:
    """Act on segment membership changes: start the journeys entered by joining a segment,
    and tell running entries that leave on a segment exit. Returns the workflow ids reached."""
    reached: list[str] = []
    for transition in transitions:
        if transition.entered:
            entering = await asyncio.to_thread(_segment_entries, engine, transition)
            for journey, version, allowed in entering:
                workflow_id, started = await _enter_or_feed(
                    client, settings, journey, version, None, transition.profile_id, allowed
                )
                if workflow_id:
                    reached.append(workflow_id)
                if started:
                    await asyncio.to_thread(
                        record_entry, engine, journey.id, version, transition.profile_id
                    )
            continue
        exiting = await asyncio.to_thread(
            catalog.journeys_exiting_on_segment, engine, transition.segment_id
        )
        for journey_id in exiting:
            workflow_id = journey_workflow_id(journey_id, transition.profile_id)
            if await signal_entry(client, workflow_id, "segment_exited", transition.segment_id):
                reached.append(workflow_id)
    return reached


async def follow_profile_change(
    client: Callable[[], Awaitable[Client]], engine: Engine, settings: Settings, profile_id: str
) -> list[str]:
    """After a profile changed: bring its segments up to date, and start or end the journeys
    that follow them (Temporal is reached only when some journey does). Returns the workflow
    ids reached."""
    transitions = await asyncio.to_thread(refresh_profile, engine, profile_id, profile_changed=True)
    if not await asyncio.to_thread(journeys_follow, engine, transitions):
        return []
    return await route_transitions(await client(), engine, settings, transitions)


def journeys_follow(engine: Engine, transitions: Sequence[Transition]) -> bool:
    """Whether any journey enters or exits on these membership changes."""
    return any(
        catalog.live_journeys_for_segment(engine, t.segment_id)
        if t.entered
        else catalog.journeys_exiting_on_segment(engine, t.segment_id)
        for t in transitions
    )


def _segment_entries(engine: Engine, transition: Transition) -> list[tuple[Journey, int, bool]]:
    candidates = catalog.live_journeys_for_segment(engine, transition.segment_id)
    admitted = _admitted(engine, candidates, None, transition.profile_id)
    allowed = may_enter(engine, [j for j, _ in admitted], transition.profile_id)
    return [(j, v, j.id in allowed) for j, v in admitted]


def _admitted(
    engine: Engine, entering: list[tuple[Journey, int]], event: Event | None, profile_id: str = ""
) -> list[tuple[Journey, int]]:
    """The journeys whose entry `where` (on the entry event, when there is one) and
    `audience` (on the profile) pass."""
    if not any(j.entry.where or j.audience for j, _ in entering):
        return entering
    segments = catalog.known_segments(engine)
    types: set[str] = set()
    for journey, _ in entering:
        if journey.audience is not None:
            types |= dependencies(journey.audience, segments).events
    profile = facts(engine, event.profile_id if event else profile_id, types) or ProfileFacts()
    now = utcnow()
    this = EventFacts(event.type, event.timestamp, event.properties) if event else None
    return [
        (journey, version)
        for journey, version in entering
        if (
            journey.entry.where is None
            or matches(journey.entry.where, profile, now, segments, this)
        )
        and (journey.audience is None or matches(journey.audience, profile, now, segments))
    ]


async def _enter_or_feed(
    client: Client,
    settings: Settings,
    journey: Journey,
    version: int,
    ref: EventRef | None,
    profile_id: str,
    may_start: bool,
) -> tuple[str | None, bool]:
    """Start the profile's entry, or hand the event to the one already running; returns the
    workflow id reached (None when none) and whether a new entry started.

    A plain start first, and a signal only when an entry runs: a new entry then costs one
    Temporal action, where signal-with-start would cost two. When the re-entry rule forbids a
    new entry, a running one still hears the event.
    """
    workflow_id = journey_workflow_id(journey.id, profile_id)
    if not may_start:
        return (workflow_id if await _feed(client, workflow_id, ref) else None), False
    for _ in range(3):
        try:
            await client.start_workflow(
                JourneyWorkflow.run,
                JourneyInput(
                    journey=journey,
                    version=version,
                    profile_id=profile_id,
                    entry_event=ref,
                    record_finish=True,
                ),
                id=workflow_id,
                task_queue=settings.task_queue,
                # After an entry ends, the next matching event may start a new one (re_entry:
                # after_exit); while it runs, the event is only signalled to it.
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(sa.JOURNEY, journey.id),
                        SearchAttributePair(sa.PROFILE, profile_id),
                        SearchAttributePair(sa.JOURNEY_VERSION, version),
                        SearchAttributePair(sa.NODE, journey.start),
                    ]
                ),
                static_summary=f"{journey.name or journey.id} (v{version}) for {profile_id}",
            )
            metrics.journey_started(journey.id)
            return workflow_id, True
        except WorkflowAlreadyStartedError:
            pass
        if await _feed(client, workflow_id, ref):
            return workflow_id, False
        # The entry ended between the two calls: start a new one.
    raise RuntimeError(f"{workflow_id}: could not start or signal the entry")


async def _feed(client: Client, workflow_id: str, ref: EventRef | None) -> bool:
    """Hand the event to the running entry; False when no entry runs. Without an event
    (a segment entry), a running entry is left alone: it already holds the profile."""
    if ref is not None:
        return await signal_entry(client, workflow_id, "event", ref)
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        return False
    return description.status == WorkflowExecutionStatus.RUNNING


async def signal_entry(client: Client, workflow_id: str, name: str, arg: object) -> bool:
    """Signal a running entry; False when the profile is not inside (no such entry runs)."""
    try:
        await client.get_workflow_handle(workflow_id).signal(name, arg)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        return False
    return True


def _not_enterable(engine: Engine, journey_id: str, event_type: str) -> str:
    known = {j.journey_id: j for j in catalog.list_journeys(engine)}
    journey = known.get(journey_id)
    if journey is None:
        return (
            f"no journey {journey_id!r} is published; known: {', '.join(sorted(known)) or 'none'}"
        )
    if journey.status != "live":
        return f"journey {journey_id!r} is {journey.status}, not live"
    return f"journey {journey_id!r} enters on {journey.entry_event!r} events, not {event_type!r}"
