"""Erasing a profile from the store: everything that names the person goes; counts stay.

The profile, its events, memberships, journey entries and conversions, its place in campaign
audiences and the suppression entries for its addresses are deleted. Its deliveries and
finished entries are kept, stripped of the profile id, address and rendered content, so
reports still count what was sent and where entries ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, delete, literal, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from activities.db import (
    CampaignAudienceRow,
    ConversionRow,
    DeliveryRow,
    EventRow,
    JourneyEntryRow,
    JourneyFinishRow,
    MembershipRow,
    ProfileRow,
    SuppressionRow,
)
from activities.profiles import retrying

# What an anonymised row says instead of the profile it was about.
ERASED = "(erased)"
_ERASED_PREFIX = literal("erased:", String)


@dataclass(frozen=True)
class Erasure:
    id: str
    found: bool
    events: int
    memberships: int
    deliveries_scrubbed: int


def erase_profile(engine: Engine, profile_id: str) -> Erasure:
    """Erase the profile from the store, in one transaction."""

    def erase() -> Erasure:
        with Session(engine) as session, session.begin():
            profile = session.get(ProfileRow, profile_id, with_for_update=True)
            addresses = [a for a in (profile.email, profile.phone) if a] if profile else []
            deleted = {
                table.__tablename__: _count(
                    session, delete(table).where(table.profile_id == profile_id)
                )
                for table in (
                    EventRow,
                    MembershipRow,
                    JourneyEntryRow,
                    ConversionRow,
                    CampaignAudienceRow,
                )
            }
            if addresses:
                session.execute(delete(SuppressionRow).where(SuppressionRow.address.in_(addresses)))
            # Counts stay: each row loses whatever leads back to the person (ids embed the
            # profile id, content and reasons may quote the address).
            session.execute(
                update(JourneyFinishRow)
                .where(JourneyFinishRow.profile_id == profile_id)
                .values(
                    profile_id=ERASED,
                    workflow_id=_ERASED_PREFIX + JourneyFinishRow.first_run_id,
                )
            )
            scrubbed = _count(
                session,
                update(DeliveryRow)
                .where(DeliveryRow.profile_id == profile_id)
                .values(
                    profile_id=ERASED,
                    idempotency_key=_ERASED_PREFIX + DeliveryRow.id,
                    workflow_id=None,
                    run_id=None,
                    to_address=None,
                    subject=None,
                    body=None,
                    reason=None,
                ),
            )
            found = profile is not None
            if profile is not None:
                session.delete(profile)
            return Erasure(
                profile_id,
                found,
                deleted["events"],
                deleted["memberships"],
                scrubbed,
            )

    return retrying(erase)


def _count(session: Session, statement: Any) -> int:
    return int(session.execute(statement).rowcount or 0)  # type: ignore[attr-defined]
