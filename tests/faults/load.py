"""A triggered load in process: profiles p0, p1… with an email address and a phone number, one
event each through `send_event` as concurrent API requests would send them, and the journey
they enter."""

from __future__ import annotations

import asyncio
import itertools

import yaml
from sqlalchemy.engine import Engine
from temporalio.client import Client, WorkflowExecutionStatus

from activities.profiles import profile_update, upsert_profiles
from parcours.records import NewEvent
from parcours.settings import Settings
from starter.routing import send_event

RECEIPT_TEMPLATES = """
kind: template
id: receipt-email
channel: email
subject: "Order {{ event.properties.order }}"
body: "Thanks for order {{ event.properties.order }}"
---
kind: template
id: receipt-sms
channel: sms
body: "Order {{ event.properties.order }} confirmed"
"""


def order_receipt(settle: str | None = None) -> str:
    """A journey on `ordered` events: an email, then an SMS, each quoting the order. With
    `settle` (a duration), it waits that long first, so every entry is in before any send."""
    nodes: list[dict[str, str]] = [
        {"id": "mail", "type": "message", "channel": "email", "template": "receipt-email"},
        {"id": "text", "type": "message", "channel": "sms", "template": "receipt-sms"},
        {"id": "done", "type": "end"},
    ]
    if settle:
        nodes.insert(0, {"id": "settle", "type": "wait", "duration": settle})
    for node, after in itertools.pairwise(nodes):
        node["next"] = after["id"]
    journey = {
        "kind": "journey",
        "id": "order-receipt",
        "entry": {"event": "ordered"},
        "start": nodes[0]["id"],
        "nodes": nodes,
    }
    return f"{RECEIPT_TEMPLATES}---\n{yaml.safe_dump(journey, sort_keys=False)}"


def phone(n: int) -> str:
    return f"+336123{n:05d}"


def add_people(engine: Engine, count: int) -> None:
    upsert_profiles(
        engine,
        [profile_update(f"p{n}", email=f"p{n}@example.com", phone=phone(n)) for n in range(count)],
    )


async def enter(
    client: Client, engine: Engine, settings: Settings, kind: str, count: int
) -> list[str]:
    """Send each of the first `count` people a `kind` event (16 at a time); returns the id of
    the one entry each event starts."""
    limit = asyncio.Semaphore(16)

    async def one(n: int) -> str:
        async with limit:
            event = NewEvent(type=kind, profile_id=f"p{n}", properties={"order": n})
            [workflow_id] = (await send_event(client, engine, settings, event)).journeys
            return workflow_id

    return list(await asyncio.gather(*(one(n) for n in range(count))))


async def completed(client: Client, workflow_ids: list[str], seconds: float) -> int:
    """Wait (at most `seconds`) for every entry to end; how many completed."""
    async with asyncio.timeout(seconds):
        await asyncio.gather(*(client.get_workflow_handle(w).result() for w in workflow_ids))
    statuses = [(await client.get_workflow_handle(w).describe()).status for w in workflow_ids]
    return statuses.count(WorkflowExecutionStatus.COMPLETED)
