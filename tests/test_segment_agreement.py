"""The in-memory and SQL evaluators agree on random rules, profiles and events, on both stores."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from itertools import product
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter
from sqlalchemy import insert
from sqlalchemy.engine import Engine

from activities.db import EventRow, ProfileRow
from activities.rule_sql import members_query
from parcours.definitions import Segment
from parcours.evaluate import EventFacts, ProfileFacts, matches
from parcours.rules import Rule

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
RULE: TypeAdapter[Any] = TypeAdapter(Rule)
KEYS = ["plan", "age", "vip", "seen", "city"]
EVENT_TYPES = ["order", "visit"]

words = st.text(alphabet="abcAB é-", max_size=4)
numbers = st.one_of(
    st.integers(-50, 50), st.floats(-50, 50, allow_nan=False).map(lambda x: round(x, 2))
)
datetimes = st.integers(-40 * 86400, 5 * 86400).map(
    lambda s: (NOW - timedelta(seconds=s)).isoformat().replace("+00:00", "Z")
)
scalars = st.one_of(words, numbers, st.booleans(), datetimes)
json_values = st.one_of(
    scalars, st.none(), st.lists(st.integers(0, 3), max_size=2), st.just({"a": 1})
)
durations = st.sampled_from(["1h", "2d", "7d", "30d"])


def comparisons(key_name: str, keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    def with_value(op: str) -> st.SearchStrategy[dict[str, Any]]:
        base = st.sampled_from(keys).map(lambda k: {key_name: k, "op": op})
        if op in ("exists", "not_exists"):
            return base
        if op in ("eq", "ne"):
            values: st.SearchStrategy[Any] = scalars
        elif op in ("gt", "gte", "lt", "lte"):
            values = st.one_of(numbers, words, datetimes)
        elif op in ("in", "not_in"):
            values = st.one_of(
                st.lists(words, min_size=1, max_size=3),
                st.lists(numbers, min_size=1, max_size=3),
                st.lists(st.booleans(), min_size=1, max_size=2),
            )
        elif op in ("contains", "starts_with"):
            values = words
        elif op == "between":
            values = st.one_of(
                st.lists(numbers, min_size=2, max_size=2), st.lists(words, min_size=2, max_size=2)
            ).map(sorted)
        else:
            values = durations
        return st.builds(lambda b, v: {**b, "value": v}, base, values)

    ops = [
        "eq",
        "ne",
        "gt",
        "gte",
        "lt",
        "lte",
        "in",
        "not_in",
        "contains",
        "starts_with",
        "exists",
        "not_exists",
        "between",
        "within_last",
    ]
    return st.sampled_from(ops).flatmap(with_value)


def combined(leaves: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, min_size=1, max_size=3).map(lambda rules: {"all": rules}),
            st.lists(inner, min_size=1, max_size=3).map(lambda rules: {"any": rules}),
            inner.map(lambda rule: {"not": rule}),
        ),
        max_leaves=4,
    )


counts = st.one_of(
    st.none(),
    st.sampled_from(["eq", "gt", "gte", "lt", "lte"]).flatmap(
        lambda k: st.integers(0, 3).map(lambda n: {k: n})
    ),
    st.tuples(st.integers(0, 2), st.integers(1, 4)).map(lambda b: {"gte": b[0], "lt": b[1]}),
)
event_rules = st.builds(
    lambda event, where, count, within: {
        "event": event,
        **({"where": where} if where else {}),
        **({"count": count} if count else {}),
        **({"within": within} if within else {}),
    },
    st.sampled_from(EVENT_TYPES),
    st.one_of(st.none(), combined(comparisons("property", KEYS))),
    counts,
    st.one_of(st.none(), durations),
)
leaves = st.one_of(
    comparisons("attribute", KEYS),
    event_rules,
    st.sampled_from(["email", "sms", "push"]).map(lambda c: {"consent": c}),
    st.sampled_from(["vip", "buyers"]).map(lambda s: {"segment": s}),
)
rules = combined(leaves)

SEGMENTS = {
    "vip": Segment(
        id="vip", rule=RULE.validate_python({"attribute": "vip", "op": "eq", "value": True})
    ),
    "buyers": Segment(id="buyers", rule=RULE.validate_python({"event": "order", "within": "30d"})),
}

consents = st.dictionaries(
    st.sampled_from(["email", "sms", "push"]),
    st.one_of(
        st.sampled_from(["opted_in", "opted_out"]).map(lambda s: {"status": s}), st.just("weird")
    ),
    max_size=3,
)
events = st.lists(
    st.builds(
        lambda t, s, p: EventFacts(t, NOW - timedelta(seconds=s), p),
        st.sampled_from(EVENT_TYPES),
        st.integers(-86400, 40 * 86400),
        st.dictionaries(st.sampled_from(KEYS), json_values, max_size=3),
    ),
    max_size=4,
)
profile_facts = st.builds(
    ProfileFacts,
    attributes=st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4),
    email=st.sampled_from([None, "", "a@example.com"]),
    phone=st.sampled_from([None, "+33612345678"]),
    device_tokens=st.sampled_from([(), ("tok",)]),
    consent=consents,
    events=events,
)


def sql_members(engine: Engine, rule: Any, profiles: list[ProfileFacts]) -> set[str]:
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            for i, p in enumerate(profiles):
                connection.execute(
                    insert(ProfileRow.__table__).values(
                        id=f"p{i}",
                        email=p.email,
                        phone=p.phone,
                        attributes=dict(p.attributes),
                        consent=dict(p.consent),
                        device_tokens=list(p.device_tokens),
                        created_at=NOW,
                        updated_at=NOW,
                    )
                )
                for j, e in enumerate(p.events):
                    connection.execute(
                        insert(EventRow.__table__).values(
                            id=f"e{i}-{j}",
                            profile_id=f"p{i}",
                            type=e.type,
                            timestamp=e.timestamp,
                            properties=dict(e.properties),
                            received_at=NOW,
                        )
                    )
            query = members_query(engine.dialect.name, rule, NOW, SEGMENTS)
            return set(connection.scalars(query))
        finally:
            transaction.rollback()


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rule=rules, profiles=st.lists(profile_facts, min_size=1, max_size=5))
def test_in_memory_and_sql_evaluators_agree(
    engine: Engine, rule: dict[str, Any], profiles: list[ProfileFacts]
) -> None:
    parsed = RULE.validate_python(rule)
    expected = {f"p{i}" for i, p in enumerate(profiles) if matches(parsed, p, NOW, SEGMENTS)}
    assert sql_members(engine, parsed, profiles) == expected, json.dumps(rule)


# Every JSON type, in and around the ranges below; a profile without the key comes last.
RANGE_PROBES: list[Any] = [
    30, 30.5, 25, 40.0, 41, 24.99, -1, 0, 1, 0.5, "30", "0", [30], [0], {"a": 30}, True, False,
    None,
]  # fmt: skip


def test_a_number_range_holds_numbers_only(engine: Engine) -> None:
    """A string, a boolean (1 and 0 in SQLite), an array or object holding a number in range,
    null or a missing key is outside every number range, on an attribute and on an event
    property alike; `not` of the range keeps them all."""
    profiles = [
        ProfileFacts(attributes={"age": v}, events=(EventFacts("order", NOW, {"age": v}),))
        for v in RANGE_PROBES
    ]
    profiles.append(ProfileFacts(events=(EventFacts("order", NOW, {}),)))
    everyone = {f"p{i}" for i in range(len(profiles))}
    for low, high in ([25, 40], [-1.5, 0.5], [0, 1]):
        numbers = {
            f"p{i}"
            for i, v in enumerate(RANGE_PROBES)
            if isinstance(v, int | float) and not isinstance(v, bool) and low <= v <= high
        }
        attribute = {"attribute": "age", "op": "between", "value": [low, high]}
        prop = {"property": "age", "op": "between", "value": [low, high]}
        for rule, negated in product((attribute, {"event": "order", "where": prop}), (0, 1)):
            parsed = RULE.validate_python({"not": rule} if negated else rule)
            expected = {
                f"p{i}" for i, p in enumerate(profiles) if matches(parsed, p, NOW, SEGMENTS)
            }
            assert expected == (everyone - numbers if negated else numbers)
            assert sql_members(engine, parsed, profiles) == expected, (json.dumps(rule), negated)
