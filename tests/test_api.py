"""The HTTP API in process (ASGI), on the store and the time-skipping server."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities import catalog
from activities.profiles import get_profile
from activities.unsubscribe import make_token
from parcours.loader import load_paths
from parcours.settings import Settings
from starter.api import create_app
from tests.api import BASE
from tests.conftest import EXAMPLES
from tests.delivery import twilio_signature
from tests.journeys import finish


def test_the_api_refuses_to_start_without_keys(settings: Settings) -> None:
    async def client() -> Client:
        raise AssertionError("not reached")

    with pytest.raises(ValueError, match="set PARCOURS_API_KEYS"):
        create_app(settings, client)


async def test_requests_need_a_valid_key(api: httpx.AsyncClient) -> None:
    assert (await api.get("/v1/profiles/ada", headers={"Authorization": ""})).status_code == 401
    wrong = await api.get("/v1/profiles/ada", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    other = await api.get("/v1/profiles/ada", headers={"Authorization": "Bearer second-key"})
    assert other.status_code == 404
    assert (await api.get("/healthz", headers={"Authorization": ""})).json() == {"status": "ok"}


async def test_profiles_are_written_read_and_erased(api: httpx.AsyncClient) -> None:
    put = await api.put(
        "/v1/profiles/ada",
        json={
            "email": "Ada@Example.COM",
            "timezone": "Europe/Paris",
            "attributes": {"plan": "pro"},
        },
    )
    assert put.status_code == 200 and put.json()["email"] == "Ada@example.com"
    assert (await api.get("/v1/profiles/ada")).json()["attributes"] == {"plan": "pro"}
    bad = await api.put("/v1/profiles/ada", json={"phone": "0612345678"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["phone"]
    assert "no country code" in bad.json()["detail"][0]["msg"]
    assert (await api.get("/v1/profiles/ada/segments")).json() == []
    assert (await api.delete("/v1/profiles/ada")).status_code == 200
    assert (await api.get("/v1/profiles/ada")).status_code == 404


async def test_an_event_starts_a_journey_and_a_replay_is_a_duplicate(
    api: httpx.AsyncClient,
    engine: Engine,
    temporal: Client,
    time_skipping_env: WorkflowEnvironment,
) -> None:
    catalog.publish(engine, load_paths([EXAMPLES / "welcome"]))
    await api.put("/v1/profiles/ada", json={"email": "ada@example.com"})
    event = {"type": "signed_up", "profile_id": "ada", "id": "evt-1"}
    first = await api.post("/v1/events", json=event)
    assert first.status_code == 202
    assert first.json() == {
        "accepted": 1,
        "duplicates": 0,
        "rejected": 0,
        "journeys": ["journey:welcome:ada"],
        "results": [{"index": 0, "id": "evt-1", "status": "accepted", "errors": []}],
    }
    again = (await api.post("/v1/events", json={"events": [event]})).json()
    assert (again["accepted"], again["duplicates"], again["journeys"]) == (0, 1, [])
    assert again["results"][0]["status"] == "duplicate"
    position = await finish(time_skipping_env, temporal, "journey:welcome:ada")
    assert position.finished
    deliveries = (await api.get("/v1/deliveries", params={"profile_id": "ada"})).json()
    assert [d["template"] for d in deliveries] == ["welcome-email", "tips-email"]
    invalid = await api.post("/v1/events", json={"type": "has space", "profile_id": "ada"})
    assert invalid.status_code == 422


async def test_a_signed_stop_reply_opts_out_and_a_tampered_one_is_refused(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    await api.put("/v1/profiles/ada", json={"phone": "+33612345678"})
    url = f"{BASE}/v1/webhooks/twilio/inbound"
    form = {"From": "+33612345678", "Body": "STOP", "MessageSid": "SM1"}
    signature = twilio_signature("twilio-token", url, form)
    tampered = await api.post(
        "/v1/webhooks/twilio/inbound",
        data={**form, "From": "+33699999999"},
        headers={"X-Twilio-Signature": signature},
    )
    assert tampered.status_code == 403
    profile = get_profile(engine, "ada")
    assert profile is not None and "sms" not in profile.consent
    ok = await api.post(
        "/v1/webhooks/twilio/inbound", data=form, headers={"X-Twilio-Signature": signature}
    )
    assert ok.status_code == 200
    profile = get_profile(engine, "ada")
    assert profile is not None and profile.consent["sms"]["status"] == "opted_out"


async def test_the_unsubscribe_link_opts_out_without_a_key(
    api: httpx.AsyncClient, engine: Engine, settings: Settings
) -> None:
    await api.put("/v1/profiles/ada", json={"email": "ada@example.com"})
    token = make_token(settings, "ada", "email")
    # Another profile's id under ada's signature.
    signature = token.split(".")[1]
    forged = make_token(settings, "bob", "email").split(".")[0] + "." + signature
    refused = await api.get(
        "/v1/unsubscribe", params={"token": forged}, headers={"Authorization": ""}
    )
    assert refused.status_code == 422
    done = await api.post("/v1/unsubscribe", params={"token": token}, headers={"Authorization": ""})
    assert done.status_code == 200
    profile = get_profile(engine, "ada")
    assert profile is not None and profile.consent["email"]["status"] == "opted_out"
