"""Conditions, splits, profile updates, waiting for events and exits, on the time-skipping
server with the abandoned-cart example."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities import ledger
from activities.apply import apply_paths
from activities.goals import conversion_counts
from activities.profiles import get_profile, set_profile
from activities.segments import profile_segments
from parcours.contracts import JourneyPosition
from parcours.records import NewEvent
from parcours.settings import Settings
from starter.routing import send_event
from tests.conftest import EXAMPLES
from tests.journeys import finish, run_worker
from workflows.journey import JourneyWorkflow

CART = "journey:abandoned-cart:{}"


@pytest.fixture
async def client(
    time_skipping_env: WorkflowEnvironment, settings: Settings, engine: Engine
) -> AsyncIterator[Client]:
    apply_paths(engine, [EXAMPLES / "abandoned-cart"])
    async for client in run_worker(time_skipping_env, settings):
        yield client


async def event(
    client: Client, engine: Engine, settings: Settings, kind: str, profile: str, **props: object
) -> list[str]:
    routed = await send_event(
        client, engine, settings, NewEvent(type=kind, profile_id=profile, properties=props)
    )
    return routed.journeys


async def reach(env: WorkflowEnvironment, client: Client, profile: str, node: str) -> None:
    """Skip time until the entry is at `node`."""
    handle = client.get_workflow_handle_for(JourneyWorkflow.run, CART.format(profile))
    for _ in range(200):
        position: JourneyPosition = await handle.query(JourneyWorkflow.position)
        if position.node == node and position.path[-1].outcome is None:
            return
        await env.sleep(timedelta(minutes=10))
    raise AssertionError(f"never reached {node}: {position}")


def route(position: JourneyPosition) -> list[tuple[str, str | None]]:
    return [(s.node, s.outcome) for s in position.path]


async def test_no_checkout_in_two_days_sends_the_sms(
    time_skipping_env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> None:
    set_profile(engine, "tim", email="tim@example.com", phone="+33612345678")
    assert await event(client, engine, settings, "cart_updated", "tim", total=40) == [
        CART.format("tim")
    ]
    position = await finish(time_skipping_env, client, CART.format("tim"))
    assert route(position) == [
        ("wait-1h", "waited"),
        ("vip-check", "default"),
        ("mail", "sent"),
        ("await-checkout", "timed out"),
        ("sms", "sent"),
        ("done", "ended"),
    ]
    assert position.path[4].entered_at - position.path[3].entered_at >= timedelta(days=2)
    assert [(d.channel, d.template) for d in ledger.list_deliveries(engine, "tim")] == [
        ("email", "cart-reminder"),
        ("sms", "cart-sms"),
    ]


async def test_vip_branch_and_a_matching_checkout_end_the_journey(
    time_skipping_env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> None:
    set_profile(engine, "vi", email="vi@example.com", attributes={"vip": True})
    await event(client, engine, settings, "cart_updated", "vi", total=40)
    await reach(time_skipping_env, client, "vi", "await-checkout")
    # An event that does not match `where` is ignored; the next matching one moves on.
    assert await event(client, engine, settings, "checkout_started", "vi", items=0) == [
        CART.format("vi")
    ]
    await event(client, engine, settings, "checkout_started", "vi", items=2)
    position = await finish(time_skipping_env, client, CART.format("vi"))
    assert [n for n, _ in route(position)] == [
        "wait-1h",
        "vip-check",
        "vip-mail",
        "await-checkout",
        "done",
    ]
    assert route(position)[1] == ("vip-check", "branch 0")
    assert route(position)[3][1] is not None and route(position)[3][1].startswith(
        "checkout_started"
    )
    assert [d.template for d in ledger.list_deliveries(engine, "vi")] == ["vip-cart-reminder"]


async def test_a_condition_reads_the_entry_event_and_update_profile_changes_the_hub(
    time_skipping_env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> None:
    set_profile(engine, "bo", email="bo@example.com")
    await event(client, engine, settings, "cart_updated", "bo", total=500)
    await reach(time_skipping_env, client, "bo", "await-checkout")
    profile = get_profile(engine, "bo")
    assert profile is not None and profile.attributes["big_cart"] is True
    position = await client.get_workflow_handle_for(JourneyWorkflow.run, CART.format("bo")).query(
        JourneyWorkflow.position
    )
    assert route(position)[1:3] == [("vip-check", "branch 1"), ("flag-big-cart", "updated")]


async def test_an_exit_event_ends_the_entry_wherever_it_is(
    time_skipping_env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> None:
    set_profile(engine, "ex", email="ex@example.com")
    await event(client, engine, settings, "cart_updated", "ex", total=40)
    assert await event(client, engine, settings, "order_completed", "ex") == [CART.format("ex")]
    position = await finish(time_skipping_env, client, CART.format("ex"))
    assert position.exit_reason is not None and position.exit_reason.startswith("order_completed")
    assert route(position) == [("wait-1h", f"exited: {position.exit_reason}")]
    assert ledger.list_deliveries(engine, "ex") == []
    assert conversion_counts(engine, "abandoned-cart") == {1: {"conversions": 1, "variants": {}}}
    # An event for a journey the profile is not inside reaches nobody.
    assert await event(client, engine, settings, "order_completed", "nobody") == []


async def test_a_split_is_stable_per_profile_and_recorded(
    time_skipping_env: WorkflowEnvironment,
    client: Client,
    engine: Engine,
    settings: Settings,
    tmp_path,
) -> None:
    (tmp_path / "split.yaml").write_text(
        """
kind: journey
id: ab
entry: {event: joined}
goal: {event: bought, within: 1d}
start: s
nodes:
  - id: s
    type: split
    variants: [{name: a, weight: 1, next: x}, {name: b, weight: 1, next: x}]
  - {id: x, type: end}
"""
    )
    apply_paths(engine, [tmp_path / "split.yaml"])
    chosen: dict[str, str | None] = {}
    for round_ in range(2):
        for i in range(12):
            await event(client, engine, settings, "joined", f"u{i}")
            position = await finish(time_skipping_env, client, f"journey:ab:u{i}")
            outcome = route(position)[0][1]
            if round_ == 0:
                chosen[f"u{i}"] = outcome
            else:
                assert chosen[f"u{i}"] == outcome, "the same variant on every entry"
    assert set(chosen.values()) == {"variant a", "variant b"}
    for i in range(12):
        routed = await send_event(
            client, engine, settings, NewEvent(type="bought", profile_id=f"u{i}")
        )
        assert routed.conversions == ["ab"]
    again = await send_event(client, engine, settings, NewEvent(type="bought", profile_id="u0"))
    assert again.conversions == [], "an entry converts once"
    by_variant = conversion_counts(engine, "ab")[1]["variants"]["s"]
    assert by_variant == {
        v.removeprefix("variant "): list(chosen.values()).count(v) for v in set(chosen.values())
    }
    assert profile_segments(engine, "u0") == []
