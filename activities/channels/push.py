"""Push notifications through an HTTP gateway that takes FCM's HTTP v1 request shape."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

from activities.channels.base import Outgoing, ProviderError, retry_after_seconds, unreachable
from activities.metrics import provider_request


class PushGateway:
    """POSTs `{"message": {"token", "notification", "data"}}` to FCM's `messages:send` URL
    (`https://fcm.googleapis.com/v1/projects/PROJECT/messages:send`) or a gateway like it."""

    provider = "push"

    def __init__(self, url: str, token: str, timeout: float = 10.0) -> None:
        self._url = url
        self._token = token
        self._timeout = timeout

    @provider_request("send")
    def send(self, message: Outgoing) -> str:
        notification = {"body": message.text}
        if message.subject:
            notification["title"] = message.subject
        payload = {
            "message": {
                "token": message.to,
                "notification": notification,
                # FCM hands `data` to the app untouched: the correlation id comes back in opens.
                "data": message.correlation,
            }
        }
        request = urllib.request.Request(
            self._url,
            data=json.dumps(payload).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {self._token}",
                "Content-Type": "application/json; charset=UTF-8",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                answer = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            raise _provider_error(err) from None
        except (OSError, http.client.HTTPException, ValueError) as err:
            raise unreachable("push gateway", err) from err
        return str(answer.get("name") or "")


def _provider_error(err: urllib.error.HTTPError) -> ProviderError:
    status = err.code
    error = _error(err.read())
    codes = {d.get("errorCode") for d in error.get("details", []) if isinstance(d, dict)}
    text = f"push {status} {error.get('status') or ''}: {error.get('message') or err.reason}"
    if "UNREGISTERED" in codes:
        # The app was uninstalled or the token rotated: this token will never work again.
        return ProviderError(text, retryable=False, status=status, suppress="unregistered")
    if status == 429 or "QUOTA_EXCEEDED" in codes:
        return ProviderError(
            text,
            retryable=True,
            status=status,
            retry_after=retry_after_seconds(err.headers.get("Retry-After")),
        )
    return ProviderError(text, retryable=status >= 500, status=status)


def _error(body: bytes) -> dict[str, Any]:
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return {"message": body.decode("utf-8", "replace").strip()[:500]}
    return error if isinstance(error, dict) else {"message": str(error)}
