"""The batch evaluator: a rule compiled to a SQLAlchemy expression over the profiles table.

Every user value travels as a bound parameter and every JSON key is validated by the rule
models, so no user text ever becomes SQL. Semantics follow `parcours.evaluate` exactly (types
compare only with their own family, a missing value compares false); PostgreSQL and SQLite
differ only in how a JSON value's type and contents are read, which `_JsonField` hides.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Float,
    String,
    and_,
    case,
    cast,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
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


class _JsonField:
    """One key of a JSON object column: its type family and its value per family."""

    def __init__(self, dialect: str, column: Any, key: str) -> None:
        self.dialect = dialect
        if dialect == "postgresql":
            element = column.op("->")(literal(key, String))
            self.json_type = func.json_typeof(element)
            self.text = column.op("->>", return_type=String)(literal(key, String))
            self.families = {"number": ["number"], "string": ["string"], "boolean": ["boolean"]}
        else:
            path = literal(f'$."{key}"', String)
            self.json_type = func.json_type(column, path)
            self.raw = func.json_extract(column, path)
            self.families = {
                "number": ["integer", "real"],
                "string": ["text"],
                "boolean": ["true", "false"],
            }

    def present(self) -> Condition:
        return and_(self.json_type.isnot(None), self.json_type != "null")

    def of(self, family: str) -> Condition:
        return self.json_type.in_(self.families[family])

    def value(self, family: str) -> Any:
        if self.dialect != "postgresql":
            return self.raw
        if family == "number":
            # Guarded: PostgreSQL may evaluate the cast before the type test beside it.
            return case((self.json_type == "number", cast(self.text, Float)))
        return self.text

    def boolean(self, value: bool) -> Condition:
        text = "true" if value else "false"
        condition: Condition = (
            self.text == text if self.dialect == "postgresql" else self.json_type == text
        )
        return condition


class RuleCompiler:
    def __init__(self, dialect: str, now: datetime, segments: Mapping[str, Segment]) -> None:
        self.dialect = dialect
        self.now = now
        self.segments = segments

    def compile(self, rule: Any, event_properties: Any = None) -> Condition:
        if isinstance(rule, AttributeRule):
            return _definite(
                self._compare(rule, _JsonField(self.dialect, profiles.c.attributes, rule.attribute))
            )
        if isinstance(rule, PropertyRule):
            if event_properties is None:
                return false()
            return _definite(
                self._compare(rule, _JsonField(self.dialect, event_properties, rule.property))
            )
        if isinstance(rule, AllRule):
            return and_(*(self.compile(r, event_properties) for r in rule.all))
        if isinstance(rule, AnyRule):
            return or_(*(self.compile(r, event_properties) for r in rule.any))
        if isinstance(rule, NotRule):
            return not_(self.compile(rule.not_, event_properties))
        if isinstance(rule, SegmentRef):
            return self.compile(self.segments[rule.segment].rule)
        if isinstance(rule, ConsentRule):
            return _definite(self._consent(rule.consent))
        if isinstance(rule, EventRule):
            return self._event(rule)
        raise TypeError(f"not a rule: {rule!r}")

    def _compare(self, rule: _Comparison, field: _JsonField) -> Condition:
        op, value = rule.op, rule.value
        if op == "exists":
            return field.present()
        if op == "not_exists":
            return not_(field.present())
        if op == "within_last":
            seconds = func.parcours_epoch(field.value("string"))
            now = self.now.timestamp()
            return and_(
                field.of("string"), seconds >= now - rule.window.total_seconds(), seconds <= now
            )
        if op in ("in", "not_in"):
            family = category(value[0])
            assert family is not None
            if family == "boolean":
                found = or_(*(field.boolean(v) for v in value))
            else:
                found = field.value(family).in_(value)
            return and_(field.of(family), found if op == "in" else not_(found))
        if op == "between":
            family = category(value[0])
            assert family is not None
            actual = field.value(family)
            return and_(
                field.of(family),
                self._order(actual, "gte", value[0], family),
                self._order(actual, "lte", value[1], family),
            )
        family = category(value)
        assert family is not None
        if family == "boolean":
            if op == "eq":
                return field.boolean(value)
            if op == "ne":
                return and_(field.of(family), not_(field.boolean(value)))
            return false()
        actual = field.value(family)
        expression: Condition
        if op == "contains":
            position = (
                func.strpos(actual, value)
                if self.dialect == "postgresql"
                else func.instr(actual, value)
            )
            expression = position > 0
        elif op == "starts_with":
            expression = func.substr(actual, 1, len(value)) == value
        elif op == "eq":
            expression = actual == value
        elif op == "ne":
            expression = actual != value
        else:
            expression = self._order(actual, op, value, family)
        return and_(field.of(family), expression)

    def _order(self, actual: Any, op: str, value: Any, family: str) -> Condition:
        if family == "string" and self.dialect == "postgresql":
            # Byte order, as Python and SQLite compare, whatever the database's collation.
            operator = {"gt": "~>~", "gte": "~>=~", "lt": "~<~", "lte": "~<=~"}[op]
            condition: Condition = actual.op(operator, is_comparison=True)(literal(value, String))
            return condition
        return {  # type: ignore[no-any-return]
            "gt": actual > value,
            "gte": actual >= value,
            "lt": actual < value,
            "lte": actual <= value,
        }[op]

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
            status = func.json_extract(profiles.c.consent, literal(f'$."{channel}".status', String))
        return and_(identity, func.coalesce(status, "") != "opted_out")

    def _event(self, rule: EventRule) -> Condition:
        conditions: list[Condition] = [
            events.c.profile_id == profiles.c.id,
            events.c.type == rule.event,
        ]
        if rule.within is not None:
            conditions.append(events.c.timestamp >= self.now - rule.within)
        if rule.where is not None:
            conditions.append(self.compile(rule.where, events.c.properties))
        bounds = rule.count.bounds()
        if bounds in ({"gte": 1}, {"gt": 0}):
            return exists().where(*conditions)
        if bounds in ({"eq": 0}, {"lte": 0}, {"lt": 1}):
            return not_(exists().where(*conditions))
        count = select(func.count()).select_from(events).where(*conditions).scalar_subquery()
        checks = {
            "eq": count.__eq__,
            "gt": count.__gt__,
            "gte": count.__ge__,
            "lt": count.__lt__,
            "lte": count.__le__,
        }
        return and_(true(), *(checks[k](v) for k, v in bounds.items()))


def _definite(condition: Condition) -> Condition:
    """TRUE or FALSE, never NULL: a missing value must make `not` true, as in Python."""
    return case((condition, true()), else_=false())


def members_query(dialect: str, rule: Any, now: datetime, segments: Mapping[str, Segment]) -> Any:
    """SELECT the ids of every profile matching `rule`, in id order."""
    condition = RuleCompiler(dialect, now, segments).compile(rule)
    return select(profiles.c.id).where(condition).order_by(profiles.c.id)
