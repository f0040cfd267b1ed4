"""Who must not be messaged on a channel: the profile's own consent, and addresses suppressed
by what providers reported (a STOP reply, a bounce, a spam report, an unregistered device).

Consent belongs to a profile; a suppression belongs to an address, so it also holds for a
profile that takes that address later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import bindparam, delete, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from activities.db import SuppressionRow, dialect_of, is_one_of, utcnow
from parcours.records import Profile

OPTED_OUT = "opted_out"


def suppress(session: Session, channel: str, address: str, reason: str, source: str) -> None:
    row = session.get(SuppressionRow, (channel, address))
    if row is None:
        session.add(
            SuppressionRow(
                channel=channel, address=address, reason=reason, source=source, created_at=utcnow()
            )
        )
    else:
        row.reason, row.source = reason, source


def lift(session: Session, channel: str, address: str) -> None:
    session.execute(
        delete(SuppressionRow).where(
            SuppressionRow.channel == channel, SuppressionRow.address == address
        )
    )


def reason_for(
    session: Session | Connection, profile: Profile, channel: str, address: str
) -> str | None:
    """Why a message to this profile and address must not go, or None when it may."""
    if opted_out(profile, channel):
        return OPTED_OUT
    reason: str | None = session.scalar(
        _SUPPRESSION_REASON, {"channel": channel, "address": address}
    )
    return reason


class Consenting(Protocol):
    """What consent is read from: a `Profile`, or a campaign page's row."""

    @property
    def consent(self) -> Mapping[str, Any] | None: ...


def opted_out(profile: Consenting, channel: str) -> bool:
    return bool(((profile.consent or {}).get(channel) or {}).get("status") == "opted_out")


def suppressed_addresses(
    session: Session | Connection, channel: str, addresses: Sequence[str]
) -> dict[str, str]:
    """The suppressed ones among `addresses`, with their reasons."""
    if not addresses:
        return {}
    rows = session.execute(
        select(SuppressionRow.address, SuppressionRow.reason).where(
            SuppressionRow.channel == channel,
            is_one_of(SuppressionRow.address, addresses, dialect_of(session)),
        )
    )
    return {address: reason for address, reason in rows}


# Built once, bound at each execution: every message is checked against it.
_SUPPRESSION_REASON = select(SuppressionRow.reason).where(
    SuppressionRow.channel == bindparam("channel"), SuppressionRow.address == bindparam("address")
)


def suppressions(session: Session, channel: str | None = None) -> list[SuppressionRow]:
    query = select(SuppressionRow).order_by(SuppressionRow.channel, SuppressionRow.address)
    if channel is not None:
        query = query.where(SuppressionRow.channel == channel)
    return list(session.scalars(query))
