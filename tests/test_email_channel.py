"""The SendGrid channel against a local fake of SendGrid's HTTP API (real client, real sockets)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from activities.channels.base import Outgoing, ProviderError
from activities.channels.email import SendGridEmail
from tests.fakes.sendgrid import FakeSendGrid
from tests.stack import free_port

API_KEY = "SG.test-key"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib honours proxy variables; the fake must be reached directly on 127.0.0.1.
    for name in (
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    with FakeSendGrid(api_key=API_KEY) as server:
        yield server


def channel(
    fake: FakeSendGrid,
    *,
    api_key: str = API_KEY,
    timeout: float = 5.0,
    sender: str = "hello@parcours.test",
) -> SendGridEmail:
    return SendGridEmail(api_key, sender, base_url=fake.url, timeout=timeout)


def email(**overrides: Any) -> Outgoing:
    message = Outgoing(
        to="ada@example.com",
        subject="Welcome aboard",
        text="Hi Ada, welcome.",
        html="<p>Hi Ada, <b>welcome</b>.</p>",
        correlation={"delivery_id": "d-123", "journey": "onboarding"},
    )
    return replace(message, **overrides)


def test_sent_mail_reaches_sendgrid_intact_and_returns_its_message_id(
    fake: FakeSendGrid,
) -> None:
    message_id = channel(fake).send(email())

    [mail] = fake.wait_for(1)
    assert mail.to == ["ada@example.com"]
    assert mail.from_email == "hello@parcours.test"
    assert mail.subject == "Welcome aboard"
    assert mail.text == "Hi Ada, welcome."
    assert mail.html == "<p>Hi Ada, <b>welcome</b>.</p>"
    assert mail.custom_args == {"delivery_id": "d-123", "journey": "onboarding"}
    assert [c["type"] for c in mail.body["content"]] == ["text/plain", "text/html"]
    assert message_id == mail.message_id
    assert message_id


def test_text_only_mail_sends_a_single_plain_text_part(fake: FakeSendGrid) -> None:
    channel(fake).send(email(html=None, correlation={}))

    [mail] = fake.wait_for(1)
    assert mail.html is None
    assert mail.body["content"] == [{"type": "text/plain", "value": "Hi Ada, welcome."}]
    assert mail.custom_args == {}


def test_invalid_recipient_is_rejected_for_good_with_sendgrids_explanation(
    fake: FakeSendGrid,
) -> None:
    with pytest.raises(ProviderError) as caught:
        channel(fake).send(email(to="not-an-email"))

    err = caught.value
    assert not err.retryable
    assert err.status == 400
    assert err.message.startswith("SendGrid 400: ")
    assert "Does not contain a valid address." in err.message
    assert "personalizations.0.to.0.email" in err.message
    assert fake.requests == []


def test_several_validation_errors_are_all_reported(fake: FakeSendGrid) -> None:
    with pytest.raises(ProviderError) as caught:
        channel(fake, sender="nobody").send(email(to="not-an-email"))

    assert "personalizations.0.to.0.email" in caught.value.message
    assert "; " in caught.value.message
    assert "from.email" in caught.value.message


def test_substitutions_over_sendgrids_limit_are_refused_up_to_the_byte(fake: FakeSendGrid) -> None:
    # 9,954 characters of text make the substitutions 10,000 bytes of JSON, SendGrid's limit;
    # an emoji is one character but 12 bytes (a surrogate pair of escapes).
    sendgrid = channel(fake)
    sendgrid.send_bulk([email(text="x" * 9_954, html="")], {})
    for text in ("x" * 9_955, "😀" * 830):
        with pytest.raises(ProviderError) as caught:
            sendgrid.send_bulk([email(text=text, html="")], {})
        assert "personalizations.0.substitutions" in caught.value.message
    assert len(fake.requests) == 1


def test_bad_request_is_not_retryable_and_carries_the_provider_text(fake: FakeSendGrid) -> None:
    fake.fail_next(400, message="The attachment content must be base64 encoded.")

    with pytest.raises(ProviderError) as caught:
        channel(fake).send(email())

    assert not caught.value.retryable
    assert caught.value.status == 400
    assert caught.value.message == "SendGrid 400: The attachment content must be base64 encoded."


@pytest.mark.parametrize("status", [403, 413])
def test_other_client_errors_are_not_retryable(fake: FakeSendGrid, status: int) -> None:
    fake.fail_next(status, message="nope")

    with pytest.raises(ProviderError) as caught:
        channel(fake).send(email())

    assert not caught.value.retryable
    assert caught.value.message == f"SendGrid {status}: nope"


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retryable(fake: FakeSendGrid, status: int) -> None:
    fake.fail_next(status)

    with pytest.raises(ProviderError) as caught:
        channel(fake).send(email())

    assert caught.value.retryable
    assert caught.value.status == status


def test_a_retry_after_an_outage_succeeds(fake: FakeSendGrid) -> None:
    fake.fail_next(503)
    sendgrid = channel(fake)

    with pytest.raises(ProviderError):
        sendgrid.send(email())
    message_id = sendgrid.send(email())

    assert fake.attempts == 2
    assert [m.message_id for m in fake.requests] == [message_id]


def test_rate_limit_is_retryable_after_the_advertised_delay(fake: FakeSendGrid) -> None:
    fake.fail_next(429, retry_after=7)

    with pytest.raises(ProviderError) as caught:
        channel(fake).send(email())

    assert caught.value.retryable
    assert caught.value.status == 429
    assert caught.value.retry_after == 7


def test_rate_limit_without_retry_after_leaves_the_delay_to_the_caller(
    fake: FakeSendGrid,
) -> None:
    fake.fail_next(429)

    with pytest.raises(ProviderError) as caught:
        channel(fake).send(email())

    assert caught.value.retryable
    assert caught.value.retry_after is None


def test_rejected_api_key_is_not_retryable_and_says_so(fake: FakeSendGrid) -> None:
    with pytest.raises(ProviderError) as caught:
        channel(fake, api_key="SG.wrong-key").send(email())

    assert not caught.value.retryable
    assert caught.value.status == 401
    assert "API key" in caught.value.message
    assert fake.attempts == 1
    assert fake.requests == []


def test_a_hung_sendgrid_times_out_quickly_as_retryable(fake: FakeSendGrid) -> None:
    fake.hang_next(2.0)

    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        channel(fake, timeout=0.5).send(email())
    elapsed = time.monotonic() - started

    assert caught.value.retryable
    assert caught.value.message.startswith("SendGrid unreachable: ")
    assert elapsed < 1.5


def test_unreachable_sendgrid_is_retryable() -> None:
    port = free_port()  # nothing listens on it
    sendgrid = SendGridEmail(
        API_KEY, "hello@parcours.test", base_url=f"http://127.0.0.1:{port}", timeout=2.0
    )
    with pytest.raises(ProviderError) as caught:
        sendgrid.send(email())

    assert caught.value.retryable
    assert caught.value.message.startswith("SendGrid unreachable: ")
