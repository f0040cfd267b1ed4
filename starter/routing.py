"""Events in: store the event, then start or feed the journeys it concerns.

Each journey entry has a deterministic workflow id, so signal-with-start either starts the
entry or signals the one already running: the same profile never has two live entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy

from activities import catalog
from activities.events import record_event
from parcours import search_attributes as sa
from parcours.contracts import EventRef, JourneyInput
from parcours.records import Event, NewEvent
from parcours.settings import Settings
from workflows.journey import JourneyWorkflow


def journey_workflow_id(journey_id: str, profile_id: str) -> str:
    return f"journey:{journey_id}:{profile_id}"


@dataclass
class Routed:
    event: Event
    duplicate: bool
    journeys: list[str] = field(default_factory=list)  # workflow ids started or signalled


async def send_event(client: Client, engine: Engine, settings: Settings, new: NewEvent) -> Routed:
    event, duplicate = record_event(engine, new)
    routed = Routed(event, duplicate)
    if duplicate:
        return routed
    ref = EventRef(id=event.id, type=event.type, timestamp=event.timestamp)
    for journey, version in catalog.live_journeys_for_event(engine, event.type):
        workflow_id = journey_workflow_id(journey.id, event.profile_id)
        await client.start_workflow(
            JourneyWorkflow.run,
            JourneyInput(
                journey=journey, version=version, profile_id=event.profile_id, entry_event=ref
            ),
            id=workflow_id,
            task_queue=settings.task_queue,
            # After an entry ends, the next matching event may start a new one (re_entry:
            # after_exit); while it runs, the event is only signalled to it.
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            start_signal="event",
            start_signal_args=[ref],
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(sa.JOURNEY, journey.id),
                    SearchAttributePair(sa.PROFILE, event.profile_id),
                    SearchAttributePair(sa.JOURNEY_VERSION, version),
                    SearchAttributePair(sa.NODE, journey.start),
                ]
            ),
            static_summary=f"{journey.name or journey.id} (v{version}) for {event.profile_id}",
        )
        routed.journeys.append(workflow_id)
    return routed
