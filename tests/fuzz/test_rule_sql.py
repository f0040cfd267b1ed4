"""No segment rule can inject SQL: values full of SQL metacharacters are bound as parameters
and match literally, on SQLite and PostgreSQL, exactly as the in-memory evaluator says."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from parcours.evaluate import ProfileFacts, matches
from parcours.rules import Rule
from tests.fuzz.conftest import FUZZ
from tests.test_segment_agreement import NOW, SEGMENTS, sql_members

RULE: TypeAdapter[Any] = TypeAdapter(Rule)

# Everything SQL (or LIKE, or a JSON path) gives a meaning to, and some plain letters.
METACHARACTERS = [
    "'", '"', ";", "--", "/*", "*/", "%", "_", "\\", "\\%", "\\_", "[", "]", "^", "$", ".", "*",
    "?", "$.", "||", "' OR '1'='1", "'; DROP TABLE profiles; --", "\"; DROP TABLE events; --",
    "a", "b", "A", "é", " ", "\t", "\n", "0", "1", "NULL", "true", "{}", "[]", "\\u0027",
]  # fmt: skip
texts = st.lists(st.sampled_from(METACHARACTERS), max_size=5).map("".join)
KEYS = ["plan", "city"]


def profile(values: dict[str, str]) -> ProfileFacts:
    return ProfileFacts(
        attributes=values, email=None, phone=None, device_tokens=(), consent={}, events=()
    )


rules = st.builds(
    lambda key, op, value: {"attribute": key, "op": op, "value": value},
    st.sampled_from(KEYS),
    st.sampled_from(["eq", "ne", "contains", "starts_with", "gt", "lte", "in"]),
    texts,
).map(lambda r: {**r, "value": [r["value"]]} if r["op"] == "in" else r)


@FUZZ
@given(
    rule=rules,
    values=st.lists(st.dictionaries(st.sampled_from(KEYS), texts), min_size=1, max_size=4),
)
def test_metacharacters_are_bound_and_match_literally(
    engine: Engine, rule: dict[str, Any], values: list[dict[str, str]]
) -> None:
    parsed = RULE.validate_python(rule)
    profiles = [profile(v) for v in values]
    expected = {f"p{i}" for i, p in enumerate(profiles) if matches(parsed, p, NOW, SEGMENTS)}
    assert sql_members(engine, parsed, profiles) == expected, json.dumps(rule)
    # And the statement changed nothing it was not meant to.
    assert {"profiles", "events"} <= set(inspect(engine).get_table_names())


@pytest.mark.parametrize(
    "value",
    ["%", "_", "a%", "%a", "a_c", "\\", "\\%", "'", "''", "'; DROP TABLE profiles; --"],
)
def test_like_wildcards_are_literal(engine: Engine, value: str) -> None:
    # `abc` would match `a_c` or `%` read as LIKE patterns; only the literal value matches.
    profiles = [profile({"plan": "abc"}), profile({"plan": value}), profile({"plan": f"x{value}y"})]
    for op, members in (("eq", {"p1"}), ("starts_with", {"p1"}), ("contains", {"p1", "p2"})):
        rule = RULE.validate_python({"attribute": "plan", "op": op, "value": value})
        assert sql_members(engine, rule, profiles) == members, (op, value)


@pytest.mark.parametrize("where", ["value", "in", "between"])
def test_a_nul_character_in_a_rule_value_is_rejected_by_name(where: str) -> None:
    rule: dict[str, Any] = {
        "value": {"attribute": "plan", "op": "eq", "value": "a\x00b"},
        "in": {"attribute": "plan", "op": "in", "value": ["a", "a\x00b"]},
        "between": {"attribute": "plan", "op": "between", "value": ["a", "a\x00b"]},
    }[where]
    with pytest.raises(ValidationError) as rejected:
        RULE.validate_python(rule)
    assert "NUL" in str(rejected.value) and "value" in str(rejected.value)
