"""What the store holds, as users and other systems read it (SPEC §1, §4 `--json`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from parcours.contracts import DeliveryStatus


class Profile(BaseModel):
    id: str
    email: str | None = None
    phone: str | None = None
    timezone: str | None = None
    locale: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Event(BaseModel):
    id: str
    type: str
    profile_id: str
    timestamp: datetime
    properties: dict[str, Any] = Field(default_factory=dict)


class Delivery(BaseModel):
    id: str
    profile_id: str
    channel: str
    template: str
    status: DeliveryStatus
    reason: str | None = None
    journey_id: str | None = None
    campaign_id: str | None = None
    idempotency_key: str
    provider: str | None = None
    provider_message_id: str | None = None
    created_at: datetime
    to: str | None = None
    subject: str | None = None


class JourneyVersion(BaseModel):
    journey_id: str
    version: int
    status: str
    entry_event: str
    created_at: datetime


class NewEvent(BaseModel):
    """An event as a caller sends it; `id` makes a retry safe (the same id is taken once)."""

    type: str = Field(min_length=1, max_length=255, pattern=r"^\S+$")
    profile_id: str = Field(min_length=1, max_length=255)
    timestamp: datetime | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    id: str | None = Field(default=None, min_length=1, max_length=255)
