"""A local stand-in for FCM's HTTP v1 `messages:send` endpoint: bearer auth, the v1 request
shape, and FCM's errors (UNREGISTERED for a token that will never work again)."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from tests.fakes.server import FakeProvider, Reply, Request

_PATH = re.compile(r"^/v1/projects/(?P<project>[\w-]+)/messages:send$")


@dataclass(frozen=True)
class RecordedPush:
    name: str
    token: str
    title: str | None
    body: str | None
    data: dict[str, str]


class FakePush(FakeProvider[RecordedPush]):
    name = "push"

    def __init__(self, access_token: str = "push-test-token", project: str = "parcours") -> None:
        super().__init__()
        self.access_token = access_token
        self.project = project
        self.unregistered: set[str] = set()

    @property
    def send_url(self) -> str:
        return f"{self.url}/v1/projects/{self.project}/messages:send"

    def handle(self, request: Request) -> Reply:
        match = _PATH.match(request.path)
        if match is None or match["project"] != self.project or request.method != "POST":
            return _error(404, "NOT_FOUND", "Requested entity was not found.")
        failure = self.begin_attempt()
        if failure is not None:
            status = "RESOURCE_EXHAUSTED" if failure.status == 429 else "UNAVAILABLE"
            headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after else {}
            return _error(
                failure.status,
                status,
                failure.message or "The service is unavailable.",
                headers=headers,
            )
        if request.headers.get("Authorization") != f"Bearer {self.access_token}":
            return _error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        try:
            message = json.loads(request.body)["message"]
            token = message["token"]
            notification = message.get("notification") or {}
            data = message.get("data") or {}
        except (ValueError, KeyError, TypeError):
            return _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if not isinstance(token, str) or not token:
            return _error(400, "INVALID_ARGUMENT", "The registration token is not valid.")
        if not all(isinstance(v, str) for v in data.values()):
            return _error(400, "INVALID_ARGUMENT", "data values must be strings")
        if token in self.unregistered:
            return _error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
        name = f"projects/{self.project}/messages/0:{secrets.token_hex(8)}"
        self.accept(
            RecordedPush(name, token, notification.get("title"), notification.get("body"), data)
        )
        return Reply(
            200, json.dumps({"name": name}).encode(), (("Content-Type", "application/json"),)
        )


def _error(
    status: int,
    code: str,
    message: str,
    fcm_code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    error: dict[str, Any] = {"code": status, "message": message, "status": code}
    if fcm_code:
        error["details"] = [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": fcm_code}
        ]
    extra = (*(headers or {}).items(), ("Content-Type", "application/json"))
    return Reply(status, json.dumps({"error": error}).encode(), extra)
