"""A local stand-in for Twilio's Messages API (`POST /2010-04-01/Accounts/{sid}/Messages.json`
to send, `GET` on the same path to list what was sent) that the real `twilio` library talks to:
HTTP basic auth, form-encoded requests, Twilio's JSON errors and codes (21211 invalid number,
21610 the phone replied STOP, 20429 too many requests).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
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
    created: datetime = field(default_factory=lambda: datetime.now(UTC))

    def resource(self) -> dict[str, Any]:
        """The message as Twilio's API shows it (dates in RFC 2822, to the second)."""
        return {
            "sid": self.sid,
            "status": "queued",
            "to": self.to,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "body": self.body,
            "date_created": format_datetime(self.created.replace(microsecond=0), usegmt=True),
        }


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
        if request.method == "GET":
            return self._list(request)
        if request.method != "POST":
            return _error(405, 20004, "Method not allowed")
        failure = self.begin_attempt()
        if failure is not None:
            code = 20429 if failure.status == 429 else 20500
            headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after else {}
            return _error(failure.status, code, failure.message or "Service unavailable", headers)
        if not self._authorized(request):
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
        sms = RecordedSms(
            sid="SM" + secrets.token_hex(16),
            to=to,
            from_=form.get("From"),
            messaging_service_sid=form.get("MessagingServiceSid"),
            body=body,
            status_callback=form.get("StatusCallback"),
        )
        self.accept(sms)
        return _json(201, sms.resource())

    def _authorized(self, request: Request) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return bool(request.headers.get("Authorization") == f"Basic {expected}")

    def _list(self, request: Request) -> Reply:
        """Messages newest first, filtered by `To` and `From`, one page of `PageSize`."""
        self.count_lookup()
        if not self._authorized(request):
            return _error(401, 20003, "Authentication Error - invalid username")
        query = {k: v[0] for k, v in parse_qs(request.query).items()}
        found = [
            m.resource()
            for m in reversed(self.requests)
            if query.get("To", m.to) == m.to and query.get("From", m.from_) == m.from_
        ]
        size = int(query.get("PageSize", "50"))
        return _json(200, {"messages": found[:size], "next_page_uri": None, "page_size": size})


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
