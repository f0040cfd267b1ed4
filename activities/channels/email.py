"""Email delivery through SendGrid's v3 `/mail/send` API."""

from __future__ import annotations

import http.client
import json
from typing import Any

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient

from activities.channels.base import Outgoing, ProviderError, retry_after_seconds, unreachable
from activities.metrics import provider_request

MAX_PERSONALIZATIONS = 1000
# Per-recipient bodies travel as substitutions of these tags.
TEXT_TAG = "%parcours_text%"
HTML_TAG = "%parcours_html%"


class SendGridEmail:
    """Sends one `Outgoing` email per call and turns every failure into a `ProviderError`.

    The call blocks (the library uses urllib), so run it from a sync activity or a thread.
    """

    provider = "sendgrid"

    def __init__(
        self,
        api_key: str,
        sender: str,
        base_url: str = "https://api.sendgrid.com",
        timeout: float = 10.0,
    ) -> None:
        self._sender = sender
        self._sg = SendGridAPIClient(api_key, host=base_url)
        # The library defaults to no timeout at all: a stalled connection would hold the activity
        # until Temporal's own timeout, with no error that says what happened.
        self._sg.client.timeout = timeout

    @provider_request("send")
    def send(self, message: Outgoing) -> str:
        """Hand the message to SendGrid and return its message id (`X-Message-Id`)."""
        return self._post(_mail_body(message, self._sender))

    @provider_request("send_bulk")
    def send_bulk(self, messages: list[Outgoing], tag: dict[str, str]) -> str:
        """Send up to 1,000 rendered emails in one request; returns the request's message id.

        Each recipient is one personalization carrying its own subject, and its own text and
        html through substitutions, so every mail is rendered per profile and still one HTTP
        request serves a thousand of them. `tag` (custom args of the whole request) is what
        `sent_to` looks for if the outcome of this request is ever unknown.
        """
        if not 0 < len(messages) <= MAX_PERSONALIZATIONS:
            raise ValueError(f"1 to {MAX_PERSONALIZATIONS} messages per request")
        with_html = messages[0].html is not None
        content = [{"type": "text/plain", "value": TEXT_TAG}]
        if with_html:
            content.append({"type": "text/html", "value": HTML_TAG})
        personalizations = []
        for message in messages:
            substitutions = {TEXT_TAG: message.text}
            if with_html:
                substitutions[HTML_TAG] = message.html or ""
            personalizations.append(
                {
                    "to": [{"email": message.to}],
                    "subject": message.subject or "",
                    "substitutions": substitutions,
                    "custom_args": message.correlation,
                }
            )
        body = {
            "personalizations": personalizations,
            "from": {"email": self._sender},
            "content": content,
            "custom_args": tag,
        }
        return self._post(body)

    @provider_request("lookup")
    def sent_to(
        self, key: str, value: str, limit: int = MAX_PERSONALIZATIONS
    ) -> dict[str, str] | None:
        """The addresses SendGrid holds a mail for with custom arg `key` = `value`, each with
        the mail's message id, from its Email Activity API; None when that API is not
        available to this account."""
        query = f"unique_args['{key}']=\"{value}\""
        try:
            response = self._sg.client.messages.get(query_params={"query": query, "limit": limit})
        except HTTPError as err:
            if err.status_code in (401, 403, 404):
                return None  # the Email Activity add-on is not on this account
            raise _provider_error(err) from None
        except (OSError, http.client.HTTPException) as err:
            raise unreachable("SendGrid", err) from err
        messages = json.loads(response.body or b"{}").get("messages", [])
        # Activity's msg_id is the send's X-Message-Id followed by SendGrid's own suffix.
        return {
            str(m.get("to_email", "")).lower(): str(m.get("msg_id", "")).split(".")[0]
            for m in messages
        }

    def _post(self, body: dict[str, Any]) -> str:
        try:
            response = self._sg.send(body)
        except HTTPError as err:
            raise _provider_error(err) from None
        except (OSError, http.client.HTTPException) as err:
            # URLError, refused connections and socket timeouts are all OSError; a dropped
            # connection mid-response is an HTTPException. Either way nothing says the mail
            # was refused, so another attempt may well succeed.
            raise unreachable("SendGrid", err) from err
        # SendGrid always sets the header on a 202. Should it ever be missing, the mail is still
        # accepted: failing here would only invite a duplicate send, and webhook events can be
        # matched through custom_args instead.
        return str(response.headers.get("X-Message-Id") or "")


def _mail_body(message: Outgoing, sender: str) -> dict[str, Any]:
    personalization: dict[str, Any] = {"to": [{"email": message.to}]}
    if message.correlation:
        # SendGrid echoes custom_args in every event of this mail (delivered, open, bounce...).
        personalization["custom_args"] = message.correlation
    # SendGrid rejects the request unless text/plain comes before text/html.
    content = [{"type": "text/plain", "value": message.text}]
    if message.html is not None:
        content.append({"type": "text/html", "value": message.html})
    return {
        "personalizations": [personalization],
        "from": {"email": sender},
        "subject": message.subject or "",
        "content": content,
    }


def _provider_error(err: HTTPError) -> ProviderError:
    status: int = err.status_code
    if status == 401:
        return ProviderError(
            "SendGrid 401: the API key was rejected (missing, revoked or mistyped)",
            retryable=False,
            status=status,
        )
    detail = _error_text(err.body)
    text = f"SendGrid {status}: {detail}" if detail else f"SendGrid {status}"
    if status == 429:
        return ProviderError(
            text,
            retryable=True,
            status=status,
            retry_after=retry_after_seconds(
                err.headers.get("Retry-After") if err.headers else None
            ),
        )
    # 5xx is SendGrid's trouble, not the message's; any other 4xx will fail the same way again.
    return ProviderError(text, retryable=status >= 500, status=status)


def _error_text(body: bytes | str | None) -> str:
    if not body:
        return ""
    raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        errors = json.loads(raw)["errors"]
        parts = [
            f"{e['message']} ({e['field']})" if e.get("field") else str(e["message"])
            for e in errors
        ]
    except (ValueError, KeyError, TypeError, AttributeError):
        # Proxies and load balancers in front of SendGrid answer with HTML or plain text.
        return raw.strip()[:500]
    return "; ".join(parts)
