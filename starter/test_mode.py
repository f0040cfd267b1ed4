"""`parcours journeys test`: a journey walked by one made-up profile on a private
time-skipping Temporal server and a throwaway store, so days pass in seconds and nothing
reaches a customer (every message lands in the throwaway outbox)."""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import catalog, ledger
from activities.db import engine_for
from activities.profiles import set_profile
from parcours.contracts import JourneyPosition
from parcours.definitions import Segment, Template
from parcours.durations import Duration
from parcours.errors import InputError
from parcours.loader import Loaded, LoadFailed, load_paths
from parcours.plugin import ParcoursPlugin
from parcours.records import Delivery, NewEvent, Profile
from parcours.settings import Settings
from starter.binaries import temporal_test_server
from starter.routing import send_event
from starter.search_attributes import register
from workflows.journey import JourneyWorkflow

# Simulated time is cheap, but a journey that never ends must not run forever.
LONGEST = timedelta(days=400)


class ScriptedEvent(BaseModel):
    """One line of the events file: what happens, and how long after the previous line."""

    type: str = Field(min_length=1)
    properties: dict[str, Any] = Field(default_factory=dict)
    after: Duration | None = None


@dataclass
class TrialRun:
    position: JourneyPosition
    deliveries: list[Delivery]


def read_events(path: Path) -> list[ScriptedEvent]:
    events = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(ScriptedEvent.model_validate_json(line))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "line"
            raise InputError(f"{path}:{number}: {field}", first["msg"]) from None
    if not events:
        raise InputError(str(path), "no events: the first one must enter the journey")
    return events


async def run_test(
    files: Sequence[Path],
    journey_id: str | None,
    profile: Profile,
    events: Sequence[ScriptedEvent],
    known_templates: dict[str, Template],
    known_segments: dict[str, Segment],
) -> TrialRun:
    loaded = load_paths(files, known_templates, known_segments)
    if loaded.errors:
        raise LoadFailed(loaded.errors)
    journeys = (
        loaded.journeys
        if journey_id is None
        else [j for j in loaded.journeys if j.id == journey_id]
    )
    if len(journeys) != 1:
        found = ", ".join(j.id for j in loaded.journeys) or "none"
        raise InputError("journey", f"expected one journey to test (use --journey), found: {found}")
    journey = journeys[0]
    settings = Settings.load(Path(tempfile.mkdtemp(prefix="parcours-test-")), env={}).model_copy(
        update={"task_queue": f"test-mode-{uuid.uuid4()}"}
    )
    engine = engine_for(settings.database_url)
    # The throwaway store holds what the journey uses: these files, and what is published.
    catalog.publish(engine, _with_published(loaded, known_templates, known_segments))
    set_profile(
        engine,
        profile.id,
        email=profile.email,
        phone=profile.phone,
        timezone=profile.timezone,
        locale=profile.locale,
        attributes=profile.attributes,
    )
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(temporal_test_server())
    )
    try:
        await register(env.client)
        config = env.client.config()
        config["plugins"] = [ParcoursPlugin(settings)]
        client = Client(**config)
        async with Worker(client, task_queue=settings.task_queue):
            workflow_id = await _play(env, client, engine, settings, journey.id, profile.id, events)
            handle = client.get_workflow_handle_for(JourneyWorkflow.run, workflow_id)
            deadline = await env.get_current_time() + LONGEST
            while (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                if await env.get_current_time() > deadline:
                    await handle.terminate("test mode: still running after 400 simulated days")
                    break
                await env.sleep(timedelta(hours=1))
            position = await handle.query(JourneyWorkflow.position)
    finally:
        await env.shutdown()
    return TrialRun(position, ledger.list_deliveries(engine, profile.id))


async def _play(
    env: WorkflowEnvironment,
    client: Client,
    engine: Any,
    settings: Settings,
    journey_id: str,
    profile_id: str,
    events: Sequence[ScriptedEvent],
) -> str:
    workflow_id = ""
    for index, scripted in enumerate(events):
        if scripted.after:
            await env.sleep(scripted.after)
        routed = await send_event(
            client,
            engine,
            settings,
            NewEvent(type=scripted.type, profile_id=profile_id, properties=scripted.properties),
        )
        if index == 0:
            if not routed.journeys:
                raise InputError(
                    "events",
                    f"the first event ({scripted.type}) does not enter journey {journey_id!r}",
                )
            workflow_id = routed.journeys[0]
    return workflow_id


def _with_published(
    loaded: Any, templates: dict[str, Template], segments: dict[str, Segment]
) -> Any:

    for definition in [*templates.values(), *segments.values()]:
        if definition.id not in (
            loaded.templates if isinstance(definition, Template) else loaded.segments
        ):
            loaded.definitions.insert(0, Loaded(definition, "(published)"))
    return loaded


def profile_from_json(text: str) -> Profile:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError("--profile", f"expected a JSON object: {exc.msg}") from None
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(
            "--profile." + ".".join(str(p) for p in first["loc"]), first["msg"]
        ) from None
