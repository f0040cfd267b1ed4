"""What crosses Temporal boundaries: workflow inputs, signals, queries and activity payloads.

Kept small on purpose: histories hold event ids and facts, not profiles or event payloads,
which activities read from the store when they need them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from parcours.definitions import Campaign, Journey, Until
from parcours.rules import Channel, Rule

DeliveryStatus = Literal[
    "queued", "sending", "sent", "delivered", "opened", "clicked", "bounced", "failed", "suppressed"
]


class EventRef(BaseModel):
    """An event as a journey sees it: enough to recognise and fetch it."""

    id: str
    type: str
    timestamp: datetime


class Step(BaseModel):
    node: str
    type: str
    entered_at: datetime
    outcome: str | None = None


class Resume(BaseModel):
    """Where a journey entry picks up after continuing as new."""

    node: str
    indexed_node: str
    seen: list[str]
    visits: dict[str, int]
    path: list[Step]
    # Set when the entry continued in the middle of a `wait_for_event` at `node`: the same
    # wait goes on until this deadline, first reading the events it had not read yet.
    waiting_until: datetime | None = None
    unread: list[EventRef] = Field(default_factory=list)


class JourneyInput(BaseModel):
    journey: Journey
    version: int
    profile_id: str
    entry_event: EventRef | None = None
    resume: Resume | None = None
    # Past this many history events the entry continues as new at its next node, so a journey
    # that loops for months keeps a short history (Temporal suggests it near 10,000 anyway).
    history_limit: int = 2000
    # Record the entry's finish for reports (`record_finish`). Set by the router for every
    # new entry; entries started before it existed lack it and replay as they ran. A flag in
    # the input rather than `workflow.patched`, which would cost every entry a
    # search-attribute upsert (TemporalChangeVersion).
    record_finish: bool = False


class JourneyPosition(BaseModel):
    """Where a profile is in its journey and what happened so far (the `position` query)."""

    journey_id: str
    version: int
    profile_id: str
    node: str | None
    finished: bool
    exit_reason: str | None = None
    path: list[Step] = Field(default_factory=list)
    events: list[str] = Field(default_factory=list)


class EntryFinished(BaseModel):
    """An entry's end, recorded once for reports: where it ended, why, and every node it
    passed through (with how often, for loops)."""

    workflow_id: str
    first_run_id: str  # with the workflow id, names one entry across its continued runs
    journey_id: str
    version: int
    profile_id: str
    node: str  # the `end` node, or the node where it left on an exit
    exit: str | None = None  # why it left early: the exit event type, segment, or a stop
    visits: dict[str, int]
    finished_at: datetime


class SendMessageInput(BaseModel):
    idempotency_key: str
    profile_id: str
    channel: Channel
    template: str
    journey_id: str | None = None
    journey_version: int | None = None
    node_id: str | None = None
    workflow_id: str | None = None
    run_id: str | None = None
    event_id: str | None = None
    priority: Literal["transactional", "marketing"] = "marketing"
    respect_quiet_hours: bool = True
    # The workflow's clock when it asked: in tests on a time-skipping server it runs ahead of
    # the wall clock, and quiet hours and caps must be judged at the journey's time.
    now: datetime | None = None
    # The entry ends right after this message: its finish, recorded with the settled send.
    finish: EntryFinished | None = None


class DeliveryResult(BaseModel):
    delivery_id: str
    status: DeliveryStatus
    reason: str | None = None
    provider_message_id: str | None = None
    # Set on a message held by quiet hours: the workflow sleeps until then and asks again.
    not_before: datetime | None = None
    # The request's `finish` is stored: the workflow need not record it again.
    finish_recorded: bool = False


class RecheckResult(BaseModel):
    entered: int = 0
    exited: int = 0


class WaitingRouted(BaseModel):
    """What a pass over the events left waiting to be routed did."""

    routed: int = 0


class RulesInput(BaseModel):
    """Rules to test, in order, for one profile; `event_id` is the event property rules read."""

    profile_id: str
    rules: list[Rule]
    event_id: str | None = None


class UpdateProfileInput(BaseModel):
    profile_id: str
    set: dict[str, Any] = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list)


class WaitUntilInput(BaseModel):
    """Resolve a wait's end for one profile; exactly one of `until` or `attribute`."""

    profile_id: str
    now: datetime
    until: Until | None = None
    attribute: str | None = None


class WebhookInput(BaseModel):
    idempotency_key: str
    profile_id: str
    journey_id: str
    journey_version: int
    node_id: str
    url: str
    method: str
    body: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float
    event_id: str | None = None


class WebhookResult(BaseModel):
    status: int | None  # the HTTP status, None when no answer came
    error: str | None = None


class CampaignInput(BaseModel):
    """A campaign run. The definition is read once, when the run starts, and carried on."""

    campaign_id: str
    # Carried across continue-as-new: where the run is.
    progress: CampaignProgress | None = None
    campaign: Campaign | None = None
    paused: bool = False
    pages_per_run: int = 200


class CampaignProgress(BaseModel):
    audience: int
    # Recipients per page, fixed when the run starts; runs started before pages of 2,000 have
    # none recorded.
    page_size: int = 1000
    # Snapshot rows are numbered from 1.
    next_seq: int = 1
    sent: int = 0
    suppressed: int = 0
    failed: int = 0
    # When the rate limit lets the next page start.
    paced_until: datetime | None = None
    # Pages with recipients held by quiet hours or their local send time, and until when.
    held: dict[int, datetime] = Field(default_factory=dict)
    follow_up_done: bool = False

    @property
    def done(self) -> int:
        return self.sent + self.suppressed + self.failed


class StartRun(BaseModel):
    campaign_id: str
    run_id: str
    now: datetime


class RunPlan(BaseModel):
    campaign: Campaign
    audience: int


class CampaignPage(BaseModel):
    run_id: str
    campaign: Campaign
    from_seq: int
    limit: int
    now: datetime
    # The follow-up pass sends the follow-up template to those who did not open or click.
    follow_up: bool = False


class PageResult(BaseModel):
    next_seq: int
    sent: int = 0
    suppressed: int = 0
    failed: int = 0
    # The earliest time a recipient held on this page may be sent.
    held_until: datetime | None = None


class FinishRun(BaseModel):
    run_id: str
    status: str
    now: datetime


class CampaignReport(BaseModel):
    run_id: str
    campaign_id: str
    status: str
    audience: int
    sent: int
    suppressed: dict[str, int]
    failed: dict[str, int]
    held: int = 0
    follow_up_sent: int = 0
    started_at: datetime
    finished_at: datetime | None = None
    duration_seconds: float | None = None
