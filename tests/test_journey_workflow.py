"""JourneyWorkflow on the time-skipping server: multi-day waits run in seconds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities import catalog, ledger
from activities.events import unrouted
from activities.finishes import node_counts
from activities.profiles import set_profile
from parcours import search_attributes as sa
from parcours.loader import load_paths
from parcours.records import NewEvent
from parcours.settings import Settings
from starter.routing import send_event
from tests.conftest import EXAMPLES, commits_on
from tests.fakes.sendgrid import FakeSendGrid
from tests.journeys import finish, run_worker


@pytest.fixture
def welcome(engine: Engine) -> None:
    catalog.publish(engine, load_paths([EXAMPLES / "welcome"]))
    set_profile(engine, "ada", email="ada@example.com", attributes={"first_name": "Ada"})


@pytest.fixture
async def client(
    time_skipping_env: WorkflowEnvironment, settings: Settings, welcome: None
) -> AsyncIterator[Client]:
    async for client in run_worker(time_skipping_env, settings):
        yield client


async def signed_up(
    client: Client, engine: Engine, settings: Settings, profile: str = "ada"
) -> str:
    routed = await send_event(
        client, engine, settings, NewEvent(type="signed_up", profile_id=profile)
    )
    [workflow_id] = routed.journeys
    return workflow_id


async def test_welcome_journey_sends_two_emails_a_day_apart(
    time_skipping_env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> None:
    workflow_id = await signed_up(client, engine, settings)
    assert workflow_id == "journey:welcome:ada"
    position = await finish(time_skipping_env, client, workflow_id)

    assert position.finished and position.node == "done"
    assert [(s.node, s.outcome) for s in position.path] == [
        ("welcome", "sent"),
        ("wait-1d", "waited"),
        ("tips", "sent"),
        ("done", "ended"),
    ]
    assert position.path[2].entered_at - position.path[1].entered_at >= timedelta(days=1)
    deliveries = ledger.list_deliveries(engine, "ada")
    assert [(d.template, d.status, d.provider, d.to) for d in deliveries] == [
        ("welcome-email", "sent", "outbox", "ada@example.com"),
        ("tips-email", "sent", "outbox", "ada@example.com"),
    ]
    assert deliveries[0].subject == "Welcome to Parcours, Ada!"
    assert deliveries[0].idempotency_key.startswith("journey:welcome:ada/")


async def test_search_attributes_and_summaries_are_visible(
    time_skipping_env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> None:
    workflow_id = await signed_up(client, engine, settings)
    await finish(time_skipping_env, client, workflow_id)
    handle = client.get_workflow_handle(workflow_id)
    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(sa.JOURNEY) == "welcome"
    assert attributes.get(sa.PROFILE) == "ada"
    assert attributes.get(sa.JOURNEY_VERSION) == 1
    # The last node it stayed at; where it ended is its finish record's to say.
    assert attributes.get(sa.NODE) == "wait-1d"

    converter = client.data_converter.payload_converter
    summaries, upserts, signals, finish_markers = [], 0, 0, 0
    async for event in handle.fetch_history_events():
        finish_markers += (
            event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
            and event.marker_recorded_event_attributes.marker_name == "core_local_activity"
        )
        upserts += event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
        signals += event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        if event.event_type in (
            EventType.EVENT_TYPE_TIMER_STARTED,
            EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
        ):
            summaries.append(converter.from_payload(event.user_metadata.summary, str))
    assert summaries == ["email welcome-email", "wait 1d", "email tips-email"]
    # ParcoursNode is updated where a running profile settles (the wait), not at each step.
    assert upserts == 1
    # It ends right after a message, whose send records the finish: no local activity.
    assert finish_markers == 0
    [counts] = node_counts(engine, "welcome").values()
    assert (counts.finished, counts.ended, counts.passed["done"]) == (1, {"done": 1}, 1)
    # A new entry is a plain start: the event travels in the input, not in a second action.
    assert signals == 0


async def test_the_same_event_while_inside_starts_no_second_entry(
    time_skipping_env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> None:
    first = await signed_up(client, engine, settings)
    run_id = (await client.get_workflow_handle(first).describe()).run_id
    again = await send_event(
        client, engine, settings, NewEvent(type="signed_up", profile_id="ada", id="second")
    )
    assert again.journeys == [first]
    position = await finish(time_skipping_env, client, first)
    assert (await client.get_workflow_handle(first).describe()).run_id == run_id
    assert "second" in position.events
    assert len(ledger.list_deliveries(engine, "ada")) == 2

    # A duplicate event id is recorded once and routed nowhere.
    duplicate = await send_event(
        client, engine, settings, NewEvent(type="signed_up", profile_id="ada", id="second")
    )
    assert duplicate.duplicate and duplicate.journeys == []


async def test_an_event_nothing_follows_is_stored_routed_in_one_write(
    client: Client, engine: Engine, settings: Settings
) -> None:
    with commits_on(engine) as commits:
        viewed = NewEvent(type="page_viewed", profile_id="ada", id="view-1")
        routed = await send_event(client, engine, settings, viewed)
    assert (routed.duplicate, routed.journeys) == (False, [])
    assert unrouted(engine, ["view-1"]) == set() and len(commits) == 1


async def test_after_the_entry_ends_a_new_event_starts_a_new_entry(
    time_skipping_env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> None:
    workflow_id = await signed_up(client, engine, settings)
    await finish(time_skipping_env, client, workflow_id)
    first_run = (await client.get_workflow_handle(workflow_id).describe()).run_id
    await signed_up(client, engine, settings)
    await finish(time_skipping_env, client, workflow_id)
    assert (await client.get_workflow_handle(workflow_id).describe()).run_id != first_run
    assert len(ledger.list_deliveries(engine, "ada")) == 4


async def test_a_profile_without_email_is_suppressed_and_the_journey_goes_on(
    time_skipping_env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> None:
    workflow_id = await signed_up(client, engine, settings, profile="no-email")
    position = await finish(time_skipping_env, client, workflow_id)
    assert position.path[0].outcome == "suppressed: no_address: the profile has no email address"
    assert position.finished
    assert {d.status for d in ledger.list_deliveries(engine, "no-email")} == {"suppressed"}


@pytest.fixture
async def sendgrid_client(
    time_skipping_env: WorkflowEnvironment,
    settings: Settings,
    welcome: None,
    fake_sendgrid: FakeSendGrid,
) -> AsyncIterator[Client]:
    configured = settings.model_copy(
        update={
            "sendgrid_api_key": fake_sendgrid.api_key,
            "sendgrid_url": fake_sendgrid.url,
            "provider_timeout_seconds": 2.0,
        }
    )
    async for client in run_worker(
        time_skipping_env, Settings.model_validate(configured.model_dump())
    ):
        yield client


async def test_email_reaches_sendgrid_through_its_library(
    time_skipping_env: WorkflowEnvironment,
    sendgrid_client: Client,
    engine: Engine,
    settings: Settings,
    fake_sendgrid: FakeSendGrid,
) -> None:
    await finish(
        time_skipping_env, sendgrid_client, await signed_up(sendgrid_client, engine, settings)
    )
    mails = fake_sendgrid.requests
    assert [m.subject for m in mails] == ["Welcome to Parcours, Ada!", "Three tips to get started"]
    assert mails[0].to == ["ada@example.com"]
    deliveries = ledger.list_deliveries(engine, "ada")
    assert [d.provider_message_id for d in deliveries] == [m.message_id for m in mails]
    assert [m.custom_args["parcours_delivery_id"] for m in mails] == [d.id for d in deliveries]
    assert {d.provider for d in deliveries} == {"sendgrid"}


async def test_a_sendgrid_400_fails_the_delivery_not_the_journey(
    time_skipping_env: WorkflowEnvironment,
    sendgrid_client: Client,
    engine: Engine,
    settings: Settings,
    fake_sendgrid: FakeSendGrid,
) -> None:
    fake_sendgrid.fail_next(
        400, message="The from address does not match a verified Sender Identity."
    )
    position = await finish(
        time_skipping_env, sendgrid_client, await signed_up(sendgrid_client, engine, settings)
    )
    assert position.finished
    first, second = ledger.list_deliveries(engine, "ada")
    assert first.status == "failed"
    assert first.reason is not None and "does not match a verified Sender Identity" in first.reason
    assert second.status == "sent"
    assert fake_sendgrid.attempts == 2, "a permanent refusal is not retried"


async def test_a_sendgrid_503_is_retried_until_it_succeeds_and_sent_once(
    time_skipping_env: WorkflowEnvironment,
    sendgrid_client: Client,
    engine: Engine,
    settings: Settings,
    fake_sendgrid: FakeSendGrid,
) -> None:
    fake_sendgrid.fail_next(503, times=3)
    position = await finish(
        time_skipping_env, sendgrid_client, await signed_up(sendgrid_client, engine, settings)
    )
    assert [s.outcome for s in position.path][:1] == ["sent"]
    assert fake_sendgrid.attempts == 3 + 2
    assert [m.subject for m in fake_sendgrid.requests] == [
        "Welcome to Parcours, Ada!",
        "Three tips to get started",
    ]
    assert [d.status for d in ledger.list_deliveries(engine, "ada")] == ["sent", "sent"]


async def test_a_template_that_fails_to_render_fails_only_its_delivery(
    time_skipping_env: WorkflowEnvironment,
    client: Client,
    engine: Engine,
    settings: Settings,
    tmp_path,
) -> None:
    (tmp_path / "broken.yaml").write_text(
        """
kind: template
id: broken
channel: email
subject: "Hi {{ profile.attributes.nickname }}"
body: b
---
kind: journey
id: broken
entry: {event: signed_up}
start: m
nodes:
  - {id: m, type: message, channel: email, template: broken, next: x}
  - {id: x, type: end}
"""
    )
    catalog.publish(engine, load_paths([tmp_path / "broken.yaml"]))
    routed = await send_event(
        client, engine, settings, NewEvent(type="signed_up", profile_id="ada")
    )
    assert sorted(routed.journeys) == ["journey:broken:ada", "journey:welcome:ada"]
    position = await finish(time_skipping_env, client, "journey:broken:ada")
    assert position.finished
    [delivery] = [d for d in ledger.list_deliveries(engine, "ada") if d.template == "broken"]
    assert delivery.status == "failed"
    assert delivery.reason == "template 'broken' subject: 'dict object' has no attribute 'nickname'"


async def test_an_event_for_an_unknown_journey_is_rejected_before_it_is_recorded(
    time_skipping_env: WorkflowEnvironment, client: Client, engine: Engine, settings: Settings
) -> None:
    from activities.events import get_event
    from parcours.errors import InputError

    for journey, reason in [
        ("nope", "no journey 'nope' is published; known: welcome"),
        ("welcome", "journey 'welcome' enters on 'signed_up' events, not 'clicked'"),
    ]:
        with pytest.raises(InputError) as raised:
            await send_event(
                client,
                engine,
                settings,
                NewEvent(type="clicked", profile_id="ada", id=f"e-{journey}"),
                journey,
            )
        assert (raised.value.field, raised.value.message) == ("journey", reason)
        assert get_event(engine, f"e-{journey}") is None
    routed = await send_event(
        client, engine, settings, NewEvent(type="signed_up", profile_id="ada"), "welcome"
    )
    assert routed.journeys == ["journey:welcome:ada"]
    # Let the entry run to its end: the test server stalls the next test's time skipping if
    # an entry it has only just started is terminated under it.
    await finish(time_skipping_env, client, "journey:welcome:ada")
