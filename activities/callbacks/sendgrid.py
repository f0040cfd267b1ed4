"""SendGrid's Event Webhook: signed with ECDSA, a JSON array of events, each carrying the
`custom_args` we sent (`parcours_delivery_id`) and its own `sg_event_id`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader
from sqlalchemy.engine import Engine

from activities import profiles, suppression
from activities.callbacks import CallbackOutcome, SignatureError, advance, first_time
from activities.channels.base import DELIVERY_TAG
from activities.profiles import write_session
from parcours.errors import InputError

# Delivery status each event moves the message to.
_STATUS = {"delivered": "delivered", "open": "opened", "click": "clicked", "bounce": "bounced"}
# Events after which the address must not be mailed again, and the reason recorded.
_SUPPRESS = {
    "bounce": "bounced",
    "dropped": "dropped",
    "spamreport": "spam_report",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed",
}
# Events that are the person's own choice about email: their consent changes too.
_OPT_OUT = {"spamreport", "unsubscribe", "group_unsubscribe"}


def verify(public_key: str | None, body: bytes, headers: Mapping[str, str]) -> list[dict[str, Any]]:
    """The events of a callback whose signature checks out; SignatureError otherwise."""
    if not public_key:
        raise SignatureError(
            "SendGrid events are refused: SENDGRID_WEBHOOK_PUBLIC_KEY is not set, so their "
            "signature cannot be checked"
        )
    signature = headers.get(EventWebhookHeader.SIGNATURE)
    timestamp = headers.get(EventWebhookHeader.TIMESTAMP)
    if not signature or not timestamp:
        raise SignatureError(f"missing {EventWebhookHeader.SIGNATURE} or its timestamp header")
    try:
        valid = EventWebhook(public_key).verify_signature(body.decode(), signature, timestamp)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SignatureError(f"unreadable signature or key: {exc}") from None
    if not valid:
        raise SignatureError("the signature does not match the body")
    events = json.loads(body)
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise ValueError("expected a JSON array of event objects")
    return events


def apply_events(
    engine: Engine, public_key: str | None, body: bytes, headers: Mapping[str, str]
) -> CallbackOutcome:
    events = verify(public_key, body, headers)
    outcome = CallbackOutcome()
    with write_session(engine) as session:
        for event in events:
            kind = str(event.get("event") or "")
            event_id = str(event.get("sg_event_id") or "")
            if not event_id or not first_time(session, "sendgrid", event_id):
                outcome.duplicates += 1
                continue
            outcome.applied += 1
            delivery_id = event.get(DELIVERY_TAG)
            if isinstance(delivery_id, str):
                if kind in _STATUS:
                    advance(session, delivery_id, _STATUS[kind], event.get("reason"))
                elif kind == "dropped":
                    advance(session, delivery_id, "failed", f"dropped: {event.get('reason')}")
            try:
                address = profiles.normalise_email(event.get("email"))  # type: ignore[arg-type]
            except InputError:
                continue  # an event about no address we could ever send to
            if kind in _SUPPRESS:
                suppression.suppress(session, "email", address, _SUPPRESS[kind], "sendgrid")
            if kind in _OPT_OUT:
                outcome.profiles += profiles.set_consent_for_address(
                    session, "email", address, False, "sendgrid"
                )
            elif kind == "group_resubscribe":
                suppression.lift(session, "email", address)
                outcome.profiles += profiles.set_consent_for_address(
                    session, "email", address, True, "sendgrid"
                )
    return outcome
