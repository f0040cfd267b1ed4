"""The `send_message` activity: render, check reachability, claim, send, record."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from functools import cached_property
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import catalog, events, ledger, profiles
from activities.bound import BoundActivities
from activities.channels.base import OutgoingEmail, ProviderError
from activities.channels.email import SendGridEmail
from activities.rendering import RenderError, render, template_context
from parcours.contracts import DeliveryResult, SendMessageInput


class DeliveryActivities(BoundActivities):
    """Delivery, bound to one store and one set of provider credentials."""

    @cached_property
    def email_provider(self) -> SendGridEmail | None:
        key = self.settings.sendgrid_api_key
        if key is None:
            return None
        return SendGridEmail(
            key.get_secret_value(),
            base_url=self.settings.sendgrid_url,
            timeout=self.settings.provider_timeout_seconds,
        )

    @activity.defn(name="send_message")
    async def send_message(self, request: SendMessageInput) -> DeliveryResult:
        # The store and the provider libraries block: keep them off the worker's event loop.
        return await asyncio.to_thread(self._send, request)

    def _send(self, request: SendMessageInput) -> DeliveryResult:
        claim = ledger.claim(self.engine, request)
        if claim.settled is not None:
            activity.logger.info(
                "delivery %s already settled: %s", claim.delivery_id, claim.settled.status
            )
            return claim.settled

        def settle(status: Any, reason: str) -> DeliveryResult:
            return ledger.finish(self.engine, claim.delivery_id, status, reason=reason)

        profile = profiles.get_profile(self.engine, request.profile_id)
        if profile is None:
            return settle("failed", f"profile {request.profile_id!r} does not exist (erased?)")
        address = {"email": profile.email, "sms": profile.phone, "push": None}.get(request.channel)
        if request.channel != "push" and not address:
            return settle(
                "suppressed",
                f"the profile has no {'email address' if request.channel == 'email' else 'phone number'}",
            )

        template = (
            catalog.journey_template(
                self.engine, request.journey_id, request.journey_version, request.template
            )
            if request.journey_id and request.journey_version
            else catalog.template(self.engine, request.template)
        )
        if template is None:
            return settle("failed", f"template {request.template!r} is not published")
        event = events.get_event(self.engine, request.event_id) if request.event_id else None
        context = template_context(
            profile, event, request.journey_id, request.journey_version, request.node_id
        )
        try:
            rendered = render(template, context)
        except RenderError as exc:
            return settle("failed", str(exc))

        provider = self.email_provider if request.channel == "email" else None
        if provider is None or address is None:
            # The outbox: the message is recorded here, which is the whole of sending it.
            return ledger.finish(
                self.engine,
                claim.delivery_id,
                "sent",
                provider="outbox",
                to=address,
                subject=rendered.subject,
                body=rendered.text,
            )

        ledger.start_sending(
            self.engine, claim.delivery_id, address, rendered.subject, rendered.text
        )
        try:
            message_id = provider.send(
                OutgoingEmail(
                    to=address,
                    from_email=self.settings.email_from,
                    subject=rendered.subject or "",
                    text=rendered.text,
                    html=rendered.html,
                    custom_args={"parcours_delivery_id": claim.delivery_id},
                )
            )
        except ProviderError as exc:
            if not exc.retryable:
                return settle("failed", exc.message)
            ledger.release(self.engine, claim.delivery_id, exc.message)
            raise ApplicationError(
                exc.message,
                type="ProviderUnavailable",
                next_retry_delay=_seconds(exc.retry_after),
            ) from exc
        return ledger.finish(
            self.engine,
            claim.delivery_id,
            "sent",
            provider="sendgrid",
            provider_message_id=message_id,
        )


def _seconds(value: float | None) -> timedelta | None:
    return timedelta(seconds=value) if value else None
