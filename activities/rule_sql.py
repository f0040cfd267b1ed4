"""The batch evaluator: a rule compiled to a SQLAlchemy expression over the profiles table.

Every user value travels as a bound parameter and every JSON key is validated by the rule
models, so no user text ever becomes SQL. Semantics follow `parcours.evaluate` exactly (types
compare only with their own family, a missing value compares false); PostgreSQL and SQLite
differ in how a JSON value is read, which `_SqliteField` and `_PostgresField` hide.

Speed is the other half: a segment is computed for millions of profiles, and its SQL should
cost what one would write by hand for the same rule. So each JSON key is read as few times as
the store allows, a type test is added only where a value of another type could otherwise
pass, comparisons are left to SQL's three-valued logic (NULL, "missing", is false wherever a
row is kept; only `not` needs a definite answer, and gets it by `IS NOT TRUE` only when its
operand can be NULL, so `NOT EXISTS` stays an anti-join), and counted events are grouped once
rather than counted per profile where the store plans that better.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    String,
    and_,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB, JSONPATH
from sqlalchemy.sql.elements import ColumnElement

from activities.db import EventRow, ProfileRow
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

profiles = ProfileRow.__table__
events = EventRow.__table__
Condition = ColumnElement[bool]

_SQLITE_TYPES = {"number": ("integer", "real"), "string": ("text",), "boolean": ("true", "false")}


def _orders(actual: Any, op: str, value: Any) -> Condition:
    return {  # type: ignore[no-any-return]
        "gt": actual > value,
        "gte": actual >= value,
        "lt": actual < value,
        "lte": actual <= value,
    }[op]


def _booleans(op: str, value: Any) -> list[bool]:
    """The booleans an eq, ne, in or not_in rule over booleans accepts."""
    wanted = set(value) if op in ("in", "not_in") else {value}
    if op in ("ne", "not_in"):
        wanted = {True, False} - wanted
    return sorted(wanted)


class _SqliteField:
    """One key of a JSON column in SQLite. `json_extract` gives SQL values: text for strings
    (and for arrays and objects, as JSON text), integer or real for numbers, 1 and 0 for
    booleans, NULL for null or a missing key. Numbers sort before all text, so where the
    operand rules out 0, 1 and JSON text, the value alone decides and no type test is needed."""

    def __init__(self, column: Any, key: str) -> None:
        # Keys are letters, digits, `_` and `-` (the rule models check it): a plain path label,
        # which SQLite reads a little faster than a quoted one. Rendered in the statement (by
        # SQLAlchemy, quoted as a string literal) rather than bound: SQLite parses a constant
        # path once per statement but a bound one on every row, which cost a quarter of a
        # one-key rule's time.
        path = literal(f"$.{key}", String, literal_execute=True)
        self.value = func.json_extract(column, path)
        self.type = func.json_type(column, path)

    def present(self) -> Condition:
        return func.coalesce(self.type, "null") != "null"

    def of(self, family: str) -> Condition:
        types = _SQLITE_TYPES[family]
        return self.type == types[0] if len(types) == 1 else self.type.in_(types)

    def text(self) -> Any:
        return self.value

    def compare(self, op: str, value: Any, family: str) -> Condition:
        """eq ne in not_in gt gte lt lte between, over numbers, strings or booleans."""
        if family == "boolean":
            accepted = _booleans(op, value) if op in ("eq", "ne", "in", "not_in") else []
            if not accepted:
                return false()
            names = ["true" if b else "false" for b in accepted]
            return self.type == names[0] if len(names) == 1 else self.type.in_(names)
        values = value if op in ("in", "not_in", "between") else [value]
        condition: Condition
        if op in ("eq", "in"):
            condition = self.value == value if op == "eq" else self.value.in_(value)
            if family == "number":
                exact = not any(v in (0, 1) for v in values)  # true is 1, false is 0
            else:
                exact = not any(v.startswith(("[", "{")) for v in values)  # JSON text
            return condition if exact else and_(self.of(family), condition)
        if op in ("ne", "not_in"):
            condition = self.value != value if op == "ne" else self.value.not_in(value)
            return and_(self.of(family), condition)
        if op == "between":
            condition = self.value.between(*value)
            low, high = value
            exact = family == "number" and not (low <= 0 <= high or low <= 1 <= high)
            return condition if exact else and_(self.of(family), condition)
        if family == "number" and abs(value) < 2**53:
            # As a range, read once: every number sorts before every text, so a range with
            # finite or infinite ends holds no text. A strict bound moves to the next float,
            # which no float, and no integer this small, lies strictly between.
            low, high = -math.inf, math.inf
            if op in ("gt", "gte"):
                low = math.nextafter(value, math.inf) if op == "gt" else value
            else:
                high = math.nextafter(value, -math.inf) if op == "lt" else value
            return self.compare("between", [low, high], family)
        return and_(self.of(family), _orders(self.value, op, value))


class _PostgresField:
    """One key of a jsonb column in PostgreSQL, read once per comparison where possible.

    Strings are compared as `->>` text, which is a string's own text but also a number's,
    a boolean's or a container's JSON text: only an operand that could be such a text needs
    the type test. String order is by bytes, as in Python, whatever the database's collation.
    Numbers and booleans are compared as jsonb: equal only to a value of their own type,
    numbers as exact numerics (as Python compares ints and floats, and cheaper than any cast),
    and types sorted apart (strings < numbers < booleans < containers). A number range is a
    strict-mode jsonpath filter instead, `column @? 'strict $."key" ? (@ >= low && @ <= high)'`:
    one read of the key for both ends, where `->` BETWEEN reads and copies it twice and
    compares jsonb twice (measured about a fifth less per row on a million profiles). In a
    jsonpath a number compares only with a number (anything else is "unknown", so false), and
    strict mode does not look inside arrays; a missing key is NULL, as with `->`.
    """

    def __init__(self, column: Any, key: str) -> None:
        self._column, self._key = column, key
        name = literal(key, String)
        self.value = column.op("->", return_type=JSONB)(name)
        self.type = func.jsonb_typeof(self.value)
        self._text = column.op("->>", return_type=String)(name)

    def present(self) -> Condition:
        return func.coalesce(self.type, "null") != "null"

    def of(self, family: str) -> Condition:
        return self.type == family

    def text(self) -> Any:
        return self._text

    def _path_filter(self, test: str) -> Condition:
        """Does the key hold a value passing this jsonpath filter? The path is a bound value
        (of type jsonpath): the key is letters, digits, `_` and `-` (the rule models check
        it), quoted; the test holds only numbers written by `json.dumps`."""
        path = f'strict $."{self._key}" ? ({test})'
        found: Condition = self._column.op("@?", is_comparison=True)(literal(path, JSONPATH))
        return found

    def compare(self, op: str, value: Any, family: str) -> Condition:
        if family == "boolean":
            accepted = _booleans(op, value) if op in ("eq", "ne", "in", "not_in") else []
            if not accepted:
                return false()
            jsons = [literal(v, JSONB) for v in accepted]
            found: Condition = self.value == jsons[0] if len(jsons) == 1 else self.value.in_(jsons)
            return found
        condition: Condition
        if family == "number":
            if op == "between":
                low, high = (json.dumps(v) for v in value)
                return self._path_filter(f"@ >= {low} && @ <= {high}")
            jsons = [literal(v, JSONB) for v in (value if isinstance(value, list) else [value])]
            if op in ("eq", "in", "ne", "not_in"):
                condition = self.value == jsons[0] if len(jsons) == 1 else self.value.in_(jsons)
                return condition if op in ("eq", "in") else and_(self.of(family), not_(condition))
            return and_(self.of(family), _orders(self.value, op, jsons[0]))
        values = value if op in ("in", "not_in", "between") else [value]
        if op in ("eq", "in"):
            condition = self._text == value if op == "eq" else self._text.in_(value)
            exact = not any(_json_text(v) for v in values)
            return condition if exact else and_(self.of(family), condition)
        if op in ("ne", "not_in"):
            condition = self._text != value if op == "ne" else self._text.not_in(value)
            return and_(self.of(family), condition)
        operator = {"gt": "~>~", "gte": "~>=~", "lt": "~<~", "lte": "~<=~"}
        limits = [("gte", value[0]), ("lte", value[1])] if op == "between" else [(op, value)]
        return and_(
            self.of(family),
            *(
                self._text.op(operator[o], is_comparison=True)(literal(v, String))
                for o, v in limits
            ),
        )


def _json_text(value: str) -> bool:
    """Could `->>` give this text for a number, a boolean, null, an array or an object?"""
    try:
        return not isinstance(json.loads(value), str)
    except ValueError:
        return False


Field = _SqliteField | _PostgresField


class RuleCompiler:
    def __init__(self, dialect: str, now: datetime, segments: Mapping[str, Segment]) -> None:
        self.dialect = dialect
        self.now = now
        self.segments = segments
        self._group_row_tests: bool | None = None

    def compile(self, rule: Any, event_properties: Any = None) -> Condition:
        if self._group_row_tests is None:
            # See the AllRule case of `_compile`: only for a rule that reads no events.
            self._group_row_tests = self.dialect == "postgresql" and self._cost(rule) < 3
        return self._compile(rule, event_properties)[0]

    def _field(self, column: Any, key: str) -> Field:
        if self.dialect == "postgresql":
            return _PostgresField(column, key)
        return _SqliteField(column, key)

    def _compile(self, rule: Any, event_properties: Any = None) -> tuple[Condition, bool]:
        """The condition, and whether it can be NULL (meaning false)."""
        if isinstance(rule, AttributeRule):
            return self._compare(rule, self._field(profiles.c.attributes, rule.attribute))
        if isinstance(rule, PropertyRule):
            if event_properties is None:
                return false(), False
            return self._compare(rule, self._field(event_properties, rule.property))
        if isinstance(rule, AnyRule):
            parts = [self._compile(r, event_properties) for r in self._cheap_first(rule)]
            return or_(*(c for c, _ in parts)), any(n for _, n in parts)
        if isinstance(rule, AllRule):
            children = self._cheap_first(rule)
            row_only = [r for r in children if self._cost(r) < 3]
            if self._group_row_tests and len(row_only) > 1:
                # PostgreSQL orders the conditions of a WHERE by its own cost estimates, which
                # rank a jsonb comparison below a string IN and so test it first on every
                # row. One `(… AND …) IS TRUE` is one condition, tested in the order written.
                # Only in a rule that reads no events: where PostgreSQL plans a semi-join, the
                # grouped condition's cruder estimate measured slower than its own order.
                grouped = and_(*(self.compile(r, event_properties) for r in row_only))
                parts = [(grouped.is_(true()), False)]
                parts += [
                    self._compile(r, event_properties) for r in children if self._cost(r) >= 3
                ]
            else:
                parts = [self._compile(r, event_properties) for r in children]
            return and_(*(c for c, _ in parts)), any(n for _, n in parts)
        if isinstance(rule, NotRule):
            inner, nullable = self._compile(rule.not_, event_properties)
            return (inner.is_not(true()) if nullable else not_(inner)), False
        if isinstance(rule, SegmentRef):
            return self._compile(self.segments[rule.segment].rule)
        if isinstance(rule, ConsentRule):
            return self._consent(rule.consent), True
        if isinstance(rule, EventRule):
            return self._event(rule), False
        raise TypeError(f"not a rule: {rule!r}")

    def _cheap_first(self, rule: AllRule | AnyRule) -> list[Any]:
        """Cheaper children first: both stores test a row's conditions of like estimated cost
        in the order written, and stop at the first that decides."""
        children = rule.all if isinstance(rule, AllRule) else rule.any
        return sorted(children, key=self._cost)

    def _cost(self, rule: Any) -> int:
        """0: one read of a JSON key; 1: a comparison with a type test; 2: consent, three
        columns; 3: anything reading events."""
        if isinstance(rule, EventRule):
            return 3
        if isinstance(rule, SegmentRef):
            return self._cost(self.segments[rule.segment].rule)
        if isinstance(rule, AllRule | AnyRule):
            return max(self._cost(r) for r in (rule.all if isinstance(rule, AllRule) else rule.any))
        if isinstance(rule, NotRule):
            return self._cost(rule.not_)
        if isinstance(rule, ConsentRule):
            return 2
        if isinstance(rule, AttributeRule | PropertyRule):
            # In SQLite a range of numbers is one read too (other types sort outside it; a
            # test is added only when it holds 0 or 1, which booleans read as): kept in the
            # order written. PostgreSQL measured faster with its number range tested last.
            if (
                self.dialect == "sqlite"
                and rule.op == "between"
                and category(rule.value[0]) == "number"
            ):
                return 0
            return 0 if rule.op in ("eq", "in", "exists", "not_exists") else 1
        return 1

    def _compare(self, rule: _Comparison, field: Field) -> tuple[Condition, bool]:
        op, value = rule.op, rule.value
        if op == "exists":
            return field.present(), False
        if op == "not_exists":
            return not_(field.present()), False
        if op == "within_last":
            seconds = func.parcours_epoch(field.text())
            now = self.now.timestamp()
            window = rule.window.total_seconds()
            return and_(field.of("string"), seconds.between(now - window, now)), True
        if op in ("contains", "starts_with"):
            text = field.text()
            if op == "starts_with":
                found: Condition = func.substr(text, 1, len(value)) == value
            elif self.dialect == "postgresql":
                found = func.strpos(text, value) > 0
            else:
                found = func.instr(text, value) > 0
            return and_(field.of("string"), found), True
        family = category(value[0] if op in ("in", "not_in", "between") else value)
        assert family is not None
        return field.compare(op, value, family), True

    def _consent(self, channel: str) -> Condition:
        identity: Condition
        if channel == "push":
            identity = func.json_array_length(profiles.c.device_tokens) > 0
        else:
            column = profiles.c.email if channel == "email" else profiles.c.phone
            identity = and_(column.isnot(None), column != "")
        status: Any
        if self.dialect == "postgresql":
            status = profiles.c.consent.op("->")(literal(channel, String)).op(
                "->>", return_type=String
            )(literal("status", String))
        else:
            path = literal(f'$."{channel}".status', String, literal_execute=True)
            status = func.json_extract(profiles.c.consent, path)
        return and_(identity, func.coalesce(status, "") != "opted_out")

    def _event(self, rule: EventRule) -> Condition:
        conditions: list[Condition] = [events.c.type == rule.event]
        if rule.within is not None:
            conditions.append(events.c.timestamp >= self.now - rule.within)
        if rule.where is not None:
            conditions.append(self.compile(rule.where, events.c.properties))
        count = rule.count
        bounds = count.bounds()
        # Selecting a column of the (profile, type, time) index, not `*`, lets SQLite answer
        # from the index alone.
        found = (
            select(events.c.profile_id)
            .where(events.c.profile_id == profiles.c.id, *conditions)
            .exists()
        )
        if bounds in ({"gte": 1}, {"gt": 0}):
            return found
        if bounds in ({"eq": 0}, {"lte": 0}, {"lt": 1}):
            return not_(found)
        n = func.count()
        checks = [_orders(n, k, v) if k != "eq" else n == v for k, v in bounds.items()]
        if self.dialect == "sqlite":
            # SQLite counts one profile's events from the covering (profile, type, time)
            # index faster than it groups them all and looks the groups up.
            counted = (
                select(n).where(events.c.profile_id == profiles.c.id, *conditions).scalar_subquery()
            )
            return and_(
                *(_orders(counted, k, v) if k != "eq" else counted == v for k, v in bounds.items())
            )
        # PostgreSQL groups the events once and joins the groups by hash, where a count per
        # profile would probe the index a million times.
        grouped = select(events.c.profile_id).where(*conditions).group_by(events.c.profile_id)
        if count.accepts(0):
            # Profiles with no such event match too: keep everyone but those whose count fails.
            return profiles.c.id.not_in(grouped.having(not_(and_(*checks))))
        return profiles.c.id.in_(grouped.having(and_(*checks)))


def members_query(dialect: str, rule: Any, now: datetime, segments: Mapping[str, Segment]) -> Any:
    """SELECT the ids of every profile matching `rule`, in id order. Run it after
    `activities.db.plan_for_values` in the same transaction."""
    condition = RuleCompiler(dialect, now, segments).compile(rule)
    return select(profiles.c.id).where(condition).order_by(profiles.c.id)
