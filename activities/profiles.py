"""Profiles: validated upserts (one code path for the CLI, the API and imports) and lookup.

Every change goes through `profile_update` (validation and normalisation, no database) and then
`upsert_profiles` (one transaction for any number of changes), so a profile set from the CLI
and the same profile read from an import file end up identical.
"""

from __future__ import annotations

import functools
import json
import random
import re
import time
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

import phonenumbers
from sqlalchemy import Insert, Table, bindparam, insert, select
from sqlalchemy import update as sql_update
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from activities.db import ProfileRow, dialect_insert, dialect_of, plan_for_values, utcnow
from parcours.errors import InputError
from parcours.json_values import nul_at
from parcours.records import Profile

CHANNELS = ("email", "sms", "push")
T = TypeVar("T")
Outcome = Literal["created", "updated", "unchanged"]

# Strict but simple: an RFC 5322 "dot-atom" local part and a DNS host name with a real top-level
# domain. Quoted local parts, IP literals and non-ASCII addresses are refused: no provider we
# send through takes them reliably.
_EMAIL = re.compile(
    r"^(?P<local>[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"(?:[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59}))$"
)
# phonenumbers extracts a number from any text ("+33612345678a" parses); only what people
# write in a phone field gets that far.
_PHONE_TEXT = re.compile(r"^\+?[0-9\s().\-/]+$")
# BCP 47 language tags, simplified: a language, then subtags (script, region, variants).
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Names the zoneinfo database lists that are files, not zones.
_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})
_PROFILES: Table = ProfileRow.__table__  # type: ignore[assignment]
# deadlock_detected, serialization_failure: the transaction was rolled back and may be rerun.
_RETRYABLE = frozenset({"40P01", "40001"})
IN_CHUNK = 500  # ids per IN (…): far below SQLite's and PostgreSQL's parameter limits


@dataclass(frozen=True)
class ProfileUpdate:
    """A validated change to one profile; build it with `profile_update`."""

    id: str
    email: str | None = None
    phone: str | None = None
    timezone: str | None = None
    locale: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    replace_attributes: bool = False  # the given attributes become all of them
    consent: Mapping[str, bool] = field(default_factory=dict)  # channel -> opted in
    consent_source: str = "api"
    add_device_tokens: tuple[str, ...] = ()
    remove_device_tokens: tuple[str, ...] = ()


def profile_update(
    profile_id: str,
    *,
    email: str | None = None,
    phone: str | None = None,
    timezone: str | None = None,
    locale: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    replace_attributes: bool = False,
    consent: Mapping[str, Any] | None = None,
    consent_source: str = "api",
    add_device_tokens: Iterable[str] = (),
    remove_device_tokens: Iterable[str] = (),
) -> ProfileUpdate:
    """Check and normalise a change; raises InputError naming the first field at fault.

    `None` means "not given" (the stored value stays); `consent` maps a channel to True
    (opted in) or False (opted out), recorded with `consent_source` and the time.
    """
    return ProfileUpdate(
        id=check_profile_id(profile_id),
        email=None if email is None else normalise_email(email),
        phone=None if phone is None else normalise_phone(phone),
        timezone=None if timezone is None else check_timezone(timezone),
        locale=None if locale is None else normalise_locale(locale),
        attributes=_check_attributes(attributes or {}),
        replace_attributes=replace_attributes,
        consent=_check_consent(consent or {}),
        consent_source=_check_text("consent_source", consent_source, 64),
        add_device_tokens=_check_tokens("device_tokens", add_device_tokens),
        remove_device_tokens=_check_tokens("device_tokens", remove_device_tokens),
    )


def check_profile_id(profile_id: str) -> str:
    if not isinstance(profile_id, str) or not profile_id or len(profile_id) > 255:
        raise InputError("id", "expected a non-empty profile id of at most 255 characters")
    if profile_id != profile_id.strip() or _CONTROL.search(profile_id):
        raise InputError("id", f"{profile_id!r} has spaces around it or control characters in it")
    return profile_id


def normalise_email(email: str) -> str:
    """The address with its domain in lower case (domains are case-insensitive, mailboxes not)."""
    email = email.strip() if isinstance(email, str) else email
    match = _EMAIL.match(email) if isinstance(email, str) else None
    if match is None or len(email) > 254 or len(match["local"]) > 64:
        raise InputError("email", f"{email!r} is not an email address")
    return f"{match['local']}@{match['domain'].lower()}"


def normalise_phone(phone: str) -> str:
    """E.164 (`+33612345678`) from what people type (`+33 6 12 34 56 78`, `+1 (650) 253-0000`)."""
    text = phone.strip() if isinstance(phone, str) else ""
    if not _PHONE_TEXT.match(text):
        raise InputError("phone", f"{phone!r} is not a phone number")
    if not text.startswith("+"):
        # Guessing the country from the profile's locale or time zone would send messages to
        # the wrong person when the guess is wrong: the caller must say.
        raise InputError(
            "phone",
            f"{phone!r} has no country code: write it in international form, "
            "starting with + (e.g. +33 6 12 34 56 78)",
        )
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        raise InputError("phone", f"{phone!r} is not a valid phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise InputError("phone", f"{phone!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def check_timezone(timezone: str) -> str:
    zones = _zones()
    if isinstance(timezone, str) and timezone in zones:
        return timezone
    hint = ""
    if isinstance(timezone, str) and timezone.lower() in _zones_by_lower_name():
        hint = f" (did you mean {_zones_by_lower_name()[timezone.lower()]}?)"
    raise InputError("timezone", f"{timezone!r} is not an IANA time zone (e.g. Europe/Paris){hint}")


def normalise_locale(locale: str) -> str:
    """A BCP 47 tag in its usual case: `fr_fr` → `fr-FR`, `zh-hant-tw` → `zh-Hant-TW`."""
    tag = locale.strip().replace("_", "-") if isinstance(locale, str) else ""
    if len(tag) > 35 or not _LOCALE.match(tag):
        raise InputError("locale", f"{locale!r} is not a locale (e.g. fr-FR)")
    language, *subtags = tag.split("-")
    cased = [language.lower()]
    for subtag in subtags:
        if len(subtag) == 2 and subtag.isalpha():
            cased.append(subtag.upper())
        elif len(subtag) == 4 and subtag.isalpha():
            cased.append(subtag.title())
        else:
            cased.append(subtag.lower())
    return "-".join(cased)


def set_profile(
    engine: Engine,
    profile_id: str,
    *,
    email: str | None = None,
    phone: str | None = None,
    timezone: str | None = None,
    locale: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    replace_attributes: bool = False,
    consent: Mapping[str, Any] | None = None,
    consent_source: str = "api",
    add_device_tokens: Iterable[str] = (),
    remove_device_tokens: Iterable[str] = (),
) -> Profile:
    """Create the profile or merge into it: given fields replace, attributes are merged key by
    key (or, with `replace_attributes`, become the whole set), consent changes are recorded with
    their source and time. Nothing is written when any field is wrong."""
    update = profile_update(
        profile_id,
        email=email,
        phone=phone,
        timezone=timezone,
        locale=locale,
        attributes=attributes,
        replace_attributes=replace_attributes,
        consent=consent,
        consent_source=consent_source,
        add_device_tokens=add_device_tokens,
        remove_device_tokens=remove_device_tokens,
    )

    def write() -> Profile:
        with write_session(engine) as session:
            _upsert(session, [update])
            row = session.get(ProfileRow, update.id)
            assert row is not None
            return _to_model(row)

    return retrying(write)


def upsert_profiles(engine: Engine, updates: Sequence[ProfileUpdate]) -> list[Outcome]:
    """Apply every update, in order, in one transaction; one outcome per update.

    Safe beside concurrent writers: existing rows are locked before they are read, and a
    profile another writer creates meanwhile is merged into rather than overwritten.
    """
    if not updates:
        return []

    def write() -> list[Outcome]:
        with write_session(engine) as session:
            return _upsert(session, updates)

    return retrying(write)


def set_consent_for_address(
    session: Session, channel: str, address: str, opted_in: bool, source: str
) -> list[str]:
    """Record a consent change for every profile holding this email or phone (a STOP reply
    names a phone, not a profile); returns their ids."""
    column = ProfileRow.email if channel == "email" else ProfileRow.phone
    ids = list(session.scalars(select(ProfileRow.id).where(column == address)))
    _upsert(
        session,
        [profile_update(i, consent={channel: opted_in}, consent_source=source) for i in ids],
    )
    return ids


def get_profile(engine: Engine, profile_id: str) -> Profile | None:
    # A Core read, without the ORM's identity map: every message and rule check reads one.
    with engine.connect() as connection:
        row = connection.execute(_PROFILE_BY_ID, {"id": profile_id}).first()
    return _to_model(row) if row else None


# Built once, bound at each execution.
_PROFILE_BY_ID = select(*ProfileRow.__table__.c).where(ProfileRow.id == bindparam("id"))


def ensure_profile(session: Session, profile_id: str) -> None:
    """Unknown profiles are created by their first event."""
    create_missing_profiles(session, [profile_id])


def create_missing_profiles(session: Session | Connection, profile_ids: Iterable[str]) -> set[str]:
    """Create empty profiles for the ids not stored yet; returns the ids created."""
    now = utcnow()
    rows = [_blank_row(profile_id, now) for profile_id in sorted(set(profile_ids))]
    return insert_missing(session, _PROFILES, rows, "id")


def insert_missing(
    session: Session | Connection, table: Table, rows: Sequence[dict[str, Any]], key: str
) -> set[str]:
    """Insert the rows whose `key` is not stored yet; returns the keys inserted.

    `INSERT … ON CONFLICT DO NOTHING RETURNING key`, sent as one executemany (SQLAlchemy packs
    it into multi-row statements compiled once): a row a concurrent writer stores first wins,
    without an error and without aborting this transaction.
    """
    if not rows:
        return set()
    dialect = dialect_of(session)
    if dialect in ("postgresql", "sqlite"):
        return set(session.execute(_insert_missing(dialect, table, key), list(rows)).scalars())
    inserted: set[str] = set()
    for row in rows:  # other databases: one savepoint per row, slower but the same result
        try:
            with session.begin_nested():
                session.execute(insert(table).values(row))
            inserted.add(row[key])
        except IntegrityError:
            pass
    return inserted


@functools.cache
def _insert_missing(dialect: str, table: Table, key: str) -> Insert:
    # Built once per table: every event and every import batch runs it.
    return (
        dialect_insert(dialect)(table)
        .on_conflict_do_nothing(index_elements=[key])
        .returning(table.c[key])
    )


def retrying(work: Callable[[], T], attempts: int = 5) -> T:
    """Run a transaction again when PostgreSQL aborted it to break a deadlock or a
    serialization conflict with a concurrent writer: nothing of it was kept, so it is safe."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) not in _RETRYABLE or attempt == attempts:
                raise
            time.sleep(random.uniform(0, 0.05 * attempt))  # let the other writer finish first
    raise AssertionError("unreachable")


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A transaction that reads rows and then writes them back.

    SQLite's driver starts transactions lazily, at the first write, so a read-then-write could
    lose a concurrent update: `BEGIN IMMEDIATE` takes the write lock first (waiting for it up
    to the busy timeout). PostgreSQL uses row locks instead (`SELECT … FOR UPDATE`).
    """
    with Session(engine) as session, session.begin():
        if engine.dialect.name == "sqlite":
            session.connection().exec_driver_sql("BEGIN IMMEDIATE")
        plan_for_values(session)
        yield session


@dataclass
class _State:
    """A profile's values while updates are applied to it."""

    email: str | None = None
    phone: str | None = None
    timezone: str | None = None
    locale: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    consent: dict[str, Any] = field(default_factory=dict)
    device_tokens: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, row: Any) -> _State:
        return cls(
            row.email,
            row.phone,
            row.timezone,
            row.locale,
            dict(row.attributes or {}),
            dict(row.consent or {}),
            list(row.device_tokens or []),
        )


_FIELDS = ("email", "phone", "timezone", "locale")


def _apply(state: _State, update: ProfileUpdate, now: datetime) -> bool:
    """Apply one update; True when it changed anything."""
    changed = False
    for name in _FIELDS:
        value = getattr(update, name)
        if value is not None and value != getattr(state, name):
            setattr(state, name, value)
            changed = True
    if update.attributes or update.replace_attributes:
        merged = {
            **({} if update.replace_attributes else state.attributes),
            **update.attributes,
        }
        # Compared as JSON: in Python 1 == 1.0 == True, but they are different attribute values.
        if _json(merged) != _json(state.attributes):
            state.attributes = merged
            changed = True
    for channel, opted_in in update.consent.items():
        status = "opted_in" if opted_in else "opted_out"
        # Restating the current choice keeps its original source and time: that is when the
        # customer made it, and re-importing the same file then changes nothing.
        if (state.consent.get(channel) or {}).get("status") != status:
            at = now.isoformat().replace("+00:00", "Z")
            state.consent = {
                **state.consent,
                channel: {"status": status, "source": update.consent_source, "at": at},
            }
            changed = True
    tokens = [t for t in state.device_tokens if t not in update.remove_device_tokens]
    tokens += [
        t for t in dict.fromkeys(update.add_device_tokens) if t not in tokens
    ]  # dict.fromkeys: no duplicates, order kept
    if tokens != state.device_tokens:
        state.device_tokens = tokens
        changed = True
    return changed


def _upsert(session: Session, updates: Sequence[ProfileUpdate]) -> list[Outcome]:
    now = utcnow()
    outcomes: list[Outcome] = ["unchanged"] * len(updates)
    positions: dict[str, list[int]] = {}
    for position, update in enumerate(updates):
        positions.setdefault(update.id, []).append(position)
    stored = _locked_states(session, positions)
    missing = [profile_id for profile_id in positions if profile_id not in stored]
    if missing:
        fresh = {profile_id: _State() for profile_id in sorted(missing)}
        for profile_id, state in fresh.items():
            for n, position in enumerate(positions[profile_id]):
                changed = _apply(state, updates[position], now)
                outcomes[position] = "created" if n == 0 else "updated" if changed else "unchanged"
        values = [_row_values(profile_id, state, now) for profile_id, state in fresh.items()]
        created = insert_missing(session, _PROFILES, values, "id")
        # Created by another writer since we looked: merge into theirs like any stored profile.
        stored.update(_locked_states(session, [p for p in missing if p not in created]))
    changed_rows: list[dict[str, Any]] = []
    for profile_id, state in stored.items():
        changed_any = False
        for position in positions[profile_id]:
            changed = _apply(state, updates[position], now)
            outcomes[position] = "updated" if changed else "unchanged"
            changed_any |= changed
        if changed_any:
            changed_rows.append({"_id": profile_id, **vars(state), "updated_at": now})
    if changed_rows:
        # One executemany for the batch; Core rather than ORM objects, which cost more than the
        # rest of an import together.
        session.execute(
            sql_update(_PROFILES).where(_PROFILES.c.id == bindparam("_id")), changed_rows
        )
    return outcomes


def _locked_states(session: Session, profile_ids: Iterable[str]) -> dict[str, _State]:
    """The stored profiles among these ids, locked until commit.

    Not `ORDER BY id`: PostgreSQL then walks the whole primary key checking each entry against
    the list (a second per 500 ids on 50,000 profiles). Rows are locked in the table's
    physical order instead, the same for every writer; a deadlock that still happens (with a
    concurrent insert) is detected by PostgreSQL and the transaction retried by `retrying`.
    """
    ids = sorted(profile_ids)
    columns = [_PROFILES.c.id, *(_PROFILES.c[name] for name in _State.__dataclass_fields__)]
    states: dict[str, _State] = {}
    for start in range(0, len(ids), IN_CHUNK):
        statement = (
            select(*columns)
            .where(_PROFILES.c.id.in_(ids[start : start + IN_CHUNK]))
            .with_for_update()
        )
        states.update((row.id, _State.of(row)) for row in session.execute(statement))
    return states


def _row_values(profile_id: str, state: _State, now: datetime) -> dict[str, Any]:
    return {"id": profile_id, **vars(state), "created_at": now, "updated_at": now}


def _blank_row(profile_id: str, now: datetime) -> dict[str, Any]:
    return _row_values(profile_id, _State(), now)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _check_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    for name in attributes:
        if not isinstance(name, str) or not name:
            raise InputError("attributes", f"{name!r} is not an attribute name")
    where = nul_at(dict(attributes), "attributes")
    if where:
        raise InputError(
            "attributes", f"{where} holds a NUL character (\\u0000), which cannot be stored"
        )
    return dict(attributes)


def _check_consent(consent: Mapping[str, Any]) -> dict[str, bool]:
    for channel, opted_in in consent.items():
        if channel not in CHANNELS:
            raise InputError(
                "consent", f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}"
            )
        if not isinstance(opted_in, bool):
            raise InputError(f"consent.{channel}", f"expected true or false, got {opted_in!r}")
    return dict(consent)


def _check_tokens(name: str, tokens: Iterable[str]) -> tuple[str, ...]:
    if isinstance(tokens, str):  # a lone token, not its characters
        tokens = [tokens]
    return tuple(_check_text(name, token, 4096, spaces=False) for token in tokens)


def _check_text(name: str, value: str, limit: int, *, spaces: bool = True) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value) > limit
        or _CONTROL.search(value)
        or (not spaces and any(c.isspace() for c in value))
    ):
        raise InputError(
            name, f"{value!r} is not a valid value (expected 1 to {limit} printable characters)"
        )
    return value


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones() - _NOT_ZONES)


@functools.cache
def _zones_by_lower_name() -> dict[str, str]:
    return {zone.lower(): zone for zone in _zones()}


def _to_model(row: ProfileRow | Row[Any]) -> Profile:
    return Profile(
        id=row.id,
        email=row.email,
        phone=row.phone,
        timezone=row.timezone,
        locale=row.locale,
        attributes=row.attributes,
        consent=row.consent or {},
        device_tokens=row.device_tokens or [],
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
