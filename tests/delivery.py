"""Helpers for delivery tests: settings pointed at the fake providers, templates, signatures."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import Engine
from twilio.request_validator import RequestValidator

from activities import catalog
from parcours.loader import load_paths
from parcours.settings import Settings
from tests.fakes.push import FakePush
from tests.fakes.sendgrid import FakeSendGrid
from tests.fakes.twilio import FakeTwilio

TEMPLATES = """\
kind: template
id: promo-email
channel: email
subject: "Hello {{ profile.attributes.first_name }}"
body: "A deal for you. Unsubscribe: {{ unsubscribe_url }}"
---
kind: template
id: promo-sms
channel: sms
body: "A deal for you. Reply STOP to opt out."
---
kind: template
id: promo-push
channel: push
subject: "A deal"
body: "Open the app for a deal"
---
kind: template
id: broken-email
channel: email
subject: "Hi {{ profile.attributes.nickname }}"
body: "b"
"""


def publish_templates(engine: Engine, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "templates.yaml").write_text(TEMPLATES)
    catalog.publish(engine, load_paths([directory]))


def with_providers(
    settings: Settings,
    sendgrid: FakeSendGrid | None = None,
    twilio: FakeTwilio | None = None,
    push: FakePush | None = None,
    **delivery: Any,
) -> Settings:
    update: dict[str, Any] = {"api_url": "https://parcours.example.com"}
    if sendgrid is not None:
        update |= {"sendgrid_api_key": sendgrid.api_key, "sendgrid_url": sendgrid.url}
    if twilio is not None:
        update |= {
            "twilio_account_sid": twilio.account_sid,
            "twilio_auth_token": twilio.auth_token,
            "twilio_from": "+15005550006",
            "twilio_url": twilio.url,
        }
    if push is not None:
        update |= {"push_url": push.send_url, "push_token": push.access_token}
    if delivery:
        update["delivery"] = settings.delivery.model_validate(
            {**settings.delivery.model_dump(), **delivery}
        )
    return Settings.model_validate({**settings.model_dump(), **update})


class SendGridSigner:
    """Signs Event Webhook bodies the way SendGrid does (ECDSA P-256 over timestamp + body)."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = base64.b64encode(der).decode()

    def sign(self, events: Any, timestamp: str = "1764300000") -> tuple[bytes, dict[str, str]]:
        body = json.dumps(events).encode()
        signature = self._key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return body, {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        }


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    return str(RequestValidator(auth_token).compute_signature(url, params))
