"""The `send_message` activity: claim, render, admit (consent, suppression, quiet hours,
caps), send, record."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import catalog, events, ledger, metrics, profiles, suppression
from activities.bound import BoundActivities
from activities.channels import configured_senders
from activities.channels.base import DELIVERY_TAG, Outgoing, ProviderError, Sender
from activities.channels.email import SendGridEmail
from activities.channels.sms import TwilioSms
from activities.db import utcnow
from activities.profiles import write_session
from activities.rendering import RenderError, message_context, render
from parcours.contracts import DeliveryResult, SendMessageInput
from parcours.settings import Settings


class DeliveryActivities(BoundActivities):
    """Delivery, bound to one store and one set of provider credentials."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        # Built now, so a provider set up wrong (Twilio with no sender) stops the worker at
        # start with the reason, not each message later.
        self.senders: dict[str, Sender] = configured_senders(settings)

    @activity.defn(name="send_message")
    async def send_message(self, request: SendMessageInput) -> DeliveryResult:
        # The store and the provider libraries block: keep them off the worker's event loop.
        return await asyncio.to_thread(self._send, request)

    def _send(self, request: SendMessageInput) -> DeliveryResult:
        """Send the message once. When the entry ends right after it (`request.finish`), the
        ledger records the entry's finish in the transaction that settles the message, which
        saves the workflow a local activity: about a tenth of what a short entry costs the
        worker. A message an earlier attempt settled comes back without it, and the workflow
        records the finish itself."""
        now = send_clock(request.now)
        prepared = self._prepare(request, now)
        sender = self.senders.get(request.channel)
        decided = ledger.claim_and_admit(
            self.engine, request, now, prepared, self.settings.delivery, outbox=sender is None
        )
        if isinstance(decided, ledger.Claim):
            if decided.settled is not None:
                activity.logger.info(
                    "delivery %s already settled: %s", decided.delivery_id, decided.settled.status
                )
                return decided.settled
            result = self._reconcile(request, decided, prepared)
        elif decided.result is not None:
            result = decided.result
        else:
            assert isinstance(prepared, ledger.Admission) and sender is not None
            result = self._call(sender, decided.delivery_id, prepared)
        metrics.deliveries_settled(request.channel, [result.status])
        # Ids and outcome only: reasons can quote an address, and logs are never erased.
        activity.logger.info(
            "delivery %s (%s %s): %s",
            result.delivery_id,
            request.channel,
            request.template,
            result.status,
        )
        return result

    def _prepare(
        self, request: SendMessageInput, now: datetime
    ) -> ledger.Admission | ledger.Refusal:
        """What the message would be, read and rendered before the ledger's one transaction;
        or why it cannot be sent at all."""
        profile = profiles.get_profile(self.engine, request.profile_id)
        if profile is None:
            return ledger.Refusal(
                "failed", f"profile {request.profile_id!r} does not exist (erased?)"
            )
        address = address_of(profile, request.channel)
        if address is None:
            return ledger.Refusal("suppressed", no_address(request.channel))
        template = (
            catalog.journey_template(
                self.engine, request.journey_id, request.journey_version, request.template
            )
            if request.journey_id and request.journey_version
            else catalog.template(self.engine, request.template)
        )
        if template is None:
            return ledger.Refusal("failed", f"template {request.template!r} is not published")
        event = events.get_event(self.engine, request.event_id) if request.event_id else None
        context = message_context(
            self.settings,
            template,
            profile,
            event,
            request.journey_id,
            request.journey_version,
            request.node_id,
        )
        try:
            rendered = render(template, context)
        except RenderError as exc:
            return ledger.Refusal("failed", str(exc))
        return ledger.Admission(
            request, profile, address, rendered.subject, rendered.text, now, rendered.html
        )

    def _reconcile(
        self,
        request: SendMessageInput,
        claim: ledger.Claim,
        prepared: ledger.Admission | ledger.Refusal,
    ) -> DeliveryResult:
        """An earlier attempt stopped during the provider call: ask the provider whether it
        took the message, and send it only when it certainly did not."""
        found = self._found(request, claim)
        if found is not None:
            return found
        sender = self.senders.get(request.channel)
        if isinstance(prepared, ledger.Refusal):
            return ledger.finish(
                self.engine,
                claim.delivery_id,
                prepared.status,
                reason=prepared.reason,
                finished=request.finish,
            )
        done = ledger.admit(
            self.engine,
            claim.delivery_id,
            prepared,
            self.settings.delivery,
            outbox=sender is None,
        )
        if done is not None:
            return done
        assert sender is not None, "admit settles outbox messages itself"
        return self._call(sender, claim.delivery_id, prepared)

    def _call(
        self, sender: Sender, delivery_id: str, admission: ledger.Admission
    ) -> DeliveryResult:
        """The provider call, its row already committed as `sending`; what it answered,
        recorded. A provider outage raises instead, for Temporal to try again."""
        try:
            message_id = sender.send(
                Outgoing(
                    to=admission.to,
                    subject=admission.subject,
                    text=admission.body,
                    html=admission.html,
                    correlation={DELIVERY_TAG: delivery_id},
                )
            )
        except ProviderError as exc:
            return self._refused(delivery_id, admission, exc)
        return ledger.finish(
            self.engine,
            delivery_id,
            "sent",
            provider=sender.provider,
            provider_message_id=message_id,
            finished=admission.request.finish,
        )

    def _found(self, request: SendMessageInput, claim: ledger.Claim) -> DeliveryResult | None:
        """The unknown attempt settled as sent when the provider holds the message, as failed
        when it cannot say; None when it holds no trace of it, so it is sent now."""
        sender = self.senders.get(request.channel)
        settle = functools.partial(
            ledger.finish, self.engine, claim.delivery_id, finished=request.finish
        )
        if sender is None:  # the outbox: the ledger row is the message
            return settle("sent", provider="outbox")
        if isinstance(sender, SendGridEmail) and claim.to is not None:
            found = sender.sent_to(DELIVERY_TAG, claim.delivery_id)
            if found is not None:
                if claim.to.lower() not in found:
                    return None
                message_id = found[claim.to.lower()] or None
                return settle("sent", provider="sendgrid", provider_message_id=message_id)
        if isinstance(sender, TwilioSms) and claim.to is not None and claim.sent_at is not None:
            sid = sms_taken(
                self.engine, sender, request.profile_id, claim.to, claim.sent_at, claim.body
            )
            if sid is None:
                return None
            return settle("sent", provider="twilio", provider_message_id=sid)
        return settle("failed", reason=ledger.UNKNOWN_OUTCOME)

    def _refused(
        self, delivery_id: str, admission: ledger.Admission, exc: ProviderError
    ) -> DeliveryResult:
        settle = functools.partial(
            ledger.finish, self.engine, delivery_id, finished=admission.request.finish
        )
        if exc.suppress is not None:
            channel = admission.request.channel
            with write_session(self.engine) as session:
                suppression.suppress(session, channel, admission.to, exc.suppress, "provider")
            return settle("suppressed", reason=f"{exc.suppress}: {exc.message}")
        if not exc.retryable:
            return settle("failed", reason=exc.message)
        if not exc.ambiguous:
            # The provider answered, or was never reached: it did not take the message.
            ledger.release(self.engine, delivery_id, exc.message)
        raise ApplicationError(
            exc.message,
            type="ProviderUnavailable",
            next_retry_delay=_seconds(retry_delay(exc, self.settings)),
        ) from exc


def retry_delay(exc: ProviderError, settings: Settings) -> float | None:
    """When to try a refused send again: the provider's Retry-After, if it said one. A request
    that got no answer may still land at the provider, and the retry asks the provider about
    it first: the retry waits for it as long again as the client did."""
    if exc.ambiguous:
        return max(exc.retry_after or 0.0, settings.provider_timeout_seconds)
    return exc.retry_after


def sms_taken(
    engine: Engine,
    sender: TwilioSms,
    profile_id: str,
    to: str,
    since: datetime,
    body: str | None = None,
) -> str | None:
    """The sid of a message Twilio holds for an attempt to `to` that began at `since`, or None.

    Twilio keeps no id of ours, so a message counts as this attempt's when it went to the
    number from our sender (with the same body, when the ledger kept it), since the attempt
    began, and no other delivery of the profile holds its sid.
    """
    found = sender.sent_since(to, since, body)
    return next(iter(ledger.unclaimed(engine, profile_id, sender.provider, found)), None)


_MISSING = {
    "email": "the profile has no email address",
    "sms": "the profile has no phone number",
    "push": "the profile has no push device token",
}


def send_clock(asked_at: datetime | None) -> datetime:
    """The later of the two clocks: the workflow's runs ahead on a time-skipping server, the
    wall clock is ahead when this is a retry long after the workflow asked."""
    return max(asked_at or utcnow(), utcnow())


def no_address(channel: str) -> str:
    return f"no_address: {_MISSING[channel]}"


class Addressed(Protocol):
    """What choosing an address reads of a profile: a `Profile`, or a campaign page's row."""

    @property
    def email(self) -> str | None: ...
    @property
    def phone(self) -> str | None: ...
    @property
    def device_tokens(self) -> Sequence[str] | None: ...


def address_of(profile: Addressed, channel: str) -> str | None:
    if channel == "email":
        return profile.email
    if channel == "sms":
        return profile.phone
    # The newest device: one delivery is one message to one address.
    return profile.device_tokens[-1] if profile.device_tokens else None


def _seconds(value: float | None) -> timedelta | None:
    return timedelta(seconds=value) if value else None
