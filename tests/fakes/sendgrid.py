"""A local stand-in for SendGrid's v3 `/mail/send` endpoint that the real client can talk to.

It validates requests the way the real API does (auth first, then the payload, reporting every
problem at once with the offending field), so a malformed request fails here as it would in
production. The trouble it can be scripted with comes from `FakeProvider`.
"""

from __future__ import annotations

import gc
import json
import re
import secrets
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from pydantic_core import from_json

from tests.fakes.server import FakeProvider, Reply, Request

MAIL_SEND_PATH = "/v3/mail/send"
MESSAGES_PATH = "/v3/messages"
_QUERY = re.compile(r"^unique_args\['(?P<key>[\w.-]+)'\]=\"(?P<value>[^\"]*)\"$")
MAX_PERSONALIZATIONS = 1000
MAX_SUBSTITUTION_BYTES = 10_000
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


class FakeSendGrid(FakeProvider[RecordedMail]):
    """SendGrid on 127.0.0.1 and a random free port."""

    name = "sendgrid"

    def __init__(self, api_key: str = "SG.test-key") -> None:
        super().__init__()
        self.api_key = api_key

    def handle(self, request: Request) -> Reply:
        if request.path == MESSAGES_PATH and request.method == "GET":
            return self._activity(request)
        if request.path != MAIL_SEND_PATH:
            return _reply(404, _errors([("resource not found", None)]))
        if request.method != "POST":
            return _reply(405, _errors([("method not allowed", None)]))
        failure = self.begin_attempt()
        if failure is not None:
            headers = {}
            if failure.retry_after is not None:
                headers["Retry-After"] = str(failure.retry_after)
            text = failure.message or _DEFAULT_FAILURE_TEXT.get(failure.status, "error")
            return _reply(failure.status, _errors([(text, None)]), headers)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _reply(
                401,
                _errors(
                    [("The provided authorization grant is invalid, expired, or revoked", None)]
                ),
            )
        try:
            # pydantic_core's parser: the same objects as json.loads, in half the time.
            body = from_json(request.body)
        except ValueError:
            return _reply(400, _errors([("Bad Request", None)]))
        problems = _validate(body)
        if problems:
            return _reply(400, _errors(problems))
        message_id = secrets.token_urlsafe(16)[:22]
        for mail in _records(body, message_id):
            self.accept(mail)
        return _reply(202, None, {"X-Message-Id": message_id})

    def _activity(self, request: Request) -> Reply:
        """The Email Activity API (`GET /v3/messages`), for the one query form Parcours uses:
        `unique_args['KEY']="VALUE"`, the mails whose custom args hold that value."""
        self.count_lookup()
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _reply(401, _errors([("authorization required", None)]))
        params = parse_qs(request.query)
        match = _QUERY.match(params.get("query", [""])[0])
        if match is None:
            return _reply(400, _errors([("invalid query", "query")]))
        limit = int(params.get("limit", ["10"])[0])
        found = [
            {
                "msg_id": f"{m.message_id}.filterdrecv-5645d9c87f-2x4bn-1-0",
                "to_email": m.to[0],
                "status": "delivered",
            }
            for m in self.requests
            if m.custom_args.get(match["key"]) == match["value"]
        ]
        return _reply(200, {"messages": found[:limit]})


def _reply(
    status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None
) -> Reply:
    payload = json.dumps(body).encode() if body is not None else b""
    extra = [("Content-Type", "application/json")] if payload else []
    return Reply(status, payload, (*(headers or {}).items(), *extra))


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
    if len(personalizations) > MAX_PERSONALIZATIONS:
        problems.append(
            (
                "The personalizations field is limited to 1000 objects per request.",
                "personalizations",
            )
        )
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
        substitutions = p.get("substitutions")
        if substitutions is not None and (
            not _string_map(substitutions) or _too_large(substitutions)
        ):
            problems.append(
                (
                    "Substitutions must be strings, 10,000 bytes at most per personalization.",
                    f"personalizations.{i}.substitutions",
                )
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


def _too_large(substitutions: dict[str, str]) -> bool:
    """Over `MAX_SUBSTITUTION_BYTES` once encoded by `json.dumps`, which escapes a character
    into 12 bytes at most (a surrogate pair of `\\uXXXX`): most personalizations are under that
    bound and need not be encoded, a thousand of them per request."""
    bound = 2 + sum(12 * (len(k) + len(v)) + 8 for k, v in substitutions.items())
    return bound > MAX_SUBSTITUTION_BYTES and (
        len(json.dumps(substitutions).encode()) > MAX_SUBSTITUTION_BYTES
    )


def _string_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _records(body: dict[str, Any], message_id: str) -> list[RecordedMail]:
    """One mail per personalization, with its substitutions applied, as SendGrid sends them."""
    content = {block["type"]: block["value"] for block in body["content"]}
    mails = []
    for n, p in enumerate(body["personalizations"]):
        substitutions = p.get("substitutions") or {}

        def fill(text: str | None, substitutions: dict[str, str] = substitutions) -> str | None:
            for tag, value in substitutions.items():
                text = text.replace(tag, value) if text is not None else None
            return text

        mails.append(
            RecordedMail(
                to=[r["email"] for r in p["to"]],
                from_email=body["from"]["email"],
                subject=fill(p.get("subject") or body["subject"]) or "",
                text=fill(content.get("text/plain")),
                html=fill(content.get("text/html")),
                # Personalization-level values override message-level ones, as SendGrid merges.
                custom_args={**body.get("custom_args", {}), **p.get("custom_args", {})},
                # SendGrid's per-recipient message id: the request's, then a suffix.
                message_id=f"{message_id}.{n}" if n else message_id,
                body=body,
            )
        )
    return mails


def serve_until_stdin_closes() -> None:
    """`python -m tests.fakes.sendgrid`: the fake in a process of its own, so parsing and
    recording what it receives does not take the GIL of the process it measures
    (bench/campaigns.py). Prints its URL and API key, serves until its stdin closes."""
    # What it records only grows: after each full collection, what survived is set aside
    # (`gc.freeze`), or every later one walks all the mails again. A full collection over a few
    # hundred thousand mails took this process hundreds of milliseconds, landing in whichever
    # round of a benchmark ran then, and on a machine's last free core in a campaign's.
    gc.callbacks.append(_freeze_after_full_collections)
    with FakeSendGrid() as fake:
        print(fake.url, fake.api_key, flush=True)
        sys.stdin.read()


def _freeze_after_full_collections(phase: str, info: dict[str, int]) -> None:
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()


if __name__ == "__main__":
    serve_until_stdin_closes()
