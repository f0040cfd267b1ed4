"""Provider callbacks: delivery status, opens and clicks, bounces, unsubscribes and STOP
replies, applied to the ledger, the suppression list and profiles' consent.

Each callback is verified by the provider's own signature before anything is read from it, and
applied at most once: a replayed callback changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from activities import metrics
from activities.db import DeliveryRow, ProviderEventRow, utcnow

# How far a delivery has got; a callback never moves it back (an open after a click).
_PROGRESS = {"queued": 0, "sending": 1, "sent": 2, "delivered": 3, "opened": 4, "clicked": 5}


class SignatureError(Exception):
    """The callback is not from the provider (bad or missing signature): refuse it whole."""


@dataclass
class CallbackOutcome:
    applied: int = 0
    duplicates: int = 0
    # Profiles whose consent changed: their segments are refreshed by the caller.
    profiles: list[str] = field(default_factory=list)


def first_time(session: Session, provider: str, event_id: str) -> bool:
    """Record a callback event as applied; False when it already was."""
    try:
        with session.begin_nested():
            session.add(
                ProviderEventRow(provider=provider, event_id=event_id, received_at=utcnow())
            )
    except IntegrityError:
        return False
    return True


def advance(session: Session, delivery_id: str, status: str, reason: str | None = None) -> bool:
    """Move a delivery to a later status; bounced and failed end it whatever it reached."""
    row = session.get(DeliveryRow, delivery_id)
    if row is None or row.status == "suppressed":
        return False
    if status in ("bounced", "failed"):
        if row.status in ("bounced", "failed"):
            return False
    elif _PROGRESS.get(status, -1) <= _PROGRESS.get(row.status, 99):
        return False
    row.status, row.reason = status, reason if reason is not None else row.reason
    metrics.deliveries_settled(row.channel, [status])
    return True
