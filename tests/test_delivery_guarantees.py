"""What `send_message` promises on every channel: consent, suppression, frequency caps, quiet
hours, exactly-once, failures that end one delivery only. Run as the activity it is, against
the fake providers, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy.engine import Engine
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import ledger
from activities.callbacks import twilio as twilio_callbacks
from activities.delivery import DeliveryActivities
from activities.profiles import get_profile, set_profile
from activities.unsubscribe import make_token, read_token, unsubscribe
from parcours.contracts import DeliveryResult, SendMessageInput
from parcours.errors import InputError
from parcours.settings import Settings
from tests.conftest import commits_on
from tests.delivery import publish_templates, twilio_signature, with_providers
from tests.fakes.push import FakePush
from tests.fakes.sendgrid import FakeSendGrid
from tests.fakes.twilio import FakeTwilio

INBOUND_URL = "https://parcours.example.com/v1/webhooks/twilio/inbound"
_keys = itertools.count()


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
def push() -> Iterator[FakePush]:
    with FakePush() as fake:
        yield fake


@pytest.fixture
def hub(engine: Engine, tmp_path: Path) -> Engine:
    publish_templates(engine, tmp_path / "defs")
    set_profile(
        engine,
        "ada",
        email="ada@example.com",
        phone="+33612345678",
        timezone="Europe/Paris",
        attributes={"first_name": "Ada"},
        add_device_tokens=["old-device", "new-device"],
    )
    return engine


def message(channel: str, template: str, **fields: Any) -> SendMessageInput:
    return SendMessageInput(
        idempotency_key=f"test/{next(_keys)}",
        profile_id="ada",
        channel=channel,  # type: ignore[arg-type]
        template=template,
        **fields,
    )


async def send(settings: Settings, request: SendMessageInput) -> DeliveryResult:
    activities = DeliveryActivities(settings)
    result: DeliveryResult = await ActivityEnvironment().run(activities.send_message, request)
    return result


async def reply(engine: Engine, settings: Settings, body: str, sid: str) -> None:
    params = {"From": "+33612345678", "To": "+15005550006", "Body": body, "MessageSid": sid}
    token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else ""
    twilio_callbacks.apply_inbound(
        engine, token, INBOUND_URL, params, twilio_signature(token, INBOUND_URL, params)
    )


async def test_an_sms_goes_through_twilio_with_a_status_callback_that_carries_only_ids(
    hub: Engine, settings: Settings, twilio: FakeTwilio
) -> None:
    settings = with_providers(settings, twilio=twilio)
    result = await send(settings, message("sms", "promo-sms"))
    assert result.status == "sent", result

    [sms] = twilio.wait_for(1)
    assert result.status == "sent" and result.provider_message_id == sms.sid
    assert (sms.to, sms.from_, sms.body) == ("+33612345678", "+15005550006", sms.body)
    assert sms.status_callback is not None
    callback = urlsplit(sms.status_callback)
    assert callback.path == "/v1/webhooks/twilio/status"
    assert parse_qs(callback.query) == {"delivery": [result.delivery_id]}
    [delivery] = ledger.list_deliveries(hub, "ada")
    assert (delivery.provider, delivery.provider_message_id) == ("twilio", sms.sid)


async def test_after_stop_the_next_sms_is_suppressed_and_start_reverses_it(
    hub: Engine, settings: Settings, twilio: FakeTwilio
) -> None:
    settings = with_providers(settings, twilio=twilio)
    await reply(hub, settings, " stop ", "SM-in-1")

    stopped = await send(settings, message("sms", "promo-sms"))
    assert (stopped.status, stopped.reason) == ("suppressed", "opted_out")
    assert twilio.attempts == 0, "a suppressed message never reaches the provider"
    profile = get_profile(hub, "ada")
    assert profile is not None and profile.consent["sms"]["status"] == "opted_out"
    assert profile.consent["sms"]["source"] == "sms_reply"

    await reply(hub, settings, "START", "SM-in-2")
    resumed = await send(settings, message("sms", "promo-sms"))
    assert resumed.status == "sent"
    assert len(twilio.wait_for(1)) == 1


async def test_a_phone_twilio_reports_as_unsubscribed_is_suppressed_from_then_on(
    hub: Engine, settings: Settings, twilio: FakeTwilio
) -> None:
    twilio.unsubscribed.add("+33612345678")
    settings = with_providers(settings, twilio=twilio)
    first = await send(settings, message("sms", "promo-sms"))
    assert first.status == "suppressed" and first.reason is not None
    assert first.reason.startswith("opted_out: Twilio 400 (code 21610)")
    second = await send(settings, message("sms", "promo-sms"))
    assert (second.status, second.reason) == ("suppressed", "opted_out")
    assert twilio.attempts == 1


async def test_a_fourth_marketing_email_inside_the_cap_is_suppressed_but_not_a_transactional(
    hub: Engine, settings: Settings, fake_sendgrid: FakeSendGrid
) -> None:
    settings = with_providers(settings, sendgrid=fake_sendgrid, frequency_caps={"email": "3/7d"})
    results = [await send(settings, message("email", "promo-email")) for _ in range(4)]
    assert [r.status for r in results] == ["sent", "sent", "sent", "suppressed"]
    assert results[3].reason == "frequency_cap"
    receipt = await send(settings, message("email", "promo-email", priority="transactional"))
    assert receipt.status == "sent"
    assert len(fake_sendgrid.wait_for(4)) == 4
    # Other channels have their own count.
    sms = await send(with_providers(settings, twilio=None), message("sms", "promo-sms"))
    assert sms.status == "sent"


async def test_the_cap_window_slides(
    hub: Engine, settings: Settings, fake_sendgrid: FakeSendGrid
) -> None:
    settings = with_providers(settings, sendgrid=fake_sendgrid, frequency_caps={"email": "1/1d"})
    start = datetime(2027, 6, 1, 12, tzinfo=UTC)
    assert (await send(settings, message("email", "promo-email", now=start))).status == "sent"
    later = start + timedelta(hours=23)
    capped = await send(settings, message("email", "promo-email", now=later))
    assert capped.reason == "frequency_cap"
    next_day = start + timedelta(days=1, minutes=1)
    assert (await send(settings, message("email", "promo-email", now=next_day))).status == "sent"


async def test_quiet_hours_hold_a_marketing_sms_until_the_window_opens_in_the_profiles_zone(
    hub: Engine, settings: Settings, twilio: FakeTwilio
) -> None:
    settings = with_providers(settings, twilio=twilio, quiet_hours={"sms": "21:00-08:00"})
    # 23:00 in Paris (UTC+1 in winter).
    late = datetime(2027, 1, 15, 22, tzinfo=UTC)
    held = await send(settings, message("sms", "promo-sms", now=late))
    assert held.status == "queued"
    assert held.not_before == datetime(2027, 1, 16, 7, tzinfo=UTC)  # 08:00 in Paris
    assert twilio.attempts == 0

    transactional = await send(
        settings, message("sms", "promo-sms", priority="transactional", now=late)
    )
    assert transactional.status == "sent"
    ignoring = await send(
        settings, message("sms", "promo-sms", respect_quiet_hours=False, now=late)
    )
    assert ignoring.status == "sent"


async def test_a_message_held_longer_than_its_maximum_age_expires(
    hub: Engine, settings: Settings, twilio: FakeTwilio
) -> None:
    settings = with_providers(
        settings, twilio=twilio, quiet_hours={"sms": "21:00-08:00"}, max_age="6h"
    )
    late = datetime(2027, 1, 15, 22, tzinfo=UTC)
    expired = await send(settings, message("sms", "promo-sms", now=late))
    assert (expired.status, expired.reason) == ("suppressed", "expired")
    assert twilio.attempts == 0


async def test_a_template_with_a_missing_variable_fails_only_its_delivery_naming_it(
    hub: Engine, settings: Settings, fake_sendgrid: FakeSendGrid
) -> None:
    settings = with_providers(settings, sendgrid=fake_sendgrid)
    broken = await send(settings, message("email", "broken-email"))
    assert broken.status == "failed"
    assert (
        broken.reason
        == "template 'broken-email' subject: 'dict object' has no attribute 'nickname'"
    )
    assert (await send(settings, message("email", "promo-email"))).status == "sent"
    assert fake_sendgrid.attempts == 1


async def test_a_first_attempt_claims_and_admits_its_message_in_one_write(
    hub: Engine, settings: Settings, fake_sendgrid: FakeSendGrid
) -> None:
    with commits_on(hub) as commits:
        # The outbox: the one write both claims the message and records it sent.
        sent = await send(with_providers(settings), message("email", "promo-email"))
        refused = await send(with_providers(settings), message("email", "broken-email"))
        assert (sent.status, refused.status, len(commits)) == ("sent", "failed", 2)
        # A provider: `sending` is committed before the call, the answer after it.
        commits.clear()
        via = await send(
            with_providers(settings, sendgrid=fake_sendgrid), message("email", "promo-email")
        )
        assert (via.status, len(commits)) == ("sent", 2)


async def test_a_retried_send_after_an_outage_reaches_the_provider_once(
    hub: Engine, settings: Settings, fake_sendgrid: FakeSendGrid
) -> None:
    settings = with_providers(settings, sendgrid=fake_sendgrid)
    fake_sendgrid.fail_next(429, retry_after=7)
    request = message("email", "promo-email")
    with pytest.raises(ApplicationError) as raised:
        await send(settings, request)
    assert raised.value.next_retry_delay == timedelta(seconds=7)
    assert (await send(settings, request)).status == "sent"
    assert (await send(settings, request)).status == "sent"  # a replayed activity
    assert len(fake_sendgrid.wait_for(1)) == 1 and fake_sendgrid.attempts == 2


def read_and_forge(settings: Settings, token: str) -> str:
    signature = token.split(".")[1]
    return make_token(settings, "bob", "email").split(".")[0] + "." + signature


async def test_the_unsubscribe_link_is_signed_and_opts_the_profile_out(
    hub: Engine, settings: Settings, fake_sendgrid: FakeSendGrid
) -> None:
    settings = with_providers(settings, sendgrid=fake_sendgrid)
    await send(settings, message("email", "promo-email"))
    [mail] = fake_sendgrid.wait_for(1)
    assert mail.text is not None
    url = mail.text.split("Unsubscribe: ")[1]
    assert url.startswith("https://parcours.example.com/v1/unsubscribe?token=")
    token = parse_qs(urlsplit(url).query)["token"][0]
    assert "ada@example.com" not in token

    assert read_token(settings, token) == ("ada", "email")
    # Another profile's id under ada's signature (editing the signature's last base64 digit
    # could leave its bytes unchanged: those bits are padding).
    tampered = read_and_forge(settings, token)
    with pytest.raises(InputError, match="not a valid unsubscribe token"):
        unsubscribe(hub, settings, tampered)
    unsubscribe(hub, settings, token)
    after = await send(settings, message("email", "promo-email"))
    assert (after.status, after.reason) == ("suppressed", "opted_out")


async def test_push_goes_to_the_newest_device_and_an_unregistered_token_is_suppressed(
    hub: Engine, settings: Settings, push: FakePush
) -> None:
    settings = with_providers(settings, push=push)
    sent = await send(settings, message("push", "promo-push"))
    [notification] = push.wait_for(1)
    assert (notification.token, notification.title) == ("new-device", "A deal")
    assert notification.data == {"parcours_delivery_id": sent.delivery_id}
    assert sent.provider_message_id == notification.name

    push.unregistered.add("new-device")
    gone = await send(settings, message("push", "promo-push"))
    assert gone.status == "suppressed" and (gone.reason or "").startswith("unregistered")
    again = await send(settings, message("push", "promo-push"))
    assert (again.status, again.reason) == ("suppressed", "unregistered")
    assert push.attempts == 2


async def test_a_send_that_timed_out_after_sendgrid_took_it_is_not_sent_again(
    hub: Engine, settings: Settings, fake_sendgrid: FakeSendGrid
) -> None:
    settings = with_providers(settings, sendgrid=fake_sendgrid).model_copy(
        update={"provider_timeout_seconds": 0.5}
    )
    fake_sendgrid.hang_next(1.5)  # answers after the client gave up, and keeps the mail
    request = message("email", "promo-email")
    with pytest.raises(ApplicationError, match="SendGrid unreachable"):
        await send(settings, request)
    fake_sendgrid.wait_for(1)
    retried = await send(settings, request)
    assert retried.status == "sent"
    assert len(fake_sendgrid.requests) == 1 and fake_sendgrid.attempts == 1
    # Found through Email Activity, and recorded with the id the send's answer would have had.
    assert retried.provider_message_id == fake_sendgrid.requests[0].message_id


async def test_an_interrupted_send_the_provider_never_got_is_sent_on_retry(
    hub: Engine, settings: Settings, fake_sendgrid: FakeSendGrid
) -> None:
    settings = with_providers(settings, sendgrid=fake_sendgrid)
    request = message("email", "promo-email")
    claim = ledger.claim(hub, request)
    ada = get_profile(hub, "ada")
    assert ada is not None
    admission = ledger.Admission(request, ada, "ada@example.com", "s", "b", datetime.now(UTC))
    assert ledger.admit(hub, claim.delivery_id, admission, settings.delivery) is None
    # The worker died before the request left: SendGrid has no trace, so it is sent now.
    assert (await send(settings, request)).status == "sent"
    [mail] = fake_sendgrid.wait_for(1)
    assert mail.custom_args == {"parcours_delivery_id": claim.delivery_id}


async def test_an_sms_whose_outcome_is_unknown_is_found_at_twilio_and_not_sent_twice(
    hub: Engine, settings: Settings, twilio: FakeTwilio
) -> None:
    settings = with_providers(settings, twilio=twilio).model_copy(
        update={"provider_timeout_seconds": 0.5}
    )
    twilio.hang_next(1.5)  # answers after the client gave up, and keeps the message
    request = message("sms", "promo-sms")
    with pytest.raises(ApplicationError) as raised:
        await send(settings, request)
    # The retry asks Twilio only once the request had as long again to land.
    assert raised.value.next_retry_delay == timedelta(seconds=0.5)
    [sms] = twilio.wait_for(1)
    # Twilio holds no id of ours: the message to this number, with this text, since the attempt.
    retried = await send(settings, request)
    assert (retried.status, retried.provider_message_id) == ("sent", sms.sid)
    assert len(twilio.requests) == 1 and twilio.attempts == 1


async def test_an_sms_twilio_never_took_is_sent_on_retry_though_it_sent_the_same_text_before(
    hub: Engine, settings: Settings, twilio: FakeTwilio
) -> None:
    settings = with_providers(settings, twilio=twilio).model_copy(
        update={"provider_timeout_seconds": 0.5}
    )
    earlier = await send(settings, message("sms", "promo-sms"))
    twilio.hang_next(1.0)
    twilio.fail_next(503)  # after the hang: the client gave up, and Twilio took nothing
    request = message("sms", "promo-sms")
    with pytest.raises(ApplicationError):
        await send(settings, request)
    # The earlier message matches number, sender, text and time, but its delivery holds it.
    retried = await send(settings, request)
    assert retried.status == "sent" and retried.provider_message_id != earlier.provider_message_id
    assert [t.sid for t in twilio.wait_for(2)] == [
        earlier.provider_message_id,
        retried.provider_message_id,
    ]
