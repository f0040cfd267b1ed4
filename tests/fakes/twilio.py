"""A local stand-in for Twilio's Messages API (`POST /2010-04-01/Accounts/{sid}/Messages.json`)
that the real `twilio` library talks to: HTTP basic auth, form-encoded requests, Twilio's JSON
errors and codes (21211 invalid number, 21610 the phone replied STOP, 20429 too many requests).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from tests.fakes.server import FakeProvider, Reply, Request

_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<sid>AC\w+)/Messages\.json$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


@dataclass(frozen=True)
class RecordedSms:
    sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    status_callback: str | None


class FakeTwilio(FakeProvider[RecordedSms]):
    name = "twilio"

    def __init__(self, account_sid: str = "AC" + "0" * 32, auth_token: str = "test-token") -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        # Phones that replied STOP: Twilio itself refuses to message them (error 21610).
        self.unsubscribed: set[str] = set()
        # Well-formed numbers Twilio still refuses as invalid (its test number +15005550001).
        self.invalid: set[str] = set()

    def handle(self, request: Request) -> Reply:
        match = _PATH.match(request.path)
        if match is None or match["sid"] != self.account_sid:
            return _error(404, 20404, "The requested resource was not found")
        if request.method != "POST":
            return _error(405, 20004, "Method not allowed")
        failure = self.begin_attempt()
        if failure is not None:
            code = 20429 if failure.status == 429 else 20500
            headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after else {}
            return _error(failure.status, code, failure.message or "Service unavailable", headers)
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return _error(401, 20003, "Authentication Error - invalid username")
        form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
        to, body = form.get("To", ""), form.get("Body", "")
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return _error(400, 21603, "A 'From' or 'MessagingServiceSid' parameter is required")
        if not _E164.match(to) or to in self.invalid:
            return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not body:
            return _error(400, 21602, "Message body is required.")
        if to in self.unsubscribed:
            return _error(400, 21610, "Attempt to send to unsubscribed recipient")
        sid = "SM" + secrets.token_hex(16)
        self.accept(
            RecordedSms(
                sid=sid,
                to=to,
                from_=form.get("From"),
                messaging_service_sid=form.get("MessagingServiceSid"),
                body=body,
                status_callback=form.get("StatusCallback"),
            )
        )
        answer = {"sid": sid, "status": "queued", "to": to, "from": form.get("From"), "body": body}
        return _json(201, answer)


def _error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return _json(status, body, headers)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Reply:
    extra = (*(headers or {}).items(), ("Content-Type", "application/json"))
    return Reply(status, json.dumps(body).encode(), extra)
