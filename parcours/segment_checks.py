"""Checks on segments beyond their shape: references exist, no cycles, rules in their place."""

from __future__ import annotations

from collections.abc import Mapping

from parcours.definitions import Segment
from parcours.rules import misplaced, references
from parcours.validation import Problem


def validate_segments(
    new: Mapping[str, Segment], known: Mapping[str, Segment]
) -> dict[str, list[Problem]]:
    """Problems per new segment id, checked against the new ones and those already published."""
    every = {**known, **new}
    problems: dict[str, list[Problem]] = {}
    for segment_id, segment in new.items():
        found = [Problem(path, message) for path, message in misplaced(segment.rule, "rule")]
        for ref in sorted(references(segment.rule)):
            if ref not in every:
                found.append(Problem("rule", f"segment {ref!r} is not defined or applied"))
        cycle = find_cycle(segment_id, every)
        if cycle:
            found.append(
                Problem("rule", "segments refer to each other in a cycle: " + " -> ".join(cycle))
            )
        if found:
            problems[segment_id] = found
    return problems


def find_cycle(start: str, segments: Mapping[str, Segment]) -> list[str] | None:
    """The reference cycle through `start`, if any, as [start, ..., start]."""

    def walk(segment_id: str, trail: list[str]) -> list[str] | None:
        segment = segments.get(segment_id)
        if segment is None:
            return None
        for ref in sorted(references(segment.rule)):
            if ref == start:
                return [*trail, ref]
            if ref not in trail:
                found = walk(ref, [*trail, ref])
                if found:
                    return found
        return None

    return walk(start, [start])
