"""Erasure leaves no trace of the person in any table, and no journey running for them."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from temporalio.client import Client, WorkflowExecutionStatus

from activities import catalog
from activities.db import Base, DeliveryRow
from activities.erasure import ERASED
from activities.suppression import suppress
from parcours.loader import load_paths
from tests.conftest import EXAMPLES


async def test_an_erased_profile_leaves_no_trace_and_no_running_journey(
    api: httpx.AsyncClient, engine: Engine, temporal: Client
) -> None:
    catalog.publish(engine, load_paths([EXAMPLES / "welcome"]))
    profile = f"zelda-{uuid.uuid4().hex[:8]}"
    email, phone = f"{profile}@example.com", "+33612345678"
    secrets = {"first_name": "Zeldabeth", "loyalty_code": "LC-98765-XQ"}
    await api.put(
        f"/v1/profiles/{profile}",
        json={
            "email": email,
            "phone": phone,
            "attributes": secrets,
            "device_tokens": ["device-token-7f3e"],
            "consent": {"email": True},
        },
    )
    event = {"type": "signed_up", "profile_id": profile, "properties": {"ref": "LC-98765-XQ"}}
    assert (await api.post("/v1/events", json=event)).status_code == 202
    with Session(engine) as session:
        suppress(session, "sms", phone, "opted_out", "test")
        session.commit()
    for _ in range(200):  # the welcome email is rendered into the outbox; the entry waits a day
        deliveries = (await api.get("/v1/deliveries", params={"profile_id": profile})).json()
        if deliveries and deliveries[0]["status"] == "sent":
            break
        await asyncio.sleep(0.05)
    with Session(engine) as session:
        assert "Zeldabeth" in session.scalar(select(DeliveryRow.subject)), "rendered for her"

    erased = await api.delete(f"/v1/profiles/{profile}")
    assert erased.status_code == 200
    assert erased.json()["journeys_ended"] == [f"journey:welcome:{profile}"]
    assert erased.json()["deliveries_scrubbed"] == 1
    entry = await temporal.get_workflow_handle(f"journey:welcome:{profile}").describe()
    assert entry.status == WorkflowExecutionStatus.TERMINATED

    traces = [profile, email, phone, "Zeldabeth", "LC-98765-XQ", "device-token-7f3e"]
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            for row in connection.execute(select(table)):
                text = repr(tuple(row))
                found = [t for t in traces if t.lower() in text.lower()]
                assert not found, f"{table.name} still holds {found}: {text}"
        counted = select(func.count()).where(DeliveryRow.profile_id == ERASED)
        assert connection.execute(counted).scalar() == 1, "the delivery is still counted"
    assert (await api.get(f"/v1/profiles/{profile}")).status_code == 404
    assert (await api.delete(f"/v1/profiles/{profile}")).status_code == 404
