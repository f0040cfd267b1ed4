"""A journey as an SVG drawing, laid out here so the journey page needs nothing from a
network (no diagram library, no CDN): nodes in layers down from the entry, edges as curves,
edges that close a loop around the right-hand side.

Every string from a definition or a caller is escaped: node ids are identifiers, but names,
summaries (event types, template ids) and the extra lines are free text.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from parcours.definitions import Journey
from parcours.mermaid import edge_label

WIDTH = 230  # a node's box
LINE = 16  # one line of text in a box
GAP_X = 40
GAP_Y = 56
MARGIN = 24
LOOP_ROOM = 90  # to the right of the widest layer, for edges going back up
ENTRY_HEIGHT = 30
MAX_CHARS = 32  # SVG text does not wrap: longer text is cut, and shown whole on hover


SLOT = 16  # the room an edge takes where it crosses a layer


@dataclass(frozen=True)
class Layout:
    """Layers of node ids, and of slots (`~source~edge~layer`, never an identifier) where an
    edge crosses a layer on its way down, so no edge is drawn through a box."""

    rows: list[list[str]]
    depth: dict[str, int]
    routes: dict[tuple[str, int], list[str]]  # (node, edge index): the slots it goes through
    loops: set[tuple[str, int]]  # edges that go back up, drawn around the right-hand side


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    height: float
    depth: int


Point = tuple[float, float]


def layout(journey: Journey) -> Layout:
    """Edges that close a loop (back to a node on the way from the entry) are set aside;
    along the others each node sits one layer below its lowest predecessor, so every other
    edge points down. Within a layer, nodes sit under their predecessors (by their mean
    position), then in the definition's order. Nodes nothing reaches (a validated journey
    has none) come last."""
    forward = _forward_edges(journey)
    depth: dict[str, int] = {}
    for node_id in _topological(journey.start, forward):
        depth.setdefault(node_id, 0)
        for _, target in forward[node_id]:
            depth[target] = max(depth.get(target, 0), depth[node_id] + 1)
    last = max(depth.values()) + 1
    for node in journey.nodes:
        depth.setdefault(node.id, last)
    parents: dict[str, list[str]] = {}
    routes: dict[tuple[str, int], list[str]] = {}
    loops: set[tuple[str, int]] = set()
    for node in journey.nodes:
        for index, (_, target) in enumerate(node.edges()):
            if depth[target] <= depth[node.id]:
                loops.add((node.id, index))
                continue
            slots = [f"~{node.id}~{index}~{d}" for d in range(depth[node.id] + 1, depth[target])]
            routes[(node.id, index)] = slots
            chain = [node.id, *slots, target]
            for above, below in itertools.pairwise(chain):
                parents.setdefault(below, []).append(above)
            depth.update({slot: depth[node.id] + 1 + i for i, slot in enumerate(slots)})
    order = {node.id: i for i, node in enumerate(journey.nodes)}
    rows: list[list[str]] = [[] for _ in range(last + 1)]
    for item in sorted(depth, key=lambda i: order.get(i, len(order))):
        rows[depth[item]].append(item)
    position: dict[str, float] = {}  # in the layers above, centred on 0

    def mean_above(item: str) -> float:
        above = [position[p] for p in parents.get(item, []) if p in position]
        return sum(above) / len(above) if above else 0.0

    for row in rows:
        row.sort(key=lambda item: (mean_above(item), order.get(item, len(order))))
        position.update({item: i - (len(row) - 1) / 2 for i, item in enumerate(row)})
    return Layout([row for row in rows if row], depth, routes, loops)


def _forward_edges(journey: Journey) -> dict[str, list[tuple[int, str]]]:
    """Every edge but those closing a loop, by a depth-first walk from the start."""
    forward: dict[str, list[tuple[int, str]]] = {node.id: [] for node in journey.nodes}
    on_path: set[str] = set()
    done: set[str] = set()

    def walk(node_id: str) -> None:
        on_path.add(node_id)
        for index, (_, target) in enumerate(journey.node(node_id).edges()):
            if target in on_path:
                continue  # a loop
            forward[node_id].append((index, target))
            if target not in done:
                walk(target)
        on_path.discard(node_id)
        done.add(node_id)

    walk(journey.start)
    return forward


def _topological(start: str, forward: dict[str, list[tuple[int, str]]]) -> list[str]:
    seen: set[str] = set()
    finished: list[str] = []

    def visit(node_id: str) -> None:
        seen.add(node_id)
        for _, target in forward[node_id]:
            if target not in seen:
                visit(target)
        finished.append(node_id)

    visit(start)
    return finished[::-1]


def journey_svg(
    journey: Journey,
    lines: Mapping[str, Sequence[str]],
    links: Mapping[str, str],
) -> str:
    """The drawing. `lines`: extra text under each node's id and summary (its counts);
    `links`: where clicking a node goes (omitted nodes are not links)."""
    plan = layout(journey)
    extra = max((len(v) for v in lines.values()), default=0)
    height = (2 + extra) * LINE + 14

    def width(item: str) -> int:
        return SLOT if item.startswith("~") else WIDTH

    def span(row: list[str]) -> int:
        return sum(map(width, row)) + GAP_X * (len(row) - 1)

    inner = max(map(span, plan.rows))
    top = MARGIN + ENTRY_HEIGHT + GAP_Y
    # Where each node's box, or each slot, starts on the left; each layer's top.
    left: dict[str, float] = {}
    for row in plan.rows:
        x = MARGIN + (inner - span(row)) / 2
        for item in row:
            left[item] = x
            x += width(item) + GAP_X
    layer_top = {item: top + plan.depth[item] * (height + GAP_Y) for item in left}
    boxes = {
        node.id: Box(left[node.id], layer_top[node.id], height, plan.depth[node.id])
        for node in journey.nodes
    }
    total_width = MARGIN * 2 + inner + LOOP_ROOM
    total_height = top + len(plan.rows) * (height + GAP_Y) - GAP_Y + MARGIN
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="journey-graph" role="img" '
        f'width="{total_width:.0f}" height="{total_height:.0f}" '
        f'viewBox="0 0 {total_width:.0f} {total_height:.0f}">',
        f"<title>{escape(journey.name or journey.id)}</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker>'
        "</defs>",
    ]
    parts.extend(_entry(journey, boxes[journey.start], inner))
    for node in journey.nodes:
        source = boxes[node.id]
        for index, (field, target) in enumerate(node.edges()):
            label = edge_label(node, field)
            if (node.id, index) in plan.loops:
                parts.append(_loop(source, boxes[target], label, MARGIN + inner))
                continue
            # Down through the slots: a vertical line across each layer it crosses.
            points = [(source.x + WIDTH / 2, source.y + height)]
            for slot in plan.routes[(node.id, index)]:
                middle = left[slot] + SLOT / 2
                points += [(middle, layer_top[slot]), (middle, layer_top[slot] + height)]
            end = boxes[target]
            points.append((end.x + WIDTH / 2, end.y))
            parts.append(_down(points, label))
    for node in journey.nodes:
        box = boxes[node.id]
        text = [node.id, node.summary(), *lines.get(node.id, ())]
        parts.append(_node(node.id, node.type, box, text, links.get(node.id)))
    parts.append("</svg>")
    return "\n".join(parts)


def _entry(journey: Journey, start: Box, inner: float) -> list[str]:
    label = "entry: " + journey.entry.describe()
    width = min(inner, max(160, 7.5 * min(len(label), MAX_CHARS * 2)))
    x = MARGIN + (inner - width) / 2
    mid = x + width / 2
    bottom = MARGIN + ENTRY_HEIGHT
    return [
        f'<g class="entry"><rect x="{x:.0f}" y="{MARGIN}" width="{width:.0f}" '
        f'height="{ENTRY_HEIGHT}" rx="{ENTRY_HEIGHT / 2:.0f}"/>'
        f'<text x="{mid:.0f}" y="{MARGIN + 20}" text-anchor="middle">'
        f"{_cut(label, MAX_CHARS * 2)}</text></g>",
        _down([(mid, bottom), (start.x + WIDTH / 2, start.y)], ""),
    ]


def _down(points: list[Point], label: str) -> str:
    """Curves between layers (leaving and arriving vertically), straight across slots."""
    d = f"M{points[0][0]:.0f},{points[0][1]:.0f}"
    for i in range(0, len(points) - 1, 2):
        (x0, y0), (x1, y1) = points[i], points[i + 1]
        bend = (y1 - y0) / 2
        d += f" C{x0:.0f},{y0 + bend:.0f} {x1:.0f},{y1 - bend:.0f} {x1:.0f},{y1:.0f}"
        if i + 2 < len(points):
            d += f" L{points[i + 2][0]:.0f},{points[i + 2][1]:.0f}"
    (x0, y0), (x1, y1) = points[0], points[1]
    # The label at the middle of the first curve (t = 1/2 on a cubic Bézier).
    return _path(d, (x0 + x1) / 2, (y0 + y1) / 2, label)


def _loop(source: Box, target: Box, label: str, right: float) -> str:
    # Back up: leave and arrive on the right-hand side, around the widest layer.
    x0, y0 = source.x + WIDTH, source.y + source.height / 2
    x1, y1 = target.x + WIDTH, target.y + target.height / 2 + 8
    out = right + LOOP_ROOM * 0.8
    d = f"M{x0:.0f},{y0:.0f} C{out:.0f},{y0:.0f} {out:.0f},{y1:.0f} {x1:.0f},{y1:.0f}"
    return _path(d, (x0 + 6 * out + x1) / 8, (y0 + y1) / 2, label)


def _path(d: str, x: float, y: float, label: str) -> str:
    shape = f'<path class="edge" d="{d}" marker-end="url(#arrow)"/>'
    if not label:
        return shape
    return (
        f'<g class="edge-label">{shape}<text x="{x + 4:.0f}" y="{y:.0f}">'
        f"{_cut(label, MAX_CHARS)}</text></g>"
    )


def _node(node_id: str, kind: str, box: Box, text: Sequence[str], link: str | None) -> str:
    rounded = box.height / 2 if kind == "end" else 6
    body = [
        f'<rect x="{box.x:.0f}" y="{box.y:.0f}" width="{WIDTH}" height="{box.height:.0f}" '
        f'rx="{rounded:.0f}"/>'
    ]
    for i, line in enumerate(text):
        css = ("id", "summary")[i] if i < 2 else "count"
        body.append(
            f'<text class="{css}" x="{box.x + WIDTH / 2:.0f}" y="{box.y + 20 + i * LINE:.0f}" '
            f'text-anchor="middle">{_cut(line, MAX_CHARS)}</text>'
        )
    group = (
        f'<g class="node node-{escape(kind)}" data-node="{escape(node_id)}">'
        f"<title>{escape(' / '.join(text))}</title>{''.join(body)}</g>"
    )
    if link is None:
        return group
    return f'<a class="node-link" href="{escape(link)}" target="_blank" rel="noopener">{group}</a>'


def _cut(text: str, limit: int) -> str:
    return escape(text if len(text) <= limit else text[: limit - 1] + "…")
