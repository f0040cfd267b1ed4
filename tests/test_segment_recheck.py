"""The periodic re-check of time windows is a Temporal Schedule, on the real dev server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import Engine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.apply import apply_paths
from activities.events import record_event
from activities.segments import profile_segments, refresh_profile
from parcours.contracts import RecheckResult
from parcours.records import NewEvent
from parcours.settings import Settings
from starter.schedules import RECHECK_SCHEDULE_ID, ensure_recheck_schedule
from tests.conftest import client_with_plugin, run_schedule_now


async def test_a_lapsed_window_is_caught_by_the_scheduled_recheck(
    dev_server_env: WorkflowEnvironment, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    (tmp_path / "s.yaml").write_text(
        "kind: segment\nid: buyers\nrule: {event: order, within: 30d}\n"
    )
    apply_paths(engine, [tmp_path / "s.yaml"])
    then = datetime.now(UTC) - timedelta(days=31)
    record_event(engine, NewEvent(type="order", profile_id="ada", timestamp=then))
    refresh_profile(engine, "ada", event_type="order", now=then)
    assert [m.segment_id for m in profile_segments(engine, "ada")] == ["buyers"]

    client = client_with_plugin(dev_server_env, settings)
    async with Worker(client, task_queue=settings.task_queue):
        await ensure_recheck_schedule(client, settings, every=timedelta(hours=1))
        await ensure_recheck_schedule(client, settings)  # idempotent: keeps what exists
        try:
            result = await run_schedule_now(client, RECHECK_SCHEDULE_ID)
        finally:
            await client.get_schedule_handle(RECHECK_SCHEDULE_ID).delete()
    assert RecheckResult.model_validate(result) == RecheckResult(entered=0, exited=1)
    assert profile_segments(engine, "ada") == []
