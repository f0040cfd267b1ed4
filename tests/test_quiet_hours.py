"""Quiet hours in a journey: a marketing SMS due at 23:00 in the profile's zone waits on a
durable timer and goes out at 08:00 local the next morning."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from activities.apply import apply_paths
from activities.db import DeliveryRow
from activities.profiles import set_profile
from parcours.records import NewEvent
from parcours.settings import Settings
from starter.routing import send_event
from tests.delivery import with_providers
from tests.journeys import finish, run_worker

TOKYO = ZoneInfo("Asia/Tokyo")
LATE_SMS = """
kind: template
id: late
channel: sms
body: "Last chance: 20% off tonight"
---
kind: journey
id: late-offer
entry: {event: browsed}
start: eleven
nodes:
  - {id: eleven, type: wait, until: {time: "23:00", timezone: profile}, next: text}
  - {id: text, type: message, channel: sms, template: late, next: receipt}
  - {id: receipt, type: message, channel: sms, template: late, priority: transactional, next: done}
  - {id: done, type: end}
"""


async def test_a_marketing_sms_due_at_23_00_goes_out_at_08_00_local_the_next_morning(
    time_skipping_env: WorkflowEnvironment, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    (tmp_path / "late.yaml").write_text(LATE_SMS)
    apply_paths(engine, [tmp_path / "late.yaml"])
    set_profile(engine, "kenji", phone="+81312345678", timezone="Asia/Tokyo")
    settings = with_providers(settings, quiet_hours={"sms": "21:00-08:00"})

    async for client in run_worker(time_skipping_env, settings):
        routed = await send_event(
            client, engine, settings, NewEvent(type="browsed", profile_id="kenji")
        )
        [workflow_id] = routed.journeys
        position = await finish(time_skipping_env, client, workflow_id)
        history = await client.get_workflow_handle(workflow_id).fetch_history()

    assert [(s.node, s.outcome) for s in position.path] == [
        ("eleven", "waited"),
        ("text", "sent"),
        ("receipt", "sent"),
        ("done", "ended"),
    ]
    with Session(engine) as session:
        marketing, receipt = session.scalars(
            select(DeliveryRow).order_by(DeliveryRow.sent_at)
        ).all()
    due = position.path[1].entered_at.astimezone(TOKYO)
    assert (due.hour, due.minute) == (23, 0)
    sent = marketing.sent_at.astimezone(TOKYO) if marketing.sent_at else None
    assert sent is not None and (sent.hour, sent.minute) == (8, 0)
    assert sent.date() == due.date() + timedelta(days=1)
    # The transactional message after it is not held again.
    assert receipt.sent_at is not None and receipt.sent_at - marketing.sent_at < timedelta(
        minutes=1
    )
    timers = [
        e.timer_started_event_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED
    ]
    assert len(timers) == 2, "one for the wait, one for quiet hours"
    held = timers[1].start_to_fire_timeout.ToTimedelta()
    assert timedelta(hours=9) - timedelta(minutes=1) < held <= timedelta(hours=9)
