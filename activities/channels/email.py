"""Email delivery through SendGrid's v3 `/mail/send` API."""

from __future__ import annotations

import http.client
import json
from typing import Any

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient

from activities.channels.base import Outgoing, ProviderError, retry_after_seconds


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

    def send(self, message: Outgoing) -> str:
        """Hand the message to SendGrid and return its message id (`X-Message-Id`)."""
        try:
            response = self._sg.send(_mail_body(message, self._sender))
        except HTTPError as err:
            raise _provider_error(err) from None
        except (OSError, http.client.HTTPException) as err:
            # URLError, refused connections and socket timeouts are all OSError; a dropped
            # connection mid-response is an HTTPException. Either way nothing says the mail
            # was refused, so another attempt may well succeed.
            raise ProviderError(f"SendGrid unreachable: {_reason(err)}", retryable=True) from err
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


def _reason(err: BaseException) -> str:
    # URLError wraps the interesting error (e.g. ConnectionRefusedError) in `.reason`.
    reason = getattr(err, "reason", None)
    return str(reason or err) or type(err).__name__
