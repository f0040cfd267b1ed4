"""What every delivery channel shares: the message it is handed and the errors it raises."""

from __future__ import annotations

from pydantic import BaseModel, Field


class OutgoingEmail(BaseModel):
    """One rendered email to one recipient, ready for a provider."""

    to: str
    from_email: str
    subject: str
    text: str
    html: str | None = None
    # Correlation ids only (delivery id, journey): providers echo them back in their events.
    custom_args: dict[str, str] = Field(default_factory=dict)


class ProviderError(Exception):
    """A provider refused or could not take a message.

    `retryable` says whether sending the same message again later can succeed (outages, rate
    limits) or never will (a malformed address, a rejected payload).
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
