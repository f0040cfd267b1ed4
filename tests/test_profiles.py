"""Profiles: identities, consent, device tokens, merges, erasure, and bulk event writes.

Store tests run on SQLite and PostgreSQL (the `engine` fixture), the CLI ones too (through
PARCOURS_DATABASE_URL).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from activities import ledger
from activities.db import EventRow, MembershipRow, utcnow
from activities.erasure import ERASED, erase_profile
from activities.events import get_event, record_event, record_events
from activities.profiles import (
    get_profile,
    normalise_email,
    normalise_locale,
    normalise_phone,
    profile_update,
    set_profile,
    upsert_profiles,
)
from parcours.contracts import SendMessageInput
from parcours.errors import InputError
from parcours.records import NewEvent
from starter.cli import app

# --- identities (no database) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "e164"),
    [
        ("+33 6 12 34 56 78", "+33612345678"),
        ("+33612345678", "+33612345678"),
        ("+33 (0)6 12 34 56 78", "+33612345678"),
        ("+1 (650) 253-0000", "+16502530000"),
        ("  +44 20 7946 0958 ", "+442079460958"),
        ("+49 30 901820", "+4930901820"),
    ],
)
def test_phone_numbers_are_normalised_to_e164(typed: str, e164: str) -> None:
    assert normalise_phone(typed) == e164


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("0612345678", "has no country code: write it in international form"),
        ("06 12 34 56 78", "has no country code"),
        ("+33 6 12", "is not a valid phone number"),
        ("+33 6 12 34 56 78 90", "is not a valid phone number"),
        ("+999 12345678", "is not a valid phone number"),
        ("+33612345678a", "is not a phone number"),
        ("tel:+33612345678", "is not a phone number"),
        ("", "is not a phone number"),
    ],
)
def test_bad_phone_numbers_are_refused_with_their_reason(typed: str, reason: str) -> None:
    with pytest.raises(InputError) as raised:
        normalise_phone(typed)
    assert raised.value.field == "phone"
    assert raised.value.message.startswith(repr(typed))
    assert reason in raised.value.message


def test_emails_are_checked_strictly_and_their_domain_lowercased() -> None:
    assert normalise_email(" Ada.Lovelace+news@Example.CO.uk ") == "Ada.Lovelace+news@example.co.uk"
    for bad in ("ada", "ada@", "@example.com", "ada@example", "a b@example.com", "ada@@x.com",
                "ada.@example.com", "ada@-example.com", "ada@example.c0m", "a" * 65 + "@x.com"):  # fmt: skip
        with pytest.raises(InputError, match=r"^email: .* is not an email address$"):
            normalise_email(bad)


def test_time_zones_and_locales() -> None:
    assert normalise_locale("fr_fr") == "fr-FR"
    assert normalise_locale("zh-hant-tw") == "zh-Hant-TW"
    with pytest.raises(InputError, match="locale: 'french' is not a locale"):
        normalise_locale("french")
    assert profile_update("ada", timezone="America/New_York").timezone == "America/New_York"
    with pytest.raises(InputError, match=r"did you mean Europe/Paris\?"):
        profile_update("ada", timezone="europe/paris")
    with pytest.raises(InputError, match="timezone: 'localtime' is not an IANA time zone"):
        profile_update("ada", timezone="localtime")


def test_consent_channels_and_values_are_checked() -> None:
    with pytest.raises(InputError, match="consent: unknown channel 'fax'"):
        profile_update("ada", consent={"fax": True})
    with pytest.raises(InputError, match=r"consent\.sms: expected true or false, got 'no'"):
        profile_update("ada", consent={"sms": "no"})
    with pytest.raises(InputError, match=r"^id: "):
        profile_update(" ada")


# --- the store ---------------------------------------------------------------------------


def test_phone_is_stored_in_e164_and_refused_without_writing(engine: Engine) -> None:
    assert set_profile(engine, "ada", phone="+33 6 12 34 56 78").phone == "+33612345678"
    with pytest.raises(InputError, match="phone: '0612345678' has no country code"):
        set_profile(engine, "ada", phone="0612345678", attributes={"plan": "pro"})
    profile = get_profile(engine, "ada")
    assert profile is not None and (profile.phone, profile.attributes) == ("+33612345678", {})


def test_consent_is_recorded_with_its_source_and_time(engine: Engine) -> None:
    before = utcnow()
    profile = set_profile(
        engine, "ada", email="ada@example.com", consent={"email": False}, consent_source="import"
    )
    record = profile.consent["email"]
    assert (record["status"], record["source"]) == ("opted_out", "import")
    at = datetime.fromisoformat(record["at"])
    assert before - timedelta(seconds=1) <= at <= utcnow() and record["at"].endswith("Z")

    # Restating the same choice keeps when and where it was made.
    again = set_profile(engine, "ada", consent={"email": False}, consent_source="cli")
    assert again.consent == profile.consent
    changed = set_profile(
        engine, "ada", consent={"email": True, "sms": False}, consent_source="cli"
    )
    assert changed.consent["email"]["status"] == "opted_in"
    assert changed.consent["email"]["source"] == "cli"
    assert changed.consent["sms"]["status"] == "opted_out"
    assert get_profile(engine, "ada") == changed


def test_device_tokens_are_added_and_removed_without_duplicates(engine: Engine) -> None:
    profile = set_profile(engine, "ada", add_device_tokens=["t1", "t2", "t1"])
    assert profile.device_tokens == ["t1", "t2"]
    profile = set_profile(
        engine, "ada", add_device_tokens=["t2", "t3"], remove_device_tokens=["t1"]
    )
    assert profile.device_tokens == ["t2", "t3"]
    with pytest.raises(InputError, match="device_tokens"):
        set_profile(engine, "ada", add_device_tokens=["has space"])


def test_upserts_merge_and_say_what_they_did(engine: Engine) -> None:
    outcomes = upsert_profiles(
        engine,
        [
            profile_update("ada", email="ada@example.com", attributes={"plan": "pro", "n": 1}),
            profile_update("ada", attributes={"n": 1}),  # same value: unchanged
            profile_update("ada", attributes={"n": True}),  # 1 == True in Python, not in JSON
            profile_update("bob", locale="fr"),
        ],
    )
    assert outcomes == ["created", "unchanged", "updated", "created"]
    ada = get_profile(engine, "ada")
    assert ada is not None and ada.attributes == {"plan": "pro", "n": True}
    outcomes = upsert_profiles(
        engine,
        [
            profile_update("ada", email="ada@example.com", attributes={"plan": "pro"}),
            profile_update("bob", timezone="Europe/Paris", attributes={"age": 3}),
        ],
    )
    assert outcomes == ["unchanged", "updated"]
    bob = get_profile(engine, "bob")
    assert bob is not None
    assert (bob.locale, bob.timezone, bob.attributes) == ("fr", "Europe/Paris", {"age": 3})
    assert bob.updated_at is not None and bob.created_at is not None
    assert bob.updated_at > bob.created_at


def test_concurrent_writers_lose_no_update(engine: Engine) -> None:
    """Eight writers each add their own attribute to the same new profile at once."""

    def write(n: int) -> None:
        set_profile(engine, "shared", attributes={f"k{n}": n}, add_device_tokens=[f"t{n}"])

    run_concurrently(write, 8)
    profile = get_profile(engine, "shared")
    assert profile is not None
    assert profile.attributes == {f"k{n}": n for n in range(8)}
    assert sorted(profile.device_tokens) == sorted(f"t{n}" for n in range(8))


def test_erase_removes_the_profile_its_events_and_memberships(engine: Engine) -> None:
    set_profile(engine, "ada", email="ada@example.com")
    set_profile(engine, "bob", email="bob@example.com")
    record_events(
        engine,
        [
            NewEvent(type="a", profile_id="ada", id="e1"),
            NewEvent(type="b", profile_id="ada", id="e2"),
            NewEvent(type="a", profile_id="bob", id="e3"),
        ],
    )
    now = utcnow()
    with Session(engine) as session, session.begin():
        for segment, profile in (("vip", "ada"), ("all", "ada"), ("all", "bob")):
            session.add(
                MembershipRow(segment_id=segment, profile_id=profile, active=True, entered_at=now)
            )
    ledger.claim(engine, delivery_for("ada"))

    erased = erase_profile(engine, "ada")
    assert (erased.found, erased.events, erased.memberships) == (True, 2, 2)
    assert get_profile(engine, "ada") is None
    assert get_event(engine, "e1") is None and get_event(engine, "e3") is not None
    with Session(engine) as session:
        assert session.scalars(select(MembershipRow.profile_id)).all() == ["bob"]
    assert ledger.list_deliveries(engine, "ada") == []
    kept = ledger.list_deliveries(engine, ERASED)
    assert [(d.channel, d.template) for d in kept] == [("email", "welcome-email")], "counted"
    assert get_profile(engine, "bob") is not None
    assert erase_profile(engine, "ada").found is False


# --- bulk events ---------------------------------------------------------------------------


def test_record_events_reports_duplicates_within_and_across_batches(engine: Engine) -> None:
    first = record_events(
        engine,
        [
            NewEvent(type="a", profile_id="ada", id="x"),
            NewEvent(type="a", profile_id="ada", id="y"),
            NewEvent(type="other", profile_id="bob", id="x"),  # same id: a duplicate of the first
            NewEvent(type="a", profile_id="cy"),
        ],
    )
    assert [dup for _, dup in first] == [False, False, True, False]
    assert first[2][0] == first[0][0], "a duplicate reads as the event stored"
    assert get_profile(engine, "bob") is None, "nothing was stored for bob"
    assert get_profile(engine, "cy") is not None
    second = record_events(
        engine,
        [
            NewEvent(type="a", profile_id="ada", id="y"),
            NewEvent(type="a", profile_id="ada", id="z"),
        ],
    )
    assert [(event.id, dup) for event, dup in second] == [("y", True), ("z", False)]
    assert second[0][0] == first[1][0]
    assert record_events(engine, []) == []
    assert record_event(engine, NewEvent(type="a", profile_id="ada", id="z"))[1] is True


def test_naive_timestamps_are_utc(engine: Engine) -> None:
    event, _ = record_event(
        engine, NewEvent(type="a", profile_id="ada", timestamp=datetime(2026, 1, 1, 9, 30))
    )
    stored = get_event(engine, event.id)
    assert stored is not None
    assert stored.timestamp == datetime(2026, 1, 1, 9, 30, tzinfo=UTC)


def test_concurrent_bulk_writers_store_each_id_once(engine: Engine) -> None:
    """Six writers send overlapping batches; every id is accepted by exactly one of them."""
    results: list[list[tuple[str, bool]]] = [[] for _ in range(6)]

    def write(n: int) -> None:
        for batch in range(4):
            events = [
                NewEvent(type="t", profile_id=f"p{i % 7}", id=f"e{i}")
                for i in range(batch * 50 + n * 10, batch * 50 + n * 10 + 60)
            ]
            results[n] += [(event.id, dup) for event, dup in record_events(engine, events)]

    run_concurrently(write, 6)
    accepted = [event_id for result in results for event_id, dup in result if not dup]
    sent = {event_id for result in results for event_id, _ in result}
    assert sorted(accepted) == sorted(sent), "each id accepted once, and only once"
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(EventRow)) == len(sent)


# --- CLI -----------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str) -> Callable[..., Any]:
    monkeypatch.setenv("PARCOURS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PARCOURS_DATABASE_URL", database_url)
    runner = CliRunner()

    def invoke(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, list(args))
        return result.exit_code, result.stdout, result.stderr

    return invoke


def test_cli_sets_every_profile_field(cli: Callable[..., Any]) -> None:
    code, out, err = cli(
        "profiles", "set", "ada",
        "--email", "ada@example.com",
        "--phone", "+33 6 12 34 56 78",
        "--timezone", "Europe/Paris",
        "--locale", "fr_FR",
        "--attr", "plan=pro",
        "--consent", "email=false",
        "--consent", "push=true",
        "--device-token", "tok-1",
        "--device-token", "tok-1",
        "--json",
    )  # fmt: skip
    assert (code, err) == (0, "")
    profile = json.loads(out)
    assert profile["phone"] == "+33612345678" and profile["locale"] == "fr-FR"
    assert profile["device_tokens"] == ["tok-1"]
    assert profile["consent"]["email"]["status"] == "opted_out"
    assert profile["consent"]["email"]["source"] == "cli"
    assert profile["consent"]["push"]["status"] == "opted_in"

    code, out, _ = cli("profiles", "show", "ada")
    assert code == 0
    assert re.search(r"consent\.email +opted_out \(from cli, 20", out)
    assert "+33612345678" in out and "tok-1" in out

    code, _, err = cli("profiles", "set", "ada", "--phone", "06 12 34 56 78")
    assert code == 1
    assert err.strip() == (
        "error: phone: '06 12 34 56 78' has no country code: write it in international form, "
        "starting with + (e.g. +33 6 12 34 56 78)"
    )
    code, _, err = cli("profiles", "set", "ada", "--consent", "email=maybe")
    assert (code, err.strip()) == (1, "error: consent.email: expected true or false, got 'maybe'")


def test_cli_erases_a_profile(cli: Callable[..., Any]) -> None:
    cli("profiles", "set", "ada", "--email", "ada@example.com")
    code, out, _ = cli("profiles", "erase", "ada")
    assert (code, out.strip()) == (
        0,
        "erased profile 'ada': 0 events and 0 segment memberships removed, "
        "0 deliveries anonymised, 0 journey entries ended",
    )
    code, out, _ = cli("profiles", "erase", "ada", "--json")
    assert (code, json.loads(out)) == (
        0,
        {
            "id": "ada",
            "erased": False,
            "events": 0,
            "memberships": 0,
            "deliveries_scrubbed": 0,
            "journeys_ended": [],
        },
    )
    code, out, _ = cli("profiles", "erase", "ada")
    assert out.strip() == "no profile 'ada': nothing to erase"


# --- helpers ---------------------------------------------------------------------------------


def run_concurrently(work: Callable[[int], None], count: int) -> None:
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        barrier.wait()
        try:
            work(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def delivery_for(profile_id: str) -> SendMessageInput:
    return SendMessageInput(
        profile_id=profile_id,
        channel="email",
        template="welcome-email",
        idempotency_key=f"k-{profile_id}",
    )
