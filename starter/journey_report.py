"""What `parcours journeys show`, `GET /v1/journeys/{id}` and the journey page report about one
journey version: its definition and status, per node the entries there now (Temporal
visibility) and those that passed through or finished there (the finish rows the workflow
records), and its conversions. One function computes it for all three."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from sqlalchemy.engine import Engine
from temporalio.client import Client

from activities.finishes import NodeCounts
from parcours.definitions import Identifier, Journey
from starter.lifecycle import entries_now


class UnknownJourney(ValueError):
    """The journey, or the version asked for, was never published."""


class NodeReport(BaseModel):
    id: str
    type: str
    summary: str = Field(description="what the node does, e.g. `wait 1h`")
    next: list[str]
    passed: int = Field(description="finished entries that went through the node")
    now: int = Field(description="running entries at the node")
    ended: int = Field(description="entries that reached this `end` node")
    exits: dict[str, int] = Field(
        default_factory=dict, description="entries that left the journey here, by reason"
    )

    def finished_here(self) -> str:
        """`12 ended`, `3 left (order_completed 2, journey stopped 1)`, or empty."""
        parts = [f"{self.ended} ended"] if self.ended else []
        if self.exits:
            reasons = ", ".join(f"{reason} {count}" for reason, count in self.exits.items())
            parts.append(f"{sum(self.exits.values())} left ({reasons})")
        return "; ".join(parts)


class VersionCounts(BaseModel):
    now: int = Field(description="running entries on this version")
    finished: int = Field(description="entries on this version that have finished")


class Conversions(BaseModel):
    conversions: int
    variants: dict[str, dict[str, int]] = Field(
        description="per split node, the conversions of each variant"
    )


class JourneyReport(BaseModel):
    id: str
    version: int = Field(description="the version reported on")
    current_version: int
    status: str = Field(description="the journey's: live, paused, stopped or draft")
    definition: Journey = Field(description="the version reported on, as published")
    nodes: list[NodeReport] = Field(description="one per node, in the definition's order")
    versions: dict[int, VersionCounts] = Field(description="entries per version")
    conversions: dict[int, Conversions] = Field(description="goal conversions per version")


def node_reports(
    journey: Journey, now: Mapping[str, int], finished: NodeCounts | None
) -> list[NodeReport]:
    """One row per node of this version, in the order the definition lists them."""
    finished = finished or NodeCounts()
    return [
        NodeReport(
            id=node.id,
            type=node.type,
            summary=node.summary(),
            next=[target for _, target in node.edges()],
            passed=finished.passed[node.id],
            now=now.get(node.id, 0),
            ended=finished.ended[node.id],
            exits=dict(Counter(finished.exits.get(node.id, {})).most_common()),
        )
        for node in journey.nodes
    ]


async def journey_report(
    engine: Engine,
    client: Callable[[], Awaitable[Client]],
    journey_id: str,
    version: int | None = None,
) -> JourneyReport:
    """The report on `version` (default: the current one); `UnknownJourney` when there is
    none. Entries there now come from Temporal's visibility store, the rest from ours;
    `client` is called only for a journey that exists, so an unknown one needs no Temporal."""
    stored = await asyncio.to_thread(_stored, engine, journey_id, version)
    everywhere = await entries_now(await client(), journey_id)
    here = {node: count for (v, node), count in everywhere.items() if v == stored.version}
    finished = stored.finished
    versions = sorted({v for v, _ in everywhere} | set(finished) | {stored.version})
    return JourneyReport(
        id=journey_id,
        version=stored.version,
        current_version=stored.current,
        status=stored.status,
        definition=stored.journey,
        nodes=node_reports(stored.journey, here, finished.get(stored.version)),
        versions={
            v: VersionCounts(
                now=sum(c for (w, _), c in everywhere.items() if w == v),
                finished=finished[v].finished if v in finished else 0,
            )
            for v in versions
        },
        conversions={v: Conversions.model_validate(c) for v, c in stored.conversions.items()},
    )


@dataclass(frozen=True)
class _Stored:
    journey: Journey
    version: int
    current: int
    status: str
    finished: dict[int, NodeCounts]
    conversions: dict[int, dict[str, object]]


def _stored(engine: Engine, journey_id: str, version: int | None) -> _Stored:
    from activities.catalog import current_journey, journey_version
    from activities.finishes import node_counts
    from activities.goals import conversion_counts

    # An id that is no identifier was never published (and may hold what a database
    # refuses, like NUL).
    found = current_journey(engine, journey_id) if _is_identifier(journey_id) else None
    if found is None:
        raise UnknownJourney(f"no journey {journey_id!r} is published")
    journey, current, status = found
    shown = current if version is None else version
    if shown != current:
        older = journey_version(engine, journey_id, shown)
        if older is None:
            raise UnknownJourney(f"journey {journey_id!r} has no version {shown}")
        journey = older
    return _Stored(
        journey=journey,
        version=shown,
        current=current,
        status=status,
        finished=node_counts(engine, journey_id),
        conversions=conversion_counts(engine, journey_id),
    )


_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)


def _is_identifier(text: str) -> bool:
    try:
        _IDENTIFIER.validate_python(text)
    except ValidationError:
        return False
    return True
