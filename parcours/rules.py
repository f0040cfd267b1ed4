"""The segment rule language (SPEC §2 "Segment rule") as pydantic models.

A rule is recognised by its leading key (`attribute`, `event`, `property`, `all`, `any`, `not`,
`segment`, `consent`); each kind checks its own operands, so a rule that loads is one both
evaluators (in memory and SQL) can run.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from parcours.durations import Duration, parse_duration
from parcours.field_errors import error_at
from parcours.json_values import nul_at

Scalar = str | int | float | bool
Op = Literal[
    "eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "contains", "starts_with",
    "exists", "not_exists", "between", "within_last",
]  # fmt: skip
OPS: tuple[str, ...] = Op.__args__  # type: ignore[attr-defined]
# Attribute and property names are plain keys: no dots or quotes, so they can never change the
# shape of a JSON path.
Key = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")]
Channel = Literal["email", "sms", "push"]
RULE_KEYS = ("attribute", "event", "property", "all", "any", "not", "segment", "consent")


def category(value: Any) -> str | None:
    """The comparison family of a JSON value: values of different families never compare."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


class _Rule(BaseModel):
    # Dumped by alias (`not`, never `not_`) so a stored rule reads back as the user wrote it.
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True
    )


class _Comparison(_Rule):
    op: Op
    value: Any = None

    @field_validator("value")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # Compared in SQL: PostgreSQL refuses a NUL in a string, so say so here, by name.
        where = nul_at(value, "value")
        if where:
            raise ValueError(f"{where} holds a NUL character (\\u0000), which cannot be compared")
        return value

    @model_validator(mode="after")
    def _operand_fits_operator(self) -> _Comparison:
        # Whatever the operator, it is the value that does not fit: say so at `value`.
        problem = self._operand_problem()
        if problem:
            raise error_at("value", problem, self.value)
        return self

    def _operand_problem(self) -> str | None:
        op, value = self.op, self.value
        if op in ("exists", "not_exists"):
            if value is not None:
                return f"`{op}` takes no value"
        elif op == "within_last":
            try:
                parse_duration(value)  # kept as written, so it reads back the same
            except ValueError as exc:
                return str(exc)
        elif op in ("in", "not_in"):
            if not isinstance(value, list) or not value:
                return f"`{op}` takes a non-empty list of values"
            families = {category(v) for v in value}
            if None in families or len(families) > 1:
                return f"`{op}` takes a list of strings, numbers or booleans, all of one type"
        elif op == "between":
            if not (isinstance(value, list) and len(value) == 2):
                return "`between` takes [low, high]"
            low, high = value
            family = category(low)
            if family not in ("number", "string") or category(high) != family or low > high:
                return "`between` takes [low, high]: two numbers or two strings, low <= high"
        elif op in ("contains", "starts_with"):
            if category(value) != "string":
                return f"`{op}` takes a string value"
        elif op in ("gt", "gte", "lt", "lte"):
            if category(value) not in ("number", "string"):
                return f"`{op}` takes a number or a string value"
        elif category(value) is None:
            return f"`{op}` takes a string, number or boolean value"
        return None

    @property
    def window(self) -> timedelta:
        return parse_duration(self.value)


class AttributeRule(_Comparison):
    attribute: Key


class PropertyRule(_Comparison):
    property: Key


class CountBounds(_Rule):
    eq: Annotated[int, Field(ge=0)] | None = None
    gt: Annotated[int, Field(ge=0)] | None = None
    gte: Annotated[int, Field(ge=0)] | None = None
    lt: Annotated[int, Field(ge=0)] | None = None
    lte: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _one_or_two(self) -> CountBounds:
        given = self.bounds()
        if not 1 <= len(given) <= 2:
            raise ValueError("`count` takes one or two of eq, gt, gte, lt, lte")
        return self

    def bounds(self) -> dict[str, int]:
        return {k: v for k, v in self.model_dump().items() if v is not None}

    def accepts(self, n: int) -> bool:
        # Field by field: called for every event rule on every streamed event.
        return (
            (self.eq is None or n == self.eq)
            and (self.gt is None or n > self.gt)
            and (self.gte is None or n >= self.gte)
            and (self.lt is None or n < self.lt)
            and (self.lte is None or n <= self.lte)
        )


class EventRule(_Rule):
    event: Annotated[str, Field(min_length=1, max_length=255)]
    where: PropertyCondition | None = None
    count: CountBounds = CountBounds(gte=1)
    within: Duration | None = None


class AllRule(_Rule):
    all: Annotated[list[Rule], Field(min_length=1)]


class AnyRule(_Rule):
    any: Annotated[list[Rule], Field(min_length=1)]


class NotRule(_Rule):
    not_: Rule = Field(alias="not")


class SegmentRef(_Rule):
    segment: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]


class ConsentRule(_Rule):
    consent: Channel


def _tag(value: Any) -> str | None:
    # Tags end in " rule" so an error's location never mistakes a tag for a field name.
    if isinstance(value, dict):
        key = next((key for key in RULE_KEYS if key in value), None)
    else:
        tags: dict[type, str] = {
            AttributeRule: "attribute", EventRule: "event", PropertyRule: "property", AllRule: "all",
            AnyRule: "any", NotRule: "not", SegmentRef: "segment", ConsentRule: "consent",
        }  # fmt: skip
        key = tags.get(type(value))
    return f"{key} rule" if key else None


_EXPECTED = "a rule: a mapping with one of " + ", ".join(RULE_KEYS)
Rule = Annotated[
    Annotated[AttributeRule, Tag("attribute rule")]
    | Annotated[EventRule, Tag("event rule")]
    | Annotated[PropertyRule, Tag("property rule")]
    | Annotated[AllRule, Tag("all rule")]
    | Annotated[AnyRule, Tag("any rule")]
    | Annotated[NotRule, Tag("not rule")]
    | Annotated[SegmentRef, Tag("segment rule")]
    | Annotated[ConsentRule, Tag("consent rule")],
    Discriminator(_tag, custom_error_type="rule", custom_error_message=f"expected {_EXPECTED}"),
]
# Inside an event's `where`, rules read the event's properties: only these kinds make sense.
PropertyCondition = Rule

EventRule.model_rebuild()
AllRule.model_rebuild()
AnyRule.model_rebuild()
NotRule.model_rebuild()


def children(rule: Any) -> list[Any]:
    if isinstance(rule, AllRule):
        return list(rule.all)
    if isinstance(rule, AnyRule):
        return list(rule.any)
    if isinstance(rule, NotRule):
        return [rule.not_]
    return []


def references(rule: Any) -> set[str]:
    """The segments a rule refers to, directly."""
    if isinstance(rule, SegmentRef):
        return {rule.segment}
    found: set[str] = set()
    for child in children(rule):
        found |= references(child)
    return found


def misplaced(rule: Any, path: str, in_where: bool = False) -> list[tuple[str, str]]:
    """(path, message) for rules used where they cannot be evaluated."""
    problems: list[tuple[str, str]] = []
    if in_where and not isinstance(rule, PropertyRule | AllRule | AnyRule | NotRule):
        problems.append(
            (path, "inside `where`, only property rules (and all/any/not of them) apply")
        )
    if not in_where and isinstance(rule, PropertyRule):
        problems.append(
            (path, "a property rule reads an event: use it inside an event rule's `where`")
        )
    if isinstance(rule, EventRule) and rule.where is not None:
        problems += misplaced(rule.where, f"{path}.where", in_where=True)
    lists: dict[type, str] = {AllRule: "all", AnyRule: "any"}
    key = lists.get(type(rule))
    for i, child in enumerate(children(rule)):
        problems += misplaced(child, f"{path}.{key}[{i}]" if key else f"{path}.not", in_where)
    return problems
