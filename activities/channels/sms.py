"""SMS through Twilio's Messages API, with the `twilio` library."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from twilio.base import values
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client
from urllib3.exceptions import NewConnectionError

from activities.channels.base import (
    DELIVERY_TAG,
    Outgoing,
    ProviderError,
    retry_after_seconds,
    unreachable,
)
from activities.metrics import provider_request

# How far back of an attempt's start a lookup reaches: Twilio dates a message to the second, on
# its own clock.
CLOCK_SLACK = timedelta(seconds=60)
# Messages to one number a lookup reads, newest first.
LOOKUP_LIMIT = 50

# Twilio error codes that say something about the recipient rather than the request.
OPTED_OUT = 21610  # "Attempt to send to unsubscribed recipient": the phone replied STOP
RATE_LIMITED = 20429


class TwilioSms:
    """Sends one SMS per call from a number (`TWILIO_FROM`) or a Messaging Service.

    `status_callback` is a URL template with `{delivery_id}`: Twilio posts each status change of
    the message there, so the correlation id travels in the URL and no personal data does.
    """

    provider = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        base_url: str | None = None,
        status_callback: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not from_number and not messaging_service_sid:
            raise ValueError("Twilio needs TWILIO_FROM or TWILIO_MESSAGING_SERVICE_SID")
        self._credentials = (account_sid, auth_token)
        self._from = from_number
        self._service = messaging_service_sid
        self._base_url = base_url
        self._status_callback = status_callback
        self._timeout = timeout

    def _client(self) -> tuple[Client, _HeaderKeepingHttpClient]:
        # One client per call, so the headers it keeps are this call's even when sends run in
        # parallel threads.
        http = _HeaderKeepingHttpClient(timeout=self._timeout)
        client = Client(*self._credentials, http_client=http)
        if self._base_url:
            client.api.base_url = self._base_url.rstrip("/")
        return client, http

    @provider_request("send")
    def send(self, message: Outgoing) -> str:
        client, http = self._client()
        options: dict[str, Any] = {"to": message.to, "body": message.text}
        if self._service:
            options["messaging_service_sid"] = self._service
        else:
            options["from_"] = self._from
        delivery_id = message.correlation.get(DELIVERY_TAG)
        if self._status_callback and delivery_id:
            options["status_callback"] = self._status_callback.format(delivery_id=delivery_id)
        try:
            sent = client.messages.create(**options)
        except TwilioRestException as err:
            raise _provider_error(err, http) from None
        except requests.RequestException as err:
            # Refused connections, timeouts and dropped answers: nothing says Twilio refused
            # the message, so another attempt may well succeed.
            raise unreachable("Twilio", err, never_connected=_never_connected(err)) from err
        return str(sent.sid)

    @provider_request("lookup")
    def sent_since(self, to: str, since: datetime, body: str | None = None) -> list[str]:
        """The sids of the messages Twilio holds to `to` from this sender, created since
        `since` (with `body`, when given), oldest first.

        Twilio keeps no id of ours on a message (its status callback URL is not part of the
        resource), so what it does keep is the key: number, sender, body and time.
        """
        client, http = self._client()
        since = (since if since.tzinfo else since.replace(tzinfo=UTC)) - CLOCK_SLACK
        try:
            found = client.messages.list(
                to=to, from_=self._from or values.unset, limit=LOOKUP_LIMIT
            )
        except TwilioException as err:
            raise _provider_error(_refused_page(err), http) from None
        except requests.RequestException as err:
            raise unreachable("Twilio", err, never_connected=_never_connected(err)) from err
        return [
            str(m.sid)
            for m in reversed(found)
            if m.date_created is not None
            and m.date_created >= since
            and (self._service is None or m.messaging_service_sid == self._service)
            and (body is None or m.body == body)
        ]


class _HeaderKeepingHttpClient(TwilioHttpClient):  # type: ignore[misc]  # untyped library
    """The library drops response headers before raising: keep 429's `Retry-After`."""

    retry_after: str | None = None

    def request(self, *args: Any, **kwargs: Any) -> Response:
        response = super().request(*args, **kwargs)
        self.retry_after = (response.headers or {}).get("Retry-After")
        return response


def _refused_page(err: TwilioException) -> TwilioRestException:
    """A list page Twilio refused comes as a bare TwilioException holding the response: read
    it as the error a refused send would have raised."""
    if isinstance(err, TwilioRestException):
        return err
    response = err.args[1] if len(err.args) > 1 else None
    status = int(getattr(response, "status_code", 500))
    try:
        body = json.loads(getattr(response, "text", "") or "{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}  # a proxy's page, not Twilio's
    return TwilioRestException(status, "", str(body.get("message", err)), body.get("code"))


def _provider_error(err: TwilioRestException, http: _HeaderKeepingHttpClient) -> ProviderError:
    text = f"Twilio {err.status}" + (f" (code {err.code})" if err.code else "") + f": {err.msg}"
    if err.code == OPTED_OUT:
        return ProviderError(text, retryable=False, status=err.status, suppress="opted_out")
    if err.status == 429 or err.code == RATE_LIMITED:
        return ProviderError(
            text,
            retryable=True,
            status=err.status,
            retry_after=retry_after_seconds(http.retry_after),
        )
    if err.status == 401:
        return ProviderError(
            "Twilio 401: the account SID or auth token was rejected", retryable=False, status=401
        )
    return ProviderError(text, retryable=err.status >= 500, status=err.status)


def _never_connected(err: requests.RequestException) -> bool:
    # requests wraps urllib3's MaxRetryError, whose `reason` says what happened.
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return isinstance(err, requests.ConnectTimeout) or isinstance(reason, NewConnectionError)
