"""The SMS (Twilio library) and push (FCM v1 shape) channels against their fakes: what reaches
the provider, and how each failure is classified."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from activities.channels.base import Outgoing, ProviderError
from activities.channels.push import PushGateway
from activities.channels.sms import TwilioSms
from tests.fakes.push import FakePush
from tests.fakes.twilio import FakeTwilio
from tests.stack import free_port

TEXT = Outgoing(
    to="+33612345678", text="Your code is 1234", correlation={"parcours_delivery_id": "d1"}
)
PUSH = Outgoing(
    to="device-1", subject="Hi", text="Open me", correlation={"parcours_delivery_id": "d2"}
)


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
def push() -> Iterator[FakePush]:
    with FakePush() as fake:
        yield fake


def sms(fake: FakeTwilio, **options: object) -> TwilioSms:
    settings: dict[str, object] = {
        "from_number": "+15005550006",
        "base_url": fake.url,
        "timeout": 2.0,
    }
    settings.update(options)
    return TwilioSms(fake.account_sid, fake.auth_token, **settings)  # type: ignore[arg-type]


def refusal(send: object, message: Outgoing) -> ProviderError:
    with pytest.raises(ProviderError) as raised:
        send.send(message)  # type: ignore[attr-defined]
    return raised.value


def test_an_sms_reaches_twilio_from_the_number_or_the_messaging_service(twilio: FakeTwilio) -> None:
    sid = sms(twilio, status_callback="https://x.test/status?delivery={delivery_id}").send(TEXT)
    via_service = sms(twilio, from_number=None, messaging_service_sid="MG123").send(TEXT)
    first, second = twilio.wait_for(2)
    assert (first.sid, first.from_, first.body) == (sid, "+15005550006", "Your code is 1234")
    assert first.status_callback == "https://x.test/status?delivery=d1"
    assert (second.sid, second.from_, second.messaging_service_sid) == (via_service, None, "MG123")


def test_twilio_is_asked_what_it_sent_by_number_sender_text_and_time(twilio: FakeTwilio) -> None:
    before = datetime.now(UTC) - timedelta(minutes=5)
    by_number = sms(twilio)
    first = by_number.send(TEXT)
    other_text = by_number.send(replace(TEXT, text="Another"))
    by_number.send(replace(TEXT, to="+33699999999"))
    via_service = sms(twilio, from_number=None, messaging_service_sid="MG123")
    from_service = via_service.send(TEXT)

    assert by_number.sent_since(TEXT.to, before) == [first, other_text]
    assert by_number.sent_since(TEXT.to, before, TEXT.text) == [first]
    assert via_service.sent_since(TEXT.to, before, TEXT.text) == [from_service]
    # Twilio's clock may be a little behind: a minute of slack, not more.
    assert by_number.sent_since(TEXT.to, datetime.now(UTC) + timedelta(seconds=30)) != []
    assert by_number.sent_since(TEXT.to, datetime.now(UTC) + timedelta(minutes=5)) == []
    wrong = TwilioSms(twilio.account_sid, "nope", from_number="+15005550006", base_url=twilio.url)
    with pytest.raises(ProviderError, match="Twilio 401"):
        wrong.sent_since(TEXT.to, before)


def test_twilio_needs_a_sender() -> None:
    with pytest.raises(ValueError, match="TWILIO_FROM or TWILIO_MESSAGING_SERVICE_SID"):
        TwilioSms("AC1", "token")


@pytest.mark.parametrize(
    ("script", "retryable", "retry_after", "text"),
    [
        ((503,), True, None, "Twilio 503 (code 20500)"),
        ((429, 9), True, 9.0, "Twilio 429 (code 20429)"),
    ],
)
def test_twilio_outages_and_rate_limits_are_retryable(
    twilio: FakeTwilio,
    script: tuple[int, ...],
    retryable: bool,
    retry_after: float | None,
    text: str,
) -> None:
    twilio.fail_next(script[0], retry_after=script[1] if len(script) > 1 else None)
    error = refusal(sms(twilio), TEXT)
    assert (error.retryable, error.retry_after) == (retryable, retry_after)
    assert error.message.startswith(text)
    assert twilio.requests == []


def test_an_invalid_number_wrong_credentials_and_opted_out_phones_are_not_retried(
    twilio: FakeTwilio,
) -> None:
    invalid = refusal(sms(twilio), replace(TEXT, to="12"))
    assert (invalid.retryable, invalid.suppress) == (False, None)
    assert "21211" in invalid.message
    wrong = refusal(
        TwilioSms(twilio.account_sid, "nope", from_number="+15005550006", base_url=twilio.url), TEXT
    )
    assert (wrong.retryable, wrong.message) == (
        False,
        "Twilio 401: the account SID or auth token was rejected",
    )
    twilio.unsubscribed.add(TEXT.to)
    stopped = refusal(sms(twilio), TEXT)
    assert (stopped.retryable, stopped.suppress) == (False, "opted_out")


def test_twilio_unreachable_or_too_slow_is_retryable(twilio: FakeTwilio) -> None:
    twilio.hang_next(3)
    slow = refusal(sms(twilio, timeout=0.5), TEXT)
    assert slow.retryable and slow.message.startswith("Twilio unreachable")
    down = refusal(sms(twilio, base_url=f"http://127.0.0.1:{free_port()}"), TEXT)
    assert down.retryable


def test_a_push_reaches_the_gateway_in_fcm_v1_shape(push: FakePush) -> None:
    name = PushGateway(push.send_url, push.access_token).send(PUSH)
    [sent] = push.wait_for(1)
    assert sent.name == name and name.startswith("projects/parcours/messages/")
    assert (sent.token, sent.title, sent.body, sent.data) == (
        "device-1",
        "Hi",
        "Open me",
        {"parcours_delivery_id": "d2"},
    )


def test_push_failures_are_classified(push: FakePush) -> None:
    gateway = PushGateway(push.send_url, push.access_token, timeout=2)
    push.fail_next(503)
    assert refusal(gateway, PUSH).retryable
    push.fail_next(429, retry_after=4)
    limited = refusal(gateway, PUSH)
    assert (limited.retryable, limited.retry_after) == (True, 4.0)
    push.unregistered.add("device-1")
    gone = refusal(gateway, PUSH)
    assert (gone.retryable, gone.suppress) == (False, "unregistered")
    bad = refusal(PushGateway(push.send_url, "wrong"), PUSH)
    assert not bad.retryable and "UNAUTHENTICATED" in bad.message
    assert push.requests == []
