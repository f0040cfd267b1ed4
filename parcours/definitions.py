"""The files a user writes (SPEC §2): templates and journeys, as pydantic models.

These models are the single description of each format: the loader validates files with them,
the store keeps them as JSON, and workflows receive them as their input.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from parcours.durations import Duration, format_duration
from parcours.rules import Rule

Identifier = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="letters, digits, '-', '_' or '.', starting with a letter or digit",
    ),
]
Channel = Literal["email", "sms", "push"]


class _Strict(BaseModel):
    # A misspelt field in a journey file is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Template(_Strict):
    kind: Literal["template"] = "template"
    id: Identifier
    channel: Channel
    subject: str | None = None
    body: str
    html: str | None = None

    @model_validator(mode="after")
    def _email_needs_subject(self) -> Template:
        if self.channel == "email" and not self.subject:
            raise ValueError("an email template needs a `subject`")
        if self.channel != "email" and (self.subject or self.html):
            raise ValueError(f"`subject` and `html` are for email templates, not {self.channel}")
        return self


class EventEntry(_Strict):
    event: Annotated[str, Field(min_length=1)]


class WaitNode(_Strict):
    id: Identifier
    type: Literal["wait"]
    duration: Duration
    next: Identifier

    def summary(self) -> str:
        return f"wait {format_duration(self.duration)}"


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


class EndNode(_Strict):
    id: Identifier
    type: Literal["end"]

    def summary(self) -> str:
        return "end"


Node = Annotated[WaitNode | MessageNode | EndNode, Field(discriminator="type")]
NODE_TYPES = ("wait", "message", "end")


class Journey(_Strict):
    kind: Literal["journey"] = "journey"
    id: Identifier
    name: str | None = None
    entry: EventEntry
    start: Identifier
    nodes: Annotated[list[Node], Field(min_length=1)]

    def node(self, node_id: str) -> WaitNode | MessageNode | EndNode:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)


class Segment(_Strict):
    kind: Literal["segment"] = "segment"
    id: Identifier
    name: str | None = None
    rule: Rule


Definition = Annotated[Segment | Template | Journey, Field(discriminator="kind")]
# Also the order of publication: what is used comes before what uses it.
KINDS = ("segment", "template", "journey")
