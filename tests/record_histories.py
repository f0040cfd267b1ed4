"""Record the committed histories the replay test runs (`make histories`).

Run it after a deliberate change to workflow code, once the change is guarded with
`workflow.patched` so the histories recorded before it still replay (see
docs/changing-workflows.md). Each scenario walks a profile through an example journey on the
time-skipping server and writes its history to tests/histories/.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.apply import apply_paths
from activities.db import engine_for
from activities.profiles import set_profile
from activities.segments import refresh_profile
from parcours.plugin import ParcoursPlugin
from parcours.records import NewEvent
from parcours.settings import Settings
from starter.binaries import temporal_test_server
from starter.routing import route_transitions, send_event
from starter.search_attributes import register

ROOT = Path(__file__).parent.parent
HISTORIES = Path(__file__).parent / "histories"

# (file name, events sent in order as (type, properties, hours to wait before sending))
SCENARIOS: dict[str, list[tuple[str, dict[str, object], float]]] = {
    "welcome": [("signed_up", {}, 0)],
    "abandoned-cart-timeout": [("cart_updated", {"total": 40}, 0)],
    "abandoned-cart-vip-checkout": [
        ("cart_updated", {"total": 40}, 0),
        ("checkout_started", {"items": 0}, 2),
        ("checkout_started", {"items": 3}, 0),
    ],
    "abandoned-cart-big-cart": [("cart_updated", {"total": 500}, 0)],
    "abandoned-cart-exit": [("cart_updated", {"total": 40}, 0), ("order_completed", {}, 0.5)],
    # From extra-journeys.yaml: split, wait until a time and an attribute, a webhook whose
    # receiver is down (retried, then the journey goes on), entry by segment and exit from it.
    "tour": [("tour", {}, 0)],
    "segment-exit": [("join_pro", {}, 0), ("leave_pro", {}, 2)],
}


async def record() -> None:
    HISTORIES.mkdir(exist_ok=True)
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(temporal_test_server())
    )
    try:
        await register(env.client)
        for name, events in SCENARIOS.items():
            data = Path(tempfile.mkdtemp())
            settings = Settings.load(data, env={}).model_copy(
                update={"task_queue": f"record-{uuid.uuid4()}"}
            )
            engine = engine_for(settings.database_url)
            apply_paths(engine, [ROOT / "examples", HISTORIES / "extra-journeys.yaml"])
            birthday = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
            set_profile(
                engine,
                "ada",
                email="ada@example.com",
                phone="+33612345678",
                timezone="Europe/Paris",
                attributes={"vip": "vip" in name, "birthday": birthday.isoformat()},
            )
            config = env.client.config()
            config["plugins"] = [ParcoursPlugin(settings)]
            client = Client(**config)
            async with Worker(client, task_queue=settings.task_queue):
                workflow_id = ""
                for kind, properties, hours in events:
                    if hours:
                        await env.sleep(timedelta(hours=hours))
                    if kind in ("join_pro", "leave_pro"):
                        plan = "pro" if kind == "join_pro" else "free"
                        set_profile(engine, "ada", attributes={"plan": plan})
                        changes = refresh_profile(engine, "ada", profile_changed=True)
                        reached = await route_transitions(client, engine, settings, changes)
                    else:
                        event = NewEvent(type=kind, profile_id="ada", properties=properties)
                        reached = (await send_event(client, engine, settings, event)).journeys
                    workflow_id = workflow_id or reached[0]
                handle = client.get_workflow_handle(workflow_id)
                while (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                    await env.sleep(timedelta(hours=1))
                history = await handle.fetch_history()
            (HISTORIES / f"{name}.json").write_text(history.to_json())
            print(f"recorded {name}: {len(history.events)} events")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(record())
