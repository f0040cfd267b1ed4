"""The in-memory evaluator: does one profile, with its events, match a rule now?

Used for streaming membership (one profile after each change). The SQL evaluator in
`activities/rule_sql.py` must give the same answer for every rule; the comparison semantics
below are the contract both implement, and a property test holds them to it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from parcours.definitions import Segment
from parcours.rules import (
    AllRule,
    AnyRule,
    AttributeRule,
    ConsentRule,
    EventRule,
    NotRule,
    PropertyRule,
    SegmentRef,
    _Comparison,
    category,
)

MISSING: Any = object()
# RFC 3339 with an offset, the only datetime form `within_last` reads, in both evaluators.
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True)
class EventFacts:
    type: str
    timestamp: datetime
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProfileFacts:
    attributes: Mapping[str, Any] = field(default_factory=dict)
    email: str | None = None
    phone: str | None = None
    device_tokens: Sequence[str] = ()
    consent: Mapping[str, Any] = field(default_factory=dict)
    events: Sequence[EventFacts] = ()


def epoch(value: Any) -> float | None:
    """Seconds since 1970 of an RFC 3339 string, or None when it is not one."""
    if not isinstance(value, str) or not DATETIME.match(value):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:  # e.g. February 30th
        return None


def compare(rule: _Comparison, actual: Any, now: datetime) -> bool:
    op, value = rule.op, rule.value
    if op == "exists":
        return actual is not MISSING and actual is not None
    if op == "not_exists":
        return actual is MISSING or actual is None
    family = category(actual)
    if family is None:
        return False
    if op == "within_last":
        seconds = epoch(actual)
        return (
            seconds is not None
            and now.timestamp() - rule.window.total_seconds() <= seconds <= now.timestamp()
        )
    if op in ("in", "not_in"):
        if category(value[0]) != family:
            return False
        found = any(actual == v for v in value)
        return found if op == "in" else not found
    if op == "between":
        return category(value[0]) == family and value[0] <= actual <= value[1]
    if category(value) != family:
        return False
    if op == "contains":
        return bool(value in actual)
    if op == "starts_with":
        return bool(actual.startswith(value))
    if op == "eq":
        return bool(actual == value)
    if op == "ne":
        return bool(actual != value)
    if family == "boolean":
        return False  # booleans have no order
    return bool(
        {
            "gt": actual > value,
            "gte": actual >= value,
            "lt": actual < value,
            "lte": actual <= value,
        }[op]
    )


def consented(facts: ProfileFacts, channel: str) -> bool:
    """Reachable on the channel: an identity for it, and not opted out."""
    identity = {
        "email": bool(facts.email),
        "sms": bool(facts.phone),
        "push": bool(facts.device_tokens),
    }[channel]
    record = facts.consent.get(channel)
    opted_out = isinstance(record, dict) and record.get("status") == "opted_out"
    return identity and not opted_out


def matches(
    rule: Any,
    facts: ProfileFacts,
    now: datetime,
    segments: Mapping[str, Segment],
    event: EventFacts | None = None,
) -> bool:
    """`event` is the event a property rule reads (inside `where`, or a journey's entry event)."""
    if isinstance(rule, AttributeRule):
        return compare(rule, facts.attributes.get(rule.attribute, MISSING), now)
    if isinstance(rule, EventRule):
        return rule.count.accepts(_count(rule, facts, now, segments))
    if isinstance(rule, PropertyRule):
        properties = event.properties if event is not None else {}
        return compare(rule, properties.get(rule.property, MISSING), now)
    if isinstance(rule, AllRule):
        return all(matches(r, facts, now, segments, event) for r in rule.all)
    if isinstance(rule, AnyRule):
        return any(matches(r, facts, now, segments, event) for r in rule.any)
    if isinstance(rule, NotRule):
        return not matches(rule.not_, facts, now, segments, event)
    if isinstance(rule, SegmentRef):
        return matches(segments[rule.segment].rule, facts, now, segments)
    if isinstance(rule, ConsentRule):
        return consented(facts, rule.consent)
    raise TypeError(f"not a rule: {rule!r}")


def _count(
    rule: EventRule, facts: ProfileFacts, now: datetime, segments: Mapping[str, Segment]
) -> int:
    """The profile's events this rule counts. A plain loop: streaming runs it for every event
    rule a new event can affect."""
    since = now - rule.within if rule.within is not None else None
    where = rule.where
    counted = 0
    for event in facts.events:
        if (
            event.type == rule.event
            and (since is None or event.timestamp >= since)
            and (where is None or matches(where, facts, now, segments, event))
        ):
            counted += 1
    return counted
