"""Provider callbacks: only a correctly signed one is applied, and only once."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from activities import ledger, suppression
from activities.callbacks import SignatureError
from activities.callbacks import sendgrid as sendgrid_callbacks
from activities.callbacks import twilio as twilio_callbacks
from activities.profiles import get_profile, set_profile
from parcours.contracts import SendMessageInput
from tests.delivery import SendGridSigner, twilio_signature

TOKEN = "twilio-auth-token"
STATUS_URL = "https://parcours.example.com/v1/webhooks/twilio/status?delivery={}"
INBOUND_URL = "https://parcours.example.com/v1/webhooks/twilio/inbound"


@pytest.fixture
def sent(engine: Engine, tmp_path: Path) -> str:
    """A delivery the provider took: what callbacks report on."""
    set_profile(engine, "ada", email="ada@example.com", phone="+33612345678")
    request = SendMessageInput(
        idempotency_key="k", profile_id="ada", channel="email", template="promo"
    )
    claim = ledger.claim(engine, request)
    ledger.finish(engine, claim.delivery_id, "sent", provider="sendgrid")
    return claim.delivery_id


def status(engine: Engine, delivery_id: str) -> tuple[str, str | None]:
    [delivery] = [d for d in ledger.list_deliveries(engine) if d.id == delivery_id]
    return delivery.status, delivery.reason


def suppressed(engine: Engine) -> list[tuple[str, str, str]]:
    with Session(engine) as session:
        return [(r.channel, r.address, r.reason) for r in suppression.suppressions(session)]


def event(kind: str, delivery_id: str, n: int, **extra: str) -> dict[str, str]:
    return {
        "event": kind,
        "email": "ada@example.com",
        "sg_event_id": f"ev-{n}",
        "sg_message_id": "msg-1",
        "parcours_delivery_id": delivery_id,
        "timestamp": "1764300000",
        **extra,
    }


def test_signed_sendgrid_events_move_the_delivery_forward_and_never_back(
    engine: Engine, sent: str
) -> None:
    signer = SendGridSigner()
    body, headers = signer.sign(
        [event("delivered", sent, 1), event("click", sent, 2), event("open", sent, 3)]
    )
    outcome = sendgrid_callbacks.apply_events(engine, signer.public_key, body, headers)
    assert (outcome.applied, outcome.duplicates) == (3, 0)
    assert status(engine, sent) == ("clicked", None)


def test_a_replayed_sendgrid_event_changes_nothing_the_second_time(
    engine: Engine, sent: str
) -> None:
    signer = SendGridSigner()
    body, headers = signer.sign([event("bounce", sent, 1, reason="550 mailbox unknown")])
    first = sendgrid_callbacks.apply_events(engine, signer.public_key, body, headers)
    assert status(engine, sent) == ("bounced", "550 mailbox unknown")
    assert suppressed(engine) == [("email", "ada@example.com", "bounced")]

    # The address is cleared by hand; a replay of the old bounce must not suppress it again.
    with Session(engine) as session, session.begin():
        suppression.lift(session, "email", "ada@example.com")
    again = sendgrid_callbacks.apply_events(engine, signer.public_key, body, headers)
    assert (first.applied, again.applied, again.duplicates) == (1, 0, 1)
    assert suppressed(engine) == []


@pytest.mark.parametrize("tamper", ["body", "signature", "timestamp", "missing", "other key"])
def test_a_sendgrid_callback_with_a_tampered_body_or_signature_is_refused_and_changes_nothing(
    engine: Engine, sent: str, tamper: str
) -> None:
    signer = SendGridSigner()
    body, headers = signer.sign([event("spamreport", sent, 1)])
    key = signer.public_key
    if tamper == "body":
        body = body.replace(b"spamreport", b"delivered!")
    elif tamper == "signature":
        headers["X-Twilio-Email-Event-Webhook-Signature"] = SendGridSigner().sign([])[1][
            "X-Twilio-Email-Event-Webhook-Signature"
        ]
    elif tamper == "timestamp":
        headers["X-Twilio-Email-Event-Webhook-Timestamp"] = "1764300001"
    elif tamper == "missing":
        headers = {}
    else:
        key = SendGridSigner().public_key
    with pytest.raises(SignatureError):
        sendgrid_callbacks.apply_events(engine, key, body, headers)
    assert status(engine, sent) == ("sent", None)
    assert suppressed(engine) == []
    profile = get_profile(engine, "ada")
    assert profile is not None and "email" not in profile.consent


def test_sendgrid_callbacks_are_refused_when_no_key_is_configured(
    engine: Engine, sent: str
) -> None:
    body, headers = SendGridSigner().sign([event("delivered", sent, 1)])
    with pytest.raises(SignatureError, match="SENDGRID_WEBHOOK_PUBLIC_KEY is not set"):
        sendgrid_callbacks.apply_events(engine, None, body, headers)


def test_an_unsubscribe_or_spam_report_opts_every_profile_with_the_address_out(
    engine: Engine, sent: str
) -> None:
    set_profile(engine, "ada-2", email="ada@example.com")
    signer = SendGridSigner()
    body, headers = signer.sign([event("spamreport", sent, 1)])
    outcome = sendgrid_callbacks.apply_events(engine, signer.public_key, body, headers)
    assert sorted(outcome.profiles) == ["ada", "ada-2"]
    for profile_id in ("ada", "ada-2"):
        profile = get_profile(engine, profile_id)
        assert profile is not None
        assert profile.consent["email"]["status"] == "opted_out"
        assert profile.consent["email"]["source"] == "sendgrid"
    assert suppressed(engine) == [("email", "ada@example.com", "spam_report")]


def test_a_signed_twilio_status_callback_is_applied_once(engine: Engine, sent: str) -> None:
    url = STATUS_URL.format(sent)
    params = {"MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "30003"}
    signature = twilio_signature(TOKEN, url, params)
    twilio_callbacks.apply_status(engine, TOKEN, url, params, signature, sent)
    assert status(engine, sent) == ("failed", "Twilio error 30003")
    again = twilio_callbacks.apply_status(engine, TOKEN, url, params, signature, sent)
    assert again.duplicates == 1


@pytest.mark.parametrize("tamper", ["body", "url", "signature", "missing", "no token"])
def test_a_twilio_callback_with_a_tampered_request_or_signature_is_refused(
    engine: Engine, sent: str, tamper: str
) -> None:
    params = {"From": "+33612345678", "Body": "STOP", "MessageSid": "SM9"}
    signature: str | None = twilio_signature(TOKEN, INBOUND_URL, params)
    url, token = INBOUND_URL, TOKEN
    if tamper == "body":
        params = {**params, "From": "+33699999999"}
    elif tamper == "url":
        url = INBOUND_URL + "?x=1"
    elif tamper == "signature":
        signature = twilio_signature("another-token", INBOUND_URL, params)
    elif tamper == "missing":
        signature = None
    else:
        token = ""
    with pytest.raises(SignatureError):
        twilio_callbacks.apply_inbound(engine, token, url, params, signature)
    assert suppressed(engine) == []
    profile = get_profile(engine, "ada")
    assert profile is not None and "sms" not in profile.consent


@pytest.mark.parametrize(
    ("reply", "opted_out"),
    [
        ("STOP", True),
        ("stopall", True),
        ("Unsubscribe please", True),
        ("cancel", True),
        ("END", True),
        ("quit", True),
        ("hello", None),
    ],
)
def test_opt_out_keywords(engine: Engine, sent: str, reply: str, opted_out: bool | None) -> None:
    params = {"From": "+33612345678", "Body": reply, "MessageSid": f"SM-{reply}"}
    twilio_callbacks.apply_inbound(
        engine, TOKEN, INBOUND_URL, params, twilio_signature(TOKEN, INBOUND_URL, params)
    )
    profile = get_profile(engine, "ada")
    assert profile is not None
    if opted_out:
        assert profile.consent["sms"]["status"] == "opted_out"
        assert suppressed(engine) == [("sms", "+33612345678", "opted_out")]
    else:
        assert "sms" not in profile.consent and suppressed(engine) == []


def test_sendgrid_events_must_be_a_json_array(engine: Engine) -> None:
    signer = SendGridSigner()
    body, headers = signer.sign({"event": "open"})
    with pytest.raises(ValueError, match="expected a JSON array"):
        sendgrid_callbacks.apply_events(engine, signer.public_key, body, headers)
