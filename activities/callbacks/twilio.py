"""Twilio's callbacks: message status (to the URL we gave each message) and inbound replies
(STOP opts the phone out, START opts it back in), both signed with `X-Twilio-Signature`."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.engine import Engine
from twilio.request_validator import RequestValidator

from activities import profiles, suppression
from activities.callbacks import CallbackOutcome, SignatureError, advance, first_time
from activities.profiles import write_session

# Twilio's standard opt-out and opt-in keywords (Advanced Opt-Out sends `OptOutType` too).
STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START_WORDS = frozenset({"START", "YES", "UNSTOP"})
_STATUS = {"sent": "sent", "delivered": "delivered", "undelivered": "failed", "failed": "failed"}


def verify(
    auth_token: str | None, url: str, params: Mapping[str, str], signature: str | None
) -> None:
    """`url` is the full URL Twilio called (scheme, host, path and query) as it saw it."""
    if not auth_token:
        raise SignatureError(
            "Twilio callbacks are refused: TWILIO_AUTH_TOKEN is not set, so their signature "
            "cannot be checked"
        )
    if not signature:
        raise SignatureError("missing X-Twilio-Signature header")
    if not RequestValidator(auth_token).validate(url, dict(params), signature):
        raise SignatureError("the X-Twilio-Signature does not match the request")


def apply_status(
    engine: Engine,
    auth_token: str | None,
    url: str,
    params: Mapping[str, str],
    signature: str | None,
    delivery_id: str,
) -> CallbackOutcome:
    verify(auth_token, url, params, signature)
    status = params.get("MessageStatus", "")
    key = f"status:{params.get('MessageSid', '')}:{status}"
    with write_session(engine) as session:
        if not first_time(session, "twilio", key):
            return CallbackOutcome(duplicates=1)
        if status in _STATUS:
            code = params.get("ErrorCode")
            reason = f"Twilio error {code}" if code and _STATUS[status] == "failed" else None
            advance(session, delivery_id, _STATUS[status], reason)
    return CallbackOutcome(applied=1)


def apply_inbound(
    engine: Engine,
    auth_token: str | None,
    url: str,
    params: Mapping[str, str],
    signature: str | None,
) -> CallbackOutcome:
    verify(auth_token, url, params, signature)
    phone = params.get("From", "")
    words = params.get("Body", "").strip().upper().split()
    keyword = (params.get("OptOutType") or (words[0] if words else "")).upper()
    with write_session(engine) as session:
        if not first_time(session, "twilio", f"inbound:{params.get('MessageSid', '')}"):
            return CallbackOutcome(duplicates=1)
        changed: list[str] = []
        if keyword in STOP_WORDS:
            suppression.suppress(session, "sms", phone, suppression.OPTED_OUT, "twilio_inbound")
            changed = profiles.set_consent_for_address(session, "sms", phone, False, "sms_reply")
        elif keyword in START_WORDS:
            suppression.lift(session, "sms", phone)
            changed = profiles.set_consent_for_address(session, "sms", phone, True, "sms_reply")
    return CallbackOutcome(applied=1, profiles=changed)
