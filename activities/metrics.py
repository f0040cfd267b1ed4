"""Parcours' Prometheus metrics: defined here once, counted where each thing happens.

Every process counts into `prometheus_client`'s default registry; the API serves it at
`GET /metrics` and the worker on `PARCOURS_WORKER_METRICS_ADDRESS` (docs/observability.md).
A counter is per process, so a figure for the whole system is a sum across processes: events
and journey starts are counted by whoever routes them (API, CLI, or the worker when a segment
recheck starts journeys), sends by the worker, provider callbacks by the API.

Nothing here is imported by workflow code: counting is a side effect, done in activities and
in the starter, never replayed.
"""

from __future__ import annotations

import functools
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

from activities.ledger import FINAL

# `*_created` samples (each series' creation time) double what a scrape carries for little use.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the library

EVENTS_RECEIVED = Counter(
    "parcours_events_received",
    "Events received for storing and routing, by result: accepted (new) or duplicate "
    "(an event id already stored, so nothing was done).",
    ["result"],
)
JOURNEYS_STARTED = Counter(
    "parcours_journeys_started",
    "Journey entries started (one workflow each), by journey id.",
    ["journey"],
)
DELIVERIES = Counter(
    "parcours_deliveries",
    "Deliveries that reached a settled status, by channel and status. The worker counts "
    "sent, failed and suppressed; the API counts what provider callbacks report later "
    "(delivered, opened, clicked, bounced, failed).",
    ["channel", "status"],
)
PROVIDER_SECONDS = Histogram(
    "parcours_provider_request_seconds",
    "Time spent in one provider request, by provider (sendgrid, twilio, push), operation "
    "(send, send_bulk, lookup) and outcome (ok, error).",
    ["provider", "operation", "outcome"],
    # Provider calls time out after 10s by default (PARCOURS settings): the last buckets
    # show calls running into that limit.
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
INGEST_QUEUE = Gauge(
    "parcours_ingest_queue_depth",
    "Events the API has received and not yet finished storing and routing.",
)

F = TypeVar("F", bound=Callable[..., Any])


def event_received(duplicate: bool) -> None:
    EVENTS_RECEIVED.labels("duplicate" if duplicate else "accepted").inc()


def journey_started(journey_id: str) -> None:
    JOURNEYS_STARTED.labels(journey_id).inc()


# What a child process counts for its worker (activities/child_processes.py): kept here as
# (metric, labels, amount) and replayed by the worker, whose registry is the one scraped.
Counted = tuple[str, tuple[str, ...], float]
_DEFERRED: list[Counted] | None = None
_BY_NAME: dict[str, Counter | Histogram] = {"deliveries": DELIVERIES, "provider": PROVIDER_SECONDS}


def _count(name: str, labels: tuple[str, ...], amount: float) -> None:
    if _DEFERRED is not None:
        _DEFERRED.append((name, labels, amount))
        return
    metric = _BY_NAME[name].labels(*labels)
    if isinstance(metric, Histogram):
        metric.observe(amount)
    else:
        metric.inc(amount)


def defer() -> None:
    """From now on, keep this process's counts for `take_deferred` instead of counting them."""
    global _DEFERRED
    _DEFERRED = []


def take_deferred() -> list[Counted]:
    """The counts kept since the last call (none unless `defer` was called)."""
    if _DEFERRED is None:
        return []
    taken = _DEFERRED[:]
    _DEFERRED.clear()
    return taken


def replay(counts: Iterable[Counted]) -> None:
    for name, labels, amount in counts:
        _count(name, labels, amount)


def deliveries_settled(channel: str, statuses: Iterable[str]) -> None:
    """Count the settled ones among these statuses, written to the ledger just before. A
    message held by quiet hours (`queued`) counts once it is sent, not each time it waits."""
    # Counted per status, not per row: a campaign page settles a thousand at once.
    for status, count in Tally(statuses).items():
        if status in FINAL:
            _count("deliveries", (channel, status), count)


@contextmanager
def ingesting(events: int) -> Iterator[None]:
    INGEST_QUEUE.inc(events)
    try:
        yield
    finally:
        INGEST_QUEUE.dec(events)


def provider_request(operation: str) -> Callable[[F], F]:
    """Time a channel method that calls its provider, labelled with the channel's `provider`."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            outcome = "error"
            try:
                result = method(self, *args, **kwargs)
                outcome = "ok"
                return result
            finally:
                _count(
                    "provider", (self.provider, operation, outcome), time.perf_counter() - started
                )

        return timed  # type: ignore[return-value]

    return decorate
