"""Definitions and controls over HTTP: the same publishing, checks and errors as `parcours
apply` and the `journeys`/`campaigns` commands."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import catalog
from activities.db import JourneyRow
from parcours.plugin import ParcoursPlugin
from parcours.settings import Settings
from starter.api import create_app
from starter.lifecycle import where_profiles_are
from tests.api import KEY, serve
from tests.test_lifecycle import eventually

TEMPLATE = {
    "kind": "template",
    "id": "hello",
    "channel": "email",
    "subject": "Hello {{ profile.attributes.first_name | default('you') }}",
    "body": "Hi!",
}
JOURNEY = {
    "kind": "journey",
    "id": "vip-welcome",
    "entry": {"segment_entered": "vip"},
    "start": "hello",
    "nodes": [
        {"id": "hello", "type": "message", "channel": "email", "template": "hello", "next": "wait"},
        {"id": "wait", "type": "wait", "duration": "3d", "next": "done"},
        {"id": "done", "type": "end"},
    ],
}
SEGMENT = {"kind": "segment", "id": "vip", "rule": {"attribute": "vip", "op": "eq", "value": True}}


async def test_segments_templates_and_journeys_are_published_and_checked(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    # A journey naming a template not defined yet is refused with the path to the field.
    early = await api.post("/v1/journeys", json=JOURNEY)
    assert early.status_code == 422
    assert any("template" in e["loc"] and "hello" in e["msg"] for e in early.json()["detail"])

    assert (await api.put("/v1/segments/vip", json=SEGMENT)).json()["outcome"] == "created"
    assert (await api.put("/v1/templates/hello", json=TEMPLATE)).json()["outcome"] == "created"
    published = await api.post("/v1/journeys", json=JOURNEY)
    assert published.status_code == 201
    assert (published.json()["version"], published.json()["status"]) == (1, "live")
    again = (await api.post("/v1/journeys", json=JOURNEY)).json()
    assert (again["outcome"], again["version"]) == ("unchanged", 1)

    mismatch = await api.put("/v1/segments/other", json=SEGMENT)
    assert mismatch.status_code == 422 and mismatch.json()["detail"][0]["loc"] == ["body", "id"]
    bad_rule = await api.put(
        "/v1/segments/vip", json={**SEGMENT, "rule": {"attribute": "vip", "op": "nope"}}
    )
    assert bad_rule.status_code == 422
    assert bad_rule.json()["detail"][0]["loc"][:3] == ["body", "rule", "op"] or "op" in str(
        bad_rule.json()
    )
    # A check across fields answers at the field too, not at the body.
    no_subject = await api.put("/v1/templates/hello", json={**TEMPLATE, "subject": None})
    assert no_subject.status_code == 422
    [problem] = no_subject.json()["detail"]
    assert problem["loc"] == ["body", "subject"] and "needs a `subject`" in problem["msg"]
    cycle = await api.post(
        "/v1/journeys",
        json={**JOURNEY, "id": "loop", "nodes": [{**JOURNEY["nodes"][0], "next": "hello"}]},
    )
    assert cycle.status_code == 422
    with Session(engine) as session:
        assert session.scalars(select(JourneyRow.id)).all() == ["vip-welcome"], "nothing else"


async def test_a_journey_is_paused_resumed_and_stopped_and_its_entries_leave(
    dev_server_env: WorkflowEnvironment, settings: Settings, engine: Engine
) -> None:
    # On the dev server: a stop finds the entries through its visibility store.
    client = await Client.connect(
        dev_server_env.client.service_client.config.target_host, plugins=[ParcoursPlugin(settings)]
    )

    async def temporal() -> Client:
        return client

    journey_id = f"vip-welcome-{uuid.uuid4().hex[:8]}"
    entry = f"journey:{journey_id}:ada"
    async with (
        Worker(client, task_queue=settings.task_queue),
        serve(create_app(settings, temporal, keys=[KEY])) as api,
    ):
        await api.put("/v1/segments/vip", json=SEGMENT)
        await api.put("/v1/templates/hello", json=TEMPLATE)
        await api.post("/v1/journeys", json={**JOURNEY, "id": journey_id})
        # PUT makes the profile a VIP: the segment entry starts the journey.
        joined = await api.put(
            "/v1/profiles/ada", json={"email": "ada@example.com", "attributes": {"vip": True}}
        )
        assert joined.json()["journeys"] == [entry]
        paused = await api.post(f"/v1/journeys/{journey_id}/pause")
        assert paused.json() == {"id": journey_id, "status": "paused", "entries_stopped": 0}
        assert catalog.list_journeys(engine)[0].status == "paused"
        assert (await api.post(f"/v1/journeys/{journey_id}/resume")).json()["status"] == "live"
        assert (await api.post("/v1/journeys/nope/pause")).status_code == 404

        async def waiting() -> bool:
            return (await where_profiles_are(client, journey_id)).get("wait") == 1

        await eventually(waiting, "the entry waiting three days")
        stopped = (await api.post(f"/v1/journeys/{journey_id}/stop")).json()
        assert (stopped["status"], stopped["entries_stopped"]) == ("stopped", 1)
        handle = client.get_workflow_handle(entry)
        await handle.result()
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
        refused = await api.post(f"/v1/journeys/{journey_id}/resume")
        assert refused.status_code == 422 and "cannot be made live" in str(refused.json())


async def test_put_replaces_attributes_and_patch_merges_them(api: httpx.AsyncClient) -> None:
    await api.put("/v1/profiles/bo", json={"attributes": {"plan": "pro", "seats": 3}})
    await api.patch("/v1/profiles/bo", json={"attributes": {"seats": 5}})
    assert (await api.get("/v1/profiles/bo")).json()["attributes"] == {"plan": "pro", "seats": 5}
    await api.put("/v1/profiles/bo", json={"attributes": {"plan": "team"}})
    assert (await api.get("/v1/profiles/bo")).json()["attributes"] == {"plan": "team"}
    bad = await api.patch("/v1/profiles/bo", json={"phone": "0612"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["phone"]


async def test_a_campaign_is_defined_run_now_and_reported(
    api: httpx.AsyncClient, temporal: Client
) -> None:
    await api.put("/v1/segments/vip", json=SEGMENT)
    await api.put("/v1/templates/hello", json=TEMPLATE)
    await api.put("/v1/profiles/cy", json={"email": "cy@example.com", "attributes": {"vip": True}})
    campaign = {
        "kind": "campaign",
        "id": "vip-news",
        "audience": {"segment": "vip"},
        "channel": "email",
        "template": "hello",
    }
    defined = (await api.put("/v1/campaigns/vip-news", json=campaign)).json()
    assert (defined["outcome"], defined["schedule"]) == ("created", "none")
    assert (await api.post("/v1/campaigns/nope/run")).status_code == 404
    run = await api.post("/v1/campaigns/vip-news/run")
    assert run.status_code == 202 and run.json()["run_id"].startswith("campaign:vip-news:")
    await temporal.get_workflow_handle(run.json()["run_id"]).result()
    reports = (await api.get("/v1/campaigns/vip-news/runs")).json()
    assert [(r["run_id"], r["audience"], r["sent"]) for r in reports] == [
        (run.json()["run_id"], 1, 1)
    ]
