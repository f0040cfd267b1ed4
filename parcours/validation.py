"""Checks a journey must pass before it is published, beyond the shape its model checks.

All problems are reported at once, each with the path of the field at fault, so a user fixes a
file in one pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from parcours.definitions import (
    WAITING_NODES,
    AnyNode,
    Campaign,
    ConditionNode,
    Journey,
    MessageNode,
    Segment,
    Template,
    WaitForEventNode,
)
from parcours.rules import misplaced, references


@dataclass(frozen=True)
class Problem:
    path: str
    message: str


def validate_campaign(
    campaign: Campaign, templates: Mapping[str, Template], segments: Mapping[str, Segment]
) -> list[Problem]:
    problems = [Problem(p, m) for p, m in misplaced(campaign.audience, "audience")]
    problems += _check_rule("audience", campaign.audience, segments, event_rules=False)
    uses = [("template", campaign.template)]
    if campaign.follow_up is not None:
        uses.append(("follow_up.template", campaign.follow_up.template))
    for path, template_id in uses:
        problems += _check_template(path, template_id, campaign.channel, templates)
    if campaign.follow_up is not None and campaign.channel != "email":
        problems.append(
            Problem("follow_up", "follow-ups read opens and clicks, which only email reports")
        )
    return problems


def _check_template(
    path: str, template_id: str, channel: str, templates: Mapping[str, Template]
) -> list[Problem]:
    template = templates.get(template_id)
    if template is None:
        return [Problem(path, f"no template {template_id!r} is defined or applied")]
    if template.channel != channel:
        return [Problem(path, f"template {template_id!r} is for {template.channel}, not {channel}")]
    return []


def validate_journey(
    journey: Journey,
    templates: Mapping[str, Template],
    segments: Mapping[str, Segment] | None = None,
) -> list[Problem]:
    problems: list[Problem] = []
    index: dict[str, int] = {}
    for i, node in enumerate(journey.nodes):
        if node.id in index:
            problems.append(
                Problem(
                    f"nodes[{i}].id",
                    f"duplicate node id {node.id!r} (first at nodes[{index[node.id]}])",
                )
            )
        else:
            index[node.id] = i

    if journey.entry.where is not None:
        problems += [
            Problem(p, m) for p, m in misplaced(journey.entry.where, "entry.where", in_where=True)
        ]
        problems += _check_rule(
            "entry.where", journey.entry.where, segments or {}, event_rules=False
        )
    segment_uses = [("entry.segment_entered", journey.entry.segment_entered)] + [
        (f"exit_when[{i}].segment_exited", e.segment_exited)
        for i, e in enumerate(journey.exit_when)
    ]
    for path, segment in segment_uses:
        if segment is not None and segment not in (segments or {}):
            problems.append(Problem(path, f"segment {segment!r} is not defined or applied"))
    if journey.audience is not None:
        problems += [Problem(p, m) for p, m in misplaced(journey.audience, "audience")]
        problems += _check_rule("audience", journey.audience, segments or {}, event_rules=False)
    if journey.start not in index:
        problems.append(
            Problem("start", f"no node has id {journey.start!r}; expected one of {sorted(index)}")
        )

    for i, node in enumerate(journey.nodes):
        for field, target in node.edges():
            if target not in index:
                problems.append(
                    Problem(
                        f"nodes[{i}].{field}",
                        f"no node has id {target!r}; expected one of {sorted(index)}",
                    )
                )
        for path, rule in _rules(node):
            problems += _check_rule(f"nodes[{i}].{path}", rule, segments or {})
        if isinstance(node, MessageNode):
            problems += _check_template(
                f"nodes[{i}].template", node.template, node.channel, templates
            )

    if journey.start in index:
        reached = _reachable(journey, index)
        for i, node in enumerate(journey.nodes):
            if node.id not in reached and index.get(node.id) == i:
                problems.append(
                    Problem(f"nodes[{i}]", f"node {node.id!r} cannot be reached from start")
                )
        problems.extend(_instant_cycles(journey, index))
    return problems


def _reachable(journey: Journey, index: Mapping[str, int]) -> set[str]:
    seen: set[str] = set()
    stack = [journey.start]
    while stack:
        node_id = stack.pop()
        if node_id in seen or node_id not in index:
            continue
        seen.add(node_id)
        stack.extend(target for _, target in journey.nodes[index[node_id]].edges())
    return seen


def _instant_cycles(journey: Journey, index: Mapping[str, int]) -> list[Problem]:
    """A cycle with no wait in it would send messages in a tight loop: refuse it."""
    # Depth-first search over the graph without its waiting nodes: any back edge is a cycle
    # that never pauses.
    waiting = {n.id for n in journey.nodes if isinstance(n, WAITING_NODES)}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    problems: list[Problem] = []

    def visit(node_id: str, trail: list[str]) -> None:
        state[node_id] = 1
        for _, target in journey.nodes[index[node_id]].edges():
            if target not in index or target in waiting:
                continue
            if state.get(target) == 1:
                loop = (
                    [*trail[trail.index(target) :], target]
                    if target in trail
                    else [node_id, target]
                )
                problems.append(
                    Problem(
                        f"nodes[{index[target]}]",
                        "cycle without a wait: " + " -> ".join(loop) + " (add a wait node to it)",
                    )
                )
            elif target not in state:
                visit(target, [*trail, target])
        state[node_id] = 2

    for node in journey.nodes:
        if node.id not in waiting and node.id not in state and index.get(node.id) is not None:
            visit(node.id, [node.id])
    return problems


def _rules(node: AnyNode) -> list[tuple[str, object]]:
    if isinstance(node, ConditionNode):
        return [(f"branches[{i}].when", b.when) for i, b in enumerate(node.branches)]
    if isinstance(node, WaitForEventNode) and node.where is not None:
        return [("where", node.where)]
    return []


def _check_rule(
    path: str, rule: object, segments: Mapping[str, Segment], event_rules: bool = True
) -> list[Problem]:
    # Node rules may read the entry (or awaited) event's properties at the top level.
    problems = (
        [
            Problem(p, m)
            for p, m in misplaced(rule, path)
            if not m.startswith("a property rule reads an event")
        ]
        if event_rules
        else []
    )
    for ref in sorted(references(rule)):
        if ref not in segments:
            problems.append(Problem(path, f"segment {ref!r} is not defined or applied"))
    return problems
