"""The `call_webhook` activity: a journey calling an external system.

Server errors and timeouts are retried by Temporal (the request carries an `Idempotency-Key`
so the receiver can drop repeats); a client error is an answer, recorded, and the journey goes
on either way.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import events, profiles
from activities.bound import BoundActivities
from activities.rendering import RenderError, render_text, template_context
from parcours.contracts import WebhookInput, WebhookResult
from parcours.records import Profile


class WebhookActivities(BoundActivities):
    @activity.defn(name="call_webhook")
    async def call_webhook(self, request: WebhookInput) -> WebhookResult:
        return await asyncio.to_thread(self._call, request)

    def _call(self, request: WebhookInput) -> WebhookResult:
        data = None
        if request.body is not None:
            profile = profiles.get_profile(self.engine, request.profile_id)
            event = events.get_event(self.engine, request.event_id) if request.event_id else None
            context = template_context(
                profile or Profile(id=request.profile_id),
                event,
                request.journey_id,
                request.journey_version,
                request.node_id,
            )
            try:
                data = render_text(
                    f"webhook {request.node_id} body", request.body, context
                ).encode()
            except RenderError as exc:
                return WebhookResult(status=None, error=str(exc))
        http = urllib.request.Request(request.url, data=data, method=request.method)
        http.add_header("Content-Type", "application/json")
        http.add_header("Idempotency-Key", request.idempotency_key)
        for name, value in request.headers.items():
            http.add_header(name, value)
        try:
            with urllib.request.urlopen(http, timeout=request.timeout_seconds) as response:
                return WebhookResult(status=response.status)
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code == 429:
                raise ApplicationError(
                    f"{request.url} answered {exc.code}", type="WebhookUnavailable"
                ) from None
            return WebhookResult(status=exc.code, error=f"{request.url} answered {exc.code}")
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise ApplicationError(
                f"{request.url} unreachable: {exc}", type="WebhookUnavailable"
            ) from None
