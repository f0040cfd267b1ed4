"""Profiles: upsert with merged attributes, and lookup."""

from __future__ import annotations

import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from activities.db import ProfileRow
from parcours.errors import InputError
from parcours.records import Profile

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+[1-9]\d{6,14}$")


def set_profile(
    engine: Engine,
    profile_id: str,
    *,
    email: str | None = None,
    phone: str | None = None,
    timezone: str | None = None,
    locale: str | None = None,
    attributes: dict[str, Any] | None = None,
) -> Profile:
    """Create the profile or merge into it: given fields replace, attributes are merged."""
    _check(profile_id, email, phone, timezone)
    with Session(engine) as session, session.begin():
        row = session.get(ProfileRow, profile_id, with_for_update=True)
        if row is None:
            row = ProfileRow(id=profile_id, attributes={})
            session.add(row)
        for field, value in (
            ("email", email),
            ("phone", phone),
            ("timezone", timezone),
            ("locale", locale),
        ):
            if value is not None:
                setattr(row, field, value)
        if attributes:
            row.attributes = {**row.attributes, **attributes}
        session.flush()
        return _to_model(row)


def get_profile(engine: Engine, profile_id: str) -> Profile | None:
    with Session(engine) as session:
        row = session.get(ProfileRow, profile_id)
        return _to_model(row) if row else None


def ensure_profile(session: Session, profile_id: str) -> None:
    """Unknown profiles are created by their first event."""
    if session.get(ProfileRow, profile_id) is None:
        session.add(ProfileRow(id=profile_id, attributes={}))


def _check(profile_id: str, email: str | None, phone: str | None, timezone: str | None) -> None:
    if not profile_id or len(profile_id) > 255:
        raise InputError("id", "expected a non-empty profile id of at most 255 characters")
    if email is not None and not _EMAIL.match(email):
        raise InputError("email", f"{email!r} is not an email address")
    if phone is not None and not _PHONE.match(phone):
        raise InputError(
            "phone", f"{phone!r} is not a phone number in E.164 form (e.g. +33612345678)"
        )
    if timezone is not None:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InputError(
                "timezone", f"{timezone!r} is not an IANA time zone (e.g. Europe/Paris)"
            ) from None


def _to_model(row: ProfileRow) -> Profile:
    return Profile(
        id=row.id,
        email=row.email,
        phone=row.phone,
        timezone=row.timezone,
        locale=row.locale,
        attributes=row.attributes,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
