"""The files a user writes (SPEC §2): templates and journeys, as pydantic models.

These models are the single description of each format: the loader validates files with them,
the store keeps them as JSON, and workflows receive them as their input.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from parcours.durations import Duration, format_duration
from parcours.field_errors import error_at, exactly_one
from parcours.rules import Channel, Rule

Identifier = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="letters, digits, '-', '_' or '.', starting with a letter or digit",
    ),
]


class _Strict(BaseModel):
    # A misspelt field in a journey file is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Template(_Strict):
    kind: Literal["template"] = "template"
    id: Identifier
    channel: Channel
    # An email's subject, or a push notification's title.
    subject: str | None = None
    body: str
    html: str | None = None

    @model_validator(mode="after")
    def _email_needs_subject(self) -> Template:
        if self.channel == "email" and not self.subject:
            raise error_at("subject", "an email template needs a `subject`", self.subject)
        if self.channel == "sms" and self.subject:
            raise error_at(
                "subject", "an sms has no `subject`: put everything in `body`", self.subject
            )
        if self.channel != "email" and self.html:
            raise error_at("html", f"`html` is for email templates, not {self.channel}", self.html)
        return self


class Entry(_Strict):
    """How profiles enter: exactly one of an event, entering a segment, or the API."""

    event: Annotated[str, Field(min_length=1)] | None = None
    where: Rule | None = None  # over the entry event's properties
    segment_entered: Identifier | None = None
    api: bool = False

    @model_validator(mode="after")
    def _exactly_one(self) -> Entry:
        exactly_one(
            self,
            [k for k in ("event", "segment_entered", "api") if getattr(self, k)],
            "`entry` takes exactly one of `event`, `segment_entered` or `api: true`",
        )
        if self.where is not None and self.event is None:
            raise error_at(
                "where", "`where` filters an entry event: it needs `event`", self.where.model_dump()
            )
        return self

    def describe(self) -> str:
        if self.event:
            return f"event {self.event}"
        return f"segment {self.segment_entered} entered" if self.segment_entered else "API"


def check_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone (e.g. Europe/Paris)") from None
    return name


Zone = Annotated[str, AfterValidator(check_zone)]


class Until(_Strict):
    time: Annotated[
        str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM, 24-hour clock")
    ]
    timezone: str = "profile"  # `profile`: the profile's own zone
    # For profiles without a zone of their own.
    fallback_timezone: Zone = "UTC"

    @field_validator("timezone")
    @classmethod
    def _zone_exists(cls, zone: str) -> str:
        return zone if zone == "profile" else check_zone(zone)


class WaitNode(_Strict):
    id: Identifier
    type: Literal["wait"]
    duration: Duration | None = None
    until: Until | None = None
    until_attribute: Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")] | None = (
        None
    )
    next: Identifier

    @model_validator(mode="after")
    def _one_kind_of_wait(self) -> WaitNode:
        exactly_one(
            self,
            [f for f in ("duration", "until", "until_attribute") if getattr(self, f) is not None],
            "a wait takes exactly one of `duration`, `until` or `until_attribute`",
        )
        return self

    def summary(self) -> str:
        if self.duration is not None:
            return f"wait {format_duration(self.duration)}"
        if self.until is not None:
            zone = "local" if self.until.timezone == "profile" else self.until.timezone
            return f"wait until {self.until.time} {zone}"
        return f"wait until {self.until_attribute}"

    def edges(self) -> list[tuple[str, str]]:
        return [("next", self.next)]


class MessageNode(_Strict):
    id: Identifier
    type: Literal["message"]
    channel: Channel
    template: Identifier
    next: Identifier
    respect_quiet_hours: bool = True
    priority: Literal["transactional", "marketing"] = "marketing"

    def summary(self) -> str:
        return f"{self.channel} {self.template}"

    def edges(self) -> list[tuple[str, str]]:
        return [("next", self.next)]


class Branch(_Strict):
    when: Rule
    next: Identifier


class ConditionNode(_Strict):
    id: Identifier
    type: Literal["condition"]
    branches: Annotated[list[Branch], Field(min_length=1)]
    default: Identifier

    def summary(self) -> str:
        return f"condition {self.id}"

    def edges(self) -> list[tuple[str, str]]:
        return [(f"branches[{i}].next", b.next) for i, b in enumerate(self.branches)] + [
            ("default", self.default)
        ]


class Variant(_Strict):
    name: Identifier
    weight: Annotated[float, Field(gt=0)]
    next: Identifier


class SplitNode(_Strict):
    id: Identifier
    type: Literal["split"]
    variants: Annotated[list[Variant], Field(min_length=2)]

    def choose(self, journey_id: str, version: int, profile_id: str) -> Variant:
        """Stable per profile and journey version, shares following the weights: the same
        answer in the workflow, on replay, and in reports that attribute conversions."""
        key = f"{journey_id}:{version}:{self.id}:{profile_id}"
        point = int(hashlib.sha256(key.encode()).hexdigest()[:15], 16) / 16**15
        total = sum(v.weight for v in self.variants)
        cumulative = 0.0
        for variant in self.variants:
            cumulative += variant.weight / total
            if point < cumulative:
                return variant
        return self.variants[-1]

    def summary(self) -> str:
        return f"split {self.id}"

    def edges(self) -> list[tuple[str, str]]:
        return [(f"variants[{i}].next", v.next) for i, v in enumerate(self.variants)]


class UpdateProfileNode(_Strict):
    id: Identifier
    type: Literal["update_profile"]
    set: dict[str, Any] = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list)
    next: Identifier

    @model_validator(mode="after")
    def _changes_something(self) -> UpdateProfileNode:
        if not self.set and not self.unset:
            raise error_at("set", "`update_profile` needs `set` or `unset`", self.set)
        return self

    def summary(self) -> str:
        return "update profile " + ", ".join([*self.set, *(f"-{k}" for k in self.unset)])

    def edges(self) -> list[tuple[str, str]]:
        return [("next", self.next)]


class WaitForEventNode(_Strict):
    id: Identifier
    type: Literal["wait_for_event"]
    event: Annotated[str, Field(min_length=1)]
    where: Rule | None = None
    timeout: Duration
    on_event: Identifier
    on_timeout: Identifier

    def summary(self) -> str:
        return f"wait for {self.event}, at most {format_duration(self.timeout)}"

    def edges(self) -> list[tuple[str, str]]:
        return [("on_event", self.on_event), ("on_timeout", self.on_timeout)]


class WebhookNode(_Strict):
    id: Identifier
    type: Literal["webhook"]
    url: Annotated[
        str, Field(pattern=r"^https?://[^\s]+$", description="an http:// or https:// URL")
    ]
    method: Literal["POST", "PUT", "PATCH", "GET"] = "POST"
    body: str | None = None  # a Jinja2 template, rendered like message templates
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Duration = timedelta(seconds=10)
    next: Identifier

    def summary(self) -> str:
        return f"webhook {self.method} {self.url.split('?')[0]}"

    def edges(self) -> list[tuple[str, str]]:
        return [("next", self.next)]


class EndNode(_Strict):
    id: Identifier
    type: Literal["end"]

    def summary(self) -> str:
        return "end"

    def edges(self) -> list[tuple[str, str]]:
        return []


AnyNode = (
    WaitNode
    | MessageNode
    | ConditionNode
    | SplitNode
    | UpdateProfileNode
    | WaitForEventNode
    | WebhookNode
    | EndNode
)
Node = Annotated[AnyNode, Field(discriminator="type")]
NODE_TYPES = (
    "wait", "wait_for_event", "condition", "split", "message", "update_profile", "webhook", "end",
)  # fmt: skip
# Nodes where time passes: every cycle must go through one of these.
WAITING_NODES = (WaitNode, WaitForEventNode)


class ExitWhen(_Strict):
    """Leave at once on this event, or when the profile leaves this segment."""

    event: Annotated[str, Field(min_length=1)] | None = None
    segment_exited: Identifier | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ExitWhen:
        exactly_one(
            self,
            [f for f in ("event", "segment_exited") if getattr(self, f) is not None],
            "an `exit_when` item takes exactly one of `event` or `segment_exited`",
        )
        return self


class Goal(_Strict):
    """A conversion: the event happening within `within` of the entry's start."""

    event: Annotated[str, Field(min_length=1)]
    within: Duration


class Cooldown(_Strict):
    # Measured from the previous entry's start: at most one entry per `cooldown`.
    cooldown: Duration


class Journey(_Strict):
    kind: Literal["journey"] = "journey"
    id: Identifier
    name: str | None = None
    entry: Entry
    audience: Rule | None = None  # only profiles matching it may enter
    re_entry: Literal["never", "after_exit"] | Cooldown = "after_exit"
    exit_when: list[ExitWhen] = Field(default_factory=list)
    goal: Goal | None = None
    start: Identifier
    nodes: Annotated[list[Node], Field(min_length=1)]

    def node(self, node_id: str) -> AnyNode:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def listens_to(self) -> set[str]:
        """Event types a running entry must hear about (besides its entry event)."""
        waits = {n.event for n in self.nodes if isinstance(n, WaitForEventNode)}
        return waits | {e.event for e in self.exit_when if e.event}

    def exits_on_segments(self) -> set[str]:
        return {e.segment_exited for e in self.exit_when if e.segment_exited}


class Segment(_Strict):
    kind: Literal["segment"] = "segment"
    id: Identifier
    name: str | None = None
    rule: Rule


_CRON_FIELD = r"[A-Za-z0-9*/,?#L-]+"
_RATE_UNITS = {"s": 1, "m": 60, "h": 3600}


class CampaignSchedule(_Strict):
    """A standard five-field cron, read in `timezone` (daylight saving included)."""

    cron: Annotated[str, Field(pattern=rf"^\s*{_CRON_FIELD}(\s+{_CRON_FIELD}){{4}}\s*$")]
    timezone: Zone = "UTC"
    # Optional window: no run before `starts` or after `ends` (RFC 3339).
    starts: datetime | None = None
    ends: datetime | None = None


class SendAt(_Strict):
    """Send each recipient at this hour of their own clock (the fallback zone without one)."""

    local_time: Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]
    fallback_timezone: Zone = "UTC"


class FollowUp(_Strict):
    """A second message, from the same run, to those who did not open or click the first."""

    after: Duration
    to: Literal["not_opened", "not_clicked"]
    template: Identifier


class Campaign(_Strict):
    kind: Literal["campaign"] = "campaign"
    id: Identifier
    name: str | None = None
    audience: Rule
    channel: Channel
    template: Identifier
    schedule: CampaignSchedule | None = None  # none: sent on demand (`parcours campaigns run`)
    rate_limit: Annotated[str, Field(pattern=r"^\s*\d+(\.\d+)?\s*/\s*[smh]\s*$")] | None = None
    priority: Literal["transactional", "marketing"] = "marketing"
    send_at: SendAt | None = None
    follow_up: FollowUp | None = None

    def per_second(self) -> float | None:
        """`rate_limit` as messages per second."""
        if self.rate_limit is None:
            return None
        count, unit = self.rate_limit.replace(" ", "").split("/")
        return float(count) / _RATE_UNITS[unit]


Definition = Annotated[Segment | Template | Journey | Campaign, Field(discriminator="kind")]
# Also the order of publication: what is used comes before what uses it.
KINDS = ("segment", "template", "journey", "campaign")
