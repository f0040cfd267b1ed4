"""Entry `where` (on the event) and `audience` (on the profile) decide who may enter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.apply import apply_paths
from activities.profiles import set_profile
from parcours.errors import InputError
from parcours.loader import load_paths
from parcours.records import NewEvent
from parcours.settings import Settings
from starter.routing import enter_journey, send_event
from tests.journeys import finish, run_worker

FILTERED = """
kind: segment
id: french
rule: {attribute: country, op: eq, value: FR}
---
kind: journey
id: big-order-fr
entry: {event: order, where: {property: total, op: gte, value: 100}}
audience: {all: [{segment: french}, {consent: email}]}
start: x
nodes:
  - {id: x, type: end}
"""


@pytest.fixture
async def client(
    time_skipping_env: WorkflowEnvironment, settings: Settings, engine: Engine, tmp_path: Path
) -> AsyncIterator[Client]:
    (tmp_path / "f.yaml").write_text(FILTERED)
    apply_paths(engine, [tmp_path / "f.yaml"])
    async for client in run_worker(time_skipping_env, settings):
        yield client


async def test_only_matching_events_and_profiles_enter(
    time_skipping_env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> None:
    set_profile(engine, "fr", email="fr@example.com", attributes={"country": "FR"})
    set_profile(engine, "de", email="de@example.com", attributes={"country": "DE"})

    async def order(profile: str, total: int) -> list[str]:
        routed = await send_event(
            client,
            engine,
            settings,
            NewEvent(type="order", profile_id=profile, properties={"total": total}),
        )
        return routed.journeys

    assert await order("fr", 50) == [], "the event's total is below the entry's `where`"
    assert await order("de", 500) == [], "not in the audience"
    assert await order("fr", 500) == ["journey:big-order-fr:fr"]
    await finish(time_skipping_env, client, "journey:big-order-fr:fr")


def test_entry_rules_are_checked_in_place(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        FILTERED.replace("where: {property: total", "where: {attribute: total").replace(
            "{segment: french}", "{segment: nowhere}"
        )
    )
    text = "\n".join(str(e) for e in load_paths([tmp_path / "bad.yaml"]).errors)
    assert "entry.where: inside `where`, only property rules" in text
    assert "audience: segment 'nowhere' is not defined or applied" in text


async def test_an_api_journey_is_entered_explicitly(
    time_skipping_env: WorkflowEnvironment,
    client: Client,
    engine: Engine,
    settings: Settings,
    tmp_path: Path,
) -> None:
    (tmp_path / "api.yaml").write_text(
        "kind: journey\nid: concierge\nentry: {api: true}\nre_entry: never\nstart: x\nnodes:\n  - {id: x, type: end}\n"
    )
    apply_paths(engine, [tmp_path / "api.yaml"])
    assert (
        await enter_journey(client, engine, settings, "concierge", "vip1")
        == "journey:concierge:vip1"
    )
    await finish(time_skipping_env, client, "journey:concierge:vip1")
    assert await enter_journey(client, engine, settings, "concierge", "vip1") is None, (
        "re_entry: never"
    )
    with pytest.raises(InputError, match="enters on event order, not through the API"):
        await enter_journey(client, engine, settings, "big-order-fr", "vip1")
