"""The in-memory evaluator: does one profile, with its events, match a rule now?

Used for streaming membership (one profile after each change). The SQL evaluator in
`activities/rule_sql.py` must give the same answer for every rule; the comparison semantics
below are the contract both implement, and a property test holds them to it.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
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


# What a rule is compiled to: given the profile at an instant, and the event a property rule
# reads (inside `where`, or a journey's entry event), does it match?
Check = Callable[["Evaluation", EventFacts | None], bool]
# A comparison compiled: given the value compared (MISSING when absent) and now in seconds since
# 1970, does it hold?
Test = Callable[[Any, float], bool]

# Values of different families never compare (see `category`): one test per family.
_FAMILY: dict[str | None, Callable[[Any], bool]] = {
    "boolean": lambda v: isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    None: lambda _v: False,  # an operand of no family (only a rule built unchecked has one)
}
_ORDER: dict[str, Callable[[Any, Any], Any]] = {
    "gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le,
}  # fmt: skip


def _test(rule: _Comparison) -> Test:
    """The comparison with its operator and operand worked out once, so that checking a value
    is a call or two (streaming checks every affected rule on every event)."""
    op, value = rule.op, rule.value
    if op == "exists":
        return lambda actual, _now: actual is not MISSING and actual is not None
    if op == "not_exists":
        return lambda actual, _now: actual is MISSING or actual is None
    if op == "within_last":
        window = rule.window.total_seconds()

        def within_last(actual: Any, now: float) -> bool:
            seconds = epoch(actual)  # None for anything but an RFC 3339 string
            return seconds is not None and now - window <= seconds <= now

        return within_last
    if op in ("in", "not_in", "between"):
        same = _FAMILY[category(value[0])]
        if op == "between":
            low, high = value
            return lambda actual, _now: same(actual) and bool(low <= actual <= high)
        values, wanted = tuple(value), op == "in"
        return lambda actual, _now: same(actual) and any(actual == v for v in values) == wanted
    same = _FAMILY[category(value)]
    if op == "contains":
        return lambda actual, _now: same(actual) and bool(value in actual)
    if op == "starts_with":
        return lambda actual, _now: same(actual) and bool(actual.startswith(value))
    if op == "eq":
        return lambda actual, _now: same(actual) and bool(actual == value)
    if op == "ne":
        return lambda actual, _now: same(actual) and bool(actual != value)
    if category(value) == "boolean":
        return lambda _actual, _now: False  # booleans have no order
    order = _ORDER[op]
    return lambda actual, _now: same(actual) and bool(order(actual, value))


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


class Evaluation:
    """One profile at one instant, as compiled rules read it: its events grouped by type when
    first needed, and each referenced segment's answer worked out once (a refresh checks
    several segments that refer to the same ones)."""

    __slots__ = ("_answers", "_by_type", "facts", "now", "now_s", "segments")

    def __init__(self, facts: ProfileFacts, now: datetime, segments: Mapping[str, Segment]):
        self.facts = facts
        self.now = now
        self.now_s = now.timestamp()
        self.segments = segments
        self._by_type: dict[str, list[EventFacts]] | None = None
        self._answers: dict[str, bool] = {}

    def events(self, event_type: str) -> Sequence[EventFacts]:
        by_type = self._by_type
        if by_type is None:
            by_type = self._by_type = {}
            for event in self.facts.events:
                by_type.setdefault(event.type, []).append(event)
        return by_type.get(event_type, ())

    def in_segment(self, segment_id: str) -> bool:
        answer = self._answers.get(segment_id)
        if answer is None:
            rule = self.segments[segment_id].rule
            answer = self._answers[segment_id] = compiled(rule)(self, None)
        return answer


def matches(
    rule: Any,
    facts: ProfileFacts,
    now: datetime,
    segments: Mapping[str, Segment],
    event: EventFacts | None = None,
) -> bool:
    """`event` is the event a property rule reads (inside `where`, or a journey's entry event)."""
    return compiled(rule)(Evaluation(facts, now, segments), event)


# Compiled rules by the id of the rule, which the entry keeps alive (so the id stays its own).
# Rules are few (the segments and the journeys' rules); the bound only guards against a
# process that keeps making new ones.
_compiled: dict[int, tuple[Any, Check]] = {}
_COMPILED_MAX = 4096


def compiled(rule: Any) -> Check:
    """The rule as a function, compiled once per rule object."""
    entry = _compiled.get(id(rule))
    if entry is not None and entry[0] is rule:
        return entry[1]
    check = _compile(rule)
    if len(_compiled) >= _COMPILED_MAX:
        _compiled.clear()
    _compiled[id(rule)] = (rule, check)
    return check


def _compile(rule: Any) -> Check:
    if isinstance(rule, AttributeRule):
        attribute, test = rule.attribute, _test(rule)
        return lambda ev, _event: test(ev.facts.attributes.get(attribute, MISSING), ev.now_s)
    if isinstance(rule, EventRule):
        return _compile_event(rule)
    if isinstance(rule, PropertyRule):
        name, test = rule.property, _test(rule)
        return lambda ev, event: test(
            (event.properties if event is not None else {}).get(name, MISSING), ev.now_s
        )
    if isinstance(rule, AllRule | AnyRule):
        checks = tuple(_compile(r) for r in (rule.all if isinstance(rule, AllRule) else rule.any))
        if isinstance(rule, AllRule):
            return lambda ev, event: all(check(ev, event) for check in checks)
        return lambda ev, event: any(check(ev, event) for check in checks)
    if isinstance(rule, NotRule):
        negated = _compile(rule.not_)
        return lambda ev, event: not negated(ev, event)
    if isinstance(rule, SegmentRef):
        # Resolved when evaluated, in the segments the evaluation is given.
        segment_id = rule.segment
        return lambda ev, _event: ev.in_segment(segment_id)
    if isinstance(rule, ConsentRule):
        channel = rule.consent
        return lambda ev, _event: consented(ev.facts, channel)
    raise TypeError(f"not a rule: {rule!r}")


# Per count bound, the count from which its answer no longer changes.
_SETTLED = {"eq": 1, "gt": 1, "gte": 0, "lt": 0, "lte": 1}


def _compile_event(rule: EventRule) -> Check:
    """Counts the profile's events of the rule's type, stopping once more could not change the
    answer (the first match for the default `gte: 1`)."""
    event_type, within, accepts = rule.event, rule.within, rule.count.accepts
    where = _compile(rule.where) if rule.where is not None else None
    settled = max(bound + _SETTLED[op] for op, bound in rule.count.bounds().items())

    def check(ev: Evaluation, _event: EventFacts | None) -> bool:
        since = ev.now - within if within is not None else None
        counted = 0
        if settled:
            for event in ev.events(event_type):
                if (since is None or event.timestamp >= since) and (
                    where is None or where(ev, event)
                ):
                    counted += 1
                    if counted == settled:
                        break
        return accepts(counted)

    return check
