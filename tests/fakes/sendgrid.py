"""A local stand-in for SendGrid's v3 `/mail/send` endpoint that the real client can talk to.

It validates requests the way the real API does (auth first, then the payload, reporting every
problem at once with the offending field), so a malformed request fails here as it would in
production. `fail_next` and `hang_next` script outages, rate limits and slow answers.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

MAIL_SEND_PATH = "/v3/mail/send"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class RecordedMail:
    """One mail the fake accepted (202), flattened for assertions."""

    to: list[str]
    from_email: str
    subject: str
    text: str | None
    html: str | None
    custom_args: dict[str, Any]
    message_id: str
    body: dict[str, Any] = field(repr=False)


@dataclass
class _Failure:
    status: int
    retry_after: int | None
    message: str | None


class FakeSendGrid:
    """SendGrid on 127.0.0.1 and a random free port; use as a context manager or start()/stop()."""

    def __init__(self, api_key: str = "SG.test-key") -> None:
        self.api_key = api_key
        self.url = ""
        self._lock = threading.Condition()
        self._requests: list[RecordedMail] = []
        self._attempts = 0
        self._failures: list[_Failure] = []
        self._hangs: list[float] = []
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeSendGrid:
        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        # Handler threads are daemons, so a hung answer never blocks stop() or interpreter exit.
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            # A short poll keeps stop() (which waits for the loop to notice) from costing 0.5 s.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="fake-sendgrid",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in hang_next
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeSendGrid:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- scripting and inspection ----------------------------------------------------------

    @property
    def requests(self) -> list[RecordedMail]:
        """Every accepted mail, oldest first (a snapshot)."""
        with self._lock:
            return list(self._requests)

    @property
    def attempts(self) -> int:
        """Every POST to /v3/mail/send, whatever the answer."""
        with self._lock:
            return self._attempts

    def fail_next(
        self,
        status: int,
        times: int = 1,
        *,
        retry_after: int | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next `times` sends with `status`, before auth or payload checks."""
        with self._lock:
            self._failures.extend(_Failure(status, retry_after, message) for _ in range(times))

    def hang_next(self, seconds: float, times: int = 1) -> None:
        """Sleep `seconds` before answering the next `times` sends.

        The request is then handled normally, so a client that gave up may still find its
        mail accepted, as it can happen with the real service.
        """
        with self._lock:
            self._hangs.extend([seconds] * times)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[RecordedMail]:
        """Block until at least `count` mails were accepted; return them all."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= count, timeout):
                raise AssertionError(
                    f"FakeSendGrid: expected {count} accepted mail(s) within {timeout}s, "
                    f"got {len(self._requests)} after {self._attempts} attempt(s)"
                )
            return list(self._requests)

    # -- request handling (called from handler threads) ------------------------------------

    def _begin_attempt(self) -> tuple[float, _Failure | None]:
        with self._lock:
            self._attempts += 1
            hang = self._hangs.pop(0) if self._hangs else 0.0
            failure = self._failures.pop(0) if self._failures else None
            return hang, failure

    def _accept(self, body: dict[str, Any]) -> str:
        message_id = secrets.token_urlsafe(16)[:22]
        mail = _record(body, message_id)
        with self._lock:
            self._requests.append(mail)
            self._lock.notify_all()
        return message_id


def _handler_for(fake: FakeSendGrid) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "nginx"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            if self.path.split("?")[0] != MAIL_SEND_PATH:
                self._reply(404, _errors([("resource not found", None)]))
                return
            hang, failure = fake._begin_attempt()
            if hang and fake._stopping.wait(hang):
                return
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if failure is not None:
                headers = {}
                if failure.retry_after is not None:
                    headers["Retry-After"] = str(failure.retry_after)
                text = failure.message or _DEFAULT_FAILURE_TEXT.get(failure.status, "error")
                self._reply(failure.status, _errors([(text, None)]), headers)
                return
            if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                self._reply(
                    401,
                    _errors(
                        [("The provided authorization grant is invalid, expired, or revoked", None)]
                    ),
                )
                return
            try:
                body = json.loads(raw)
            except ValueError:
                self._reply(400, _errors([("Bad Request", None)]))
                return
            problems = _validate(body)
            if problems:
                self._reply(400, _errors(problems))
                return
            self._reply(202, None, {"X-Message-Id": fake._accept(body)})

        def do_GET(self) -> None:
            self._not_allowed_or_missing()

        do_PUT = do_PATCH = do_DELETE = do_GET

        def _not_allowed_or_missing(self) -> None:
            if self.path.split("?")[0] == MAIL_SEND_PATH:
                self._reply(405, _errors([("method not allowed", None)]))
            else:
                self._reply(404, _errors([("resource not found", None)]))

        def _reply(
            self, status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None
        ) -> None:
            payload = json.dumps(body).encode() if body is not None else b""
            try:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                if payload:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (e.g. after hang_next); nothing left to tell it

    return Handler


_DEFAULT_FAILURE_TEXT = {
    400: "Bad Request",
    401: "The provided authorization grant is invalid, expired, or revoked",
    403: "access forbidden",
    413: "Payload Too Large",
    429: "too many requests",
    500: "internal server error",
    503: "service unavailable",
}


def _errors(problems: list[tuple[str, str | None]]) -> dict[str, Any]:
    return {"errors": [{"message": m, "field": f, "help": None} for m, f in problems]}


def _valid_email(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("email"), str)
        and bool(_EMAIL.match(obj["email"]))
    )


def _validate(body: Any) -> list[tuple[str, str | None]]:
    """Every problem in a v3 mail/send payload, as (message, field), in SendGrid's words."""
    if not isinstance(body, dict):
        return [("Bad Request", None)]
    problems: list[tuple[str, str | None]] = []

    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        problems.append(
            (
                "The personalizations field is required and must have at least one "
                "personalization.",
                "personalizations",
            )
        )
        personalizations = []
    for i, p in enumerate(personalizations):
        to = p.get("to") if isinstance(p, dict) else None
        if not isinstance(to, list) or not to:
            problems.append(
                (
                    "The to array is required for all personalization objects, and must have "
                    "at least one email object with a valid email address.",
                    f"personalizations.{i}.to",
                )
            )
            continue
        for j, recipient in enumerate(to):
            if not _valid_email(recipient):
                problems.append(
                    ("Does not contain a valid address.", f"personalizations.{i}.to.{j}.email")
                )
        custom_args = p.get("custom_args")
        if custom_args is not None and not _string_map(custom_args):
            problems.append(
                ("Custom args values must be strings.", f"personalizations.{i}.custom_args")
            )

    sender = body.get("from")
    if not isinstance(sender, dict) or "email" not in sender:
        problems.append(("The from object must be provided for every email send.", "from"))
    elif not _valid_email(sender):
        problems.append(("The from email does not contain a valid address.", "from.email"))

    def has_subject(obj: Any) -> bool:
        return (
            isinstance(obj, dict) and isinstance(obj.get("subject"), str) and bool(obj["subject"])
        )

    if not has_subject(body) and not (
        personalizations and all(has_subject(p) for p in personalizations)
    ):
        problems.append(
            (
                "The subject is required. You can get around this requirement if you use a "
                "template with a subject defined or if every personalization has a subject "
                "defined.",
                "subject",
            )
        )

    content = body.get("content")
    if not isinstance(content, list) or not content:
        problems.append(
            (
                "Unless a valid template_id is provided, the content parameter is required. "
                "There must be at least one defined content block.",
                "content",
            )
        )
        content = []
    types: list[str] = []
    for k, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            problems.append(("Content types must be strings.", f"content.{k}.type"))
            continue
        types.append(block["type"])
        value = block.get("value")
        if not isinstance(value, str) or not value:
            problems.append(
                (
                    "The content value must be a string at least one character in length.",
                    f"content.{k}.value",
                )
            )
    ordered = [t for t in types if t in ("text/plain", "text/html")]
    if ordered and ordered != sorted(ordered, key=("text/plain", "text/html").index):
        problems.append(
            (
                "If present, text/plain and text/html may only be provided in the following "
                "order: text/plain, text/html.",
                "content",
            )
        )

    if "custom_args" in body and not _string_map(body["custom_args"]):
        problems.append(("Custom args values must be strings.", "custom_args"))
    return problems


def _string_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _record(body: dict[str, Any], message_id: str) -> RecordedMail:
    personalizations = body["personalizations"]
    first = personalizations[0]
    content = {block["type"]: block["value"] for block in body["content"]}
    return RecordedMail(
        to=[r["email"] for p in personalizations for r in p["to"]],
        from_email=body["from"]["email"],
        subject=first.get("subject") or body["subject"],
        text=content.get("text/plain"),
        html=content.get("text/html"),
        # Personalization-level values override message-level ones, as SendGrid merges them.
        custom_args={**body.get("custom_args", {}), **first.get("custom_args", {})},
        message_id=message_id,
        body=body,
    )
