"""What `parcours journeys show` reports per node of one journey version: entries there now
(Temporal visibility), and entries that passed through or finished there (the finish rows the
workflow records)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from activities.finishes import NodeCounts
from parcours.definitions import Journey


@dataclass(frozen=True)
class NodeReport:
    id: str
    type: str
    summary: str
    next: list[str]
    passed: int  # finished entries that went through the node
    now: int  # running entries at the node
    ended: int  # entries that reached this `end` node
    exits: dict[str, int] = field(default_factory=dict)  # entries that left here, by reason

    def finished_here(self) -> str:
        """`12 ended`, `3 left (order_completed 2, journey stopped 1)`, or empty."""
        parts = [f"{self.ended} ended"] if self.ended else []
        if self.exits:
            reasons = ", ".join(f"{reason} {count}" for reason, count in self.exits.items())
            parts.append(f"{sum(self.exits.values())} left ({reasons})")
        return "; ".join(parts)


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
