"""What the store holds, as users and other systems read it (SPEC §1, §4 `--json`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator

from parcours.contracts import DeliveryStatus
from parcours.json_values import nul_at


class Profile(BaseModel):
    id: str
    email: str | None = None
    phone: str | None = None
    timezone: str | None = None
    locale: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    # {channel: {"status": "opted_in" | "opted_out", "source": str, "at": RFC 3339}}
    consent: dict[str, Any] = Field(default_factory=dict)
    device_tokens: list[str] = Field(default_factory=list)
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

    @field_validator("profile_id")
    @classmethod
    def _plain_profile_id(cls, value: str) -> str:
        # The same rule as a profile's own id: an event must not create a profile that
        # `profiles set` could not address.
        if value != value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError(f"{value!r} has spaces around it or control characters in it")
        return value

    @field_validator("properties")
    @classmethod
    def _no_nul(cls, value: dict[str, Any]) -> dict[str, Any]:
        where = nul_at(value, "properties")
        if where:
            raise ValueError(f"{where} holds a NUL character (\\u0000), which cannot be stored")
        return value

    @field_validator("timestamp")
    @classmethod
    def _utc_when_naive(cls, value: datetime | None) -> datetime | None:
        # The store reads every timestamp as UTC; saying so here keeps a naive timestamp (the
        # CLI's `--timestamp 2026-01-01T10:00:00`) from meaning the server's local time on
        # PostgreSQL, and gives content-derived event ids one canonical form.
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Suppression(BaseModel):
    """An address no message may go to on a channel, and why."""

    channel: str
    address: str
    reason: str
    source: str
    created_at: datetime
