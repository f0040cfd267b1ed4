"""Events in bulk: each event checked on its own, the good ones stored in one transaction, then
routed to segments and journeys with bounded concurrency.

An event is stored before it is acknowledged, and marked routed only once its journeys and
segments have heard of it. If routing fails part-way (Temporal unreachable, a timeout), the
caller is told to retry, and the retry routes exactly the events still waiting: journeys ignore
an event id they have seen, so nothing is entered or sent twice.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from sqlalchemy.engine import Engine
from temporalio.client import Client

from activities import catalog, metrics
from activities.catalog import EventRoutes
from activities.events import mark_routed, record_events, unrouted
from activities.segments import followed_event_types
from parcours.records import Event, NewEvent
from parcours.settings import Settings
from starter.routing import Routed, route_event

# Profiles routed at once: each holds a database connection and Temporal calls in flight.
ROUTING_CONCURRENCY = 16

_EVENT = TypeAdapter(NewEvent)


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str


class EventResult(BaseModel):
    index: int  # position in the batch
    id: str | None = None
    status: Literal["accepted", "duplicate", "rejected"]
    errors: list[FieldError] = Field(default_factory=list)


class Ingested(BaseModel):
    accepted: int
    duplicates: int
    rejected: int = 0
    journeys: list[str] = Field(default_factory=list)  # workflow ids started or signalled
    results: list[EventResult] = Field(default_factory=list)


class RoutingFailed(Exception):
    """Events were stored but not all routed; retrying the same ids routes the rest."""

    def __init__(self, stored: int, waiting: int, cause: BaseException) -> None:
        super().__init__(f"{stored} events stored, {waiting} not yet routed: {cause}")
        self.cause = cause


def check_events(raw: Sequence[Any]) -> tuple[list[NewEvent], Ingested]:
    """Validate each event on its own: the good ones, and a result for every event (the good
    ones provisionally accepted)."""
    good: list[NewEvent] = []
    results: list[EventResult] = []
    for index, item in enumerate(raw):
        try:
            event = _EVENT.validate_python(item)
        except ValidationError as exc:
            errors = [
                FieldError(loc=["events", index, *e["loc"]], msg=e["msg"]) for e in exc.errors()
            ]
            given = item.get("id") if isinstance(item, dict) else None
            results.append(
                EventResult(
                    index=index,
                    id=given if isinstance(given, str) else None,
                    status="rejected",
                    errors=errors,
                )
            )
            continue
        good.append(event)
        results.append(EventResult(index=index, id=event.id, status="accepted"))
    rejected = len(raw) - len(good)
    return good, Ingested(accepted=len(good), duplicates=0, rejected=rejected, results=results)


def settle(report: Ingested, outcome: Sequence[Routed]) -> Ingested:
    """Fill the report of `check_events` with what storing and routing the good events did."""
    taken = iter(outcome)
    for result in report.results:
        if result.status != "rejected":
            routed = next(taken)
            result.id = routed.event.id
            result.status = "duplicate" if routed.duplicate else "accepted"
    report.duplicates = sum(r.duplicate for r in outcome)
    report.accepted = len(outcome) - report.duplicates
    report.journeys = [j for r in outcome for j in r.journeys]
    return report


class EventWriter:
    """Group commit: the events of every request waiting to be stored go in one transaction.

    Concurrent requests would otherwise each open a write transaction and queue for the
    database's write lock (SQLite has one writer; PostgreSQL contends on the events index).
    One writer at a time, taking everything that queued meanwhile, makes each commit carry
    many requests."""

    def __init__(self, engine: Engine, max_events: int = 5_000) -> None:
        self.engine = engine
        self.max_events = max_events  # per transaction
        self._queue: list[tuple[Sequence[NewEvent], list[bool], asyncio.Future[Any]]] = []
        self._writing = False

    async def write(
        self, events: Sequence[NewEvent], to_route: list[bool]
    ) -> list[tuple[Event, bool]]:
        done: asyncio.Future[list[tuple[Event, bool]]] = asyncio.get_running_loop().create_future()
        self._queue.append((events, to_route, done))
        if not self._writing:
            self._writing = True
            asyncio.get_running_loop().create_task(self._drain())
        return await done

    async def _drain(self) -> None:
        try:
            while self._queue:
                taken: list[tuple[Sequence[NewEvent], list[bool], asyncio.Future[Any]]] = []
                size = 0
                while self._queue and (
                    not taken or size + len(self._queue[0][0]) <= self.max_events
                ):
                    item = self._queue.pop(0)
                    taken.append(item)
                    size += len(item[0])
                events = [e for batch, _, _ in taken for e in batch]
                flags = [f for _, batch_flags, _ in taken for f in batch_flags]
                try:
                    stored = await asyncio.to_thread(record_events, self.engine, events, flags)
                except Exception as exc:  # each request answers for itself
                    for _, _, done in taken:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                start = 0
                for batch, _, done in taken:
                    if not done.done():  # its request may have given up (timeout)
                        done.set_result(stored[start : start + len(batch)])
                    start += len(batch)
        finally:
            self._writing = False


async def ingest(
    client: Callable[[], Awaitable[Client]],
    engine: Engine,
    settings: Settings,
    events: Sequence[NewEvent],
    writer: EventWriter | None = None,
) -> list[Routed]:
    """Store the events (through `writer` when given), then route them. Returns each event's
    outcome, in order. Raises RoutingFailed when some stored events could not be routed."""

    routes, followed = await asyncio.to_thread(routes_and_followed, engine, events)

    def needs_routing(event_type: str) -> bool:
        return event_type in followed or routes[event_type].reach_journeys

    flags = [needs_routing(e.type) for e in events]
    if writer is not None:
        stored = await writer.write(events, flags)
    else:
        stored = await asyncio.to_thread(record_events, engine, events, flags)
    # A retried id is routed as it was stored, whatever type the retry carries.
    missing = {e.type for e, _ in stored} - routes.keys()
    if missing:
        routes |= await asyncio.to_thread(catalog.routes_for_events, engine, missing)
    retried = [e.id for e, dup in stored if dup and needs_routing(e.type)]
    # A duplicate still waiting to be routed is the retry of a batch that failed: route it.
    waiting = await asyncio.to_thread(unrouted, engine, retried) if retried else set()
    outcome: list[Routed] = []
    seen: set[str] = set()
    for event, duplicate in stored:
        # Of an id repeated in one batch, only the first occurrence counts.
        again = event.id in waiting and event.id not in seen
        outcome.append(Routed(event, duplicate and not again))
        seen.add(event.id)
    for routed in outcome:
        metrics.event_received(routed.duplicate)
    pending = [r for r in outcome if not r.duplicate and needs_routing(r.event.type)]
    if not pending:
        return outcome
    done, failure = await route_stored(await client(), engine, settings, pending, routes, followed)
    if failure is not None:
        raise RoutingFailed(len(outcome), len(pending) - done, failure)
    return outcome


def routes_and_followed(
    engine: Engine, events: Sequence[NewEvent | Event]
) -> tuple[dict[str, EventRoutes], frozenset[str]]:
    """What the events' types mean to the journeys, and the types some segment follows: what
    routing them needs, in one trip to the store."""
    types = {event.type for event in events}
    return catalog.routes_for_events(engine, types), followed_event_types(engine)


async def route_stored(
    temporal: Client,
    engine: Engine,
    settings: Settings,
    pending: Sequence[Routed],
    routes: dict[str, EventRoutes],
    followed: frozenset[str],
) -> tuple[int, BaseException | None]:
    """Route stored events, `ROUTING_CONCURRENCY` profiles at once, and mark those routed
    (with the entries they started). Returns how many were routed, and the first failure."""
    by_profile: dict[str, list[Routed]] = defaultdict(list)
    for routed in pending:
        by_profile[routed.event.profile_id].append(routed)
    gate = asyncio.Semaphore(ROUTING_CONCURRENCY)
    done: list[str] = []

    async def route_profile(items: list[Routed]) -> None:
        async with gate:
            # One profile's events in their order: segments and entries see them as they came.
            for routed in sorted(items, key=lambda r: r.event.timestamp):
                event = routed.event
                segments_follow = event.type in followed
                await route_event(
                    temporal, engine, settings, routed, routes[event.type], segments_follow
                )
                done.append(event.id)

    results = await asyncio.gather(
        *(route_profile(items) for items in by_profile.values()), return_exceptions=True
    )
    finished = set(done)
    entries = [e for r in pending if r.event.id in finished for e in r.entries()]
    await asyncio.to_thread(mark_routed, engine, done, entries)
    return len(done), next((r for r in results if isinstance(r, BaseException)), None)
