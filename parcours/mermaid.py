"""A journey as a Mermaid flowchart, for docs and pull requests."""

from __future__ import annotations

from collections.abc import Mapping

from parcours.definitions import AnyNode, Journey, SplitNode


def to_mermaid(journey: Journey, here: Mapping[str, int] | None = None) -> str:
    """`here`: how many profiles are at each node now, shown in its box when given."""
    lines = [
        "flowchart TD",
        f'    entry(["{journey.entry.describe()}"]) --> {_name(journey.start)}',
    ]
    for node in journey.nodes:
        label = f"{node.id}<br/>{node.summary()}".replace('"', "'")
        if here is not None:
            label += f"<br/>{here.get(node.id, 0)} here"
        shape = (
            ("((", "))")
            if node.type == "end"
            else ("{{", "}}")
            if node.type in ("condition", "split")
            else ("[", "]")
        )
        lines.append(f'    {_name(node.id)}{shape[0]}"{label}"{shape[1]}')
        for field, target in node.edges():
            label = edge_label(node, field)
            arrow = f"-->|{label}|" if label else "-->"
            lines.append(f"    {_name(node.id)} {arrow} {_name(target)}")
    return "\n".join(lines)


def edge_label(node: AnyNode, field: str) -> str:
    """What an edge is called on a drawing: a split's variant, a branch, or the field name."""
    if field == "next":
        return ""
    if isinstance(node, SplitNode) and field.startswith("variants["):
        return node.variants[int(field[9 : field.index("]")])].name
    if field.startswith("branches["):
        return "branch " + field[9 : field.index("]")]
    return field


def _name(node_id: str) -> str:
    # Mermaid ids: keep letters and digits only, prefixed so a node named `end` stays a node.
    return "n_" + "".join(c if c.isalnum() else "_" for c in node_id)
