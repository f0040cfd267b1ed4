"""Delivery channels: one module per provider behind `base.Sender`.

A channel whose provider has no credentials in the settings is not here: its messages go to
the outbox (recorded in the ledger, not sent), which is what `parcours dev` does by default.
"""

from __future__ import annotations

from activities.channels.base import Sender
from activities.channels.email import SendGridEmail
from activities.channels.push import PushGateway
from activities.channels.sms import TwilioSms
from parcours.settings import Settings

TWILIO_STATUS_PATH = "/v1/webhooks/twilio/status"


def configured_senders(settings: Settings) -> dict[str, Sender]:
    timeout = settings.provider_timeout_seconds
    senders: dict[str, Sender] = {}
    if settings.sendgrid_api_key is not None:
        senders["email"] = SendGridEmail(
            settings.sendgrid_api_key.get_secret_value(),
            settings.email_from,
            base_url=settings.sendgrid_url,
            timeout=timeout,
        )
    if settings.twilio_account_sid and settings.twilio_auth_token is not None:
        senders["sms"] = TwilioSms(
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
            from_number=settings.twilio_from,
            messaging_service_sid=settings.twilio_messaging_service_sid,
            base_url=settings.twilio_url,
            status_callback=(
                f"{settings.api_url.rstrip('/')}{TWILIO_STATUS_PATH}?delivery={{delivery_id}}"
                if settings.api_url
                else None
            ),
            timeout=timeout,
        )
    if settings.push_url and settings.push_token is not None:
        senders["push"] = PushGateway(
            settings.push_url, settings.push_token.get_secret_value(), timeout=timeout
        )
    return senders
