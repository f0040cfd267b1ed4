"""Campaign schedules on the real dev server: cron in a zone across daylight saving, and a
triggered schedule starting a run named `campaign:{id}:{time}`."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Engine
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.apply import apply_paths
from activities.campaigns import run_reports
from parcours.settings import Settings
from starter.campaigns import schedule_id, sync_schedules
from tests.conftest import EXAMPLES, client_with_plugin
from tests.test_campaigns import audience

PARIS = ZoneInfo("Europe/Paris")
DAILY = """
kind: campaign
id: morning
audience: {segment: newsletter}
channel: email
template: weekly-digest
schedule: {cron: "0 9 * * *", timezone: Europe/Paris, starts: "2027-03-25T00:00:00Z"}
"""


async def test_a_paris_cron_fires_at_nine_local_on_both_sides_of_the_march_change(
    dev_server_env: WorkflowEnvironment, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    shutil.copytree(EXAMPLES / "weekly-digest", tmp_path / "defs")
    (tmp_path / "defs" / "morning.yaml").write_text(DAILY)
    apply_paths(engine, [tmp_path / "defs"])
    client = dev_server_env.client
    assert sorted(await sync_schedules(client, engine, settings)) == [
        "campaign:morning",
        "campaign:weekly-digest",
    ]
    description = await client.get_schedule_handle(schedule_id("morning")).describe()
    times = description.info.next_action_times[:6]
    assert [t.astimezone(PARIS).strftime("%m-%d %H:%M") for t in times] == [
        "03-25 09:00", "03-26 09:00", "03-27 09:00", "03-28 09:00", "03-29 09:00", "03-30 09:00",
    ]  # fmt: skip
    # 08:00 UTC before the change, 07:00 UTC after.
    assert [t.astimezone(UTC).hour for t in times] == [8, 8, 8, 7, 7, 7]

    weekly = await client.get_schedule_handle(schedule_id("weekly-digest")).describe()
    assert all(
        (t.astimezone(PARIS).weekday(), t.astimezone(PARIS).hour) == (0, 9)
        for t in weekly.info.next_action_times
    )
    # Applying again changes the schedule in place; a campaign losing its schedule loses it.
    (tmp_path / "defs" / "morning.yaml").write_text(DAILY.replace("0 9 * * *", "30 18 * * *"))
    apply_paths(engine, [tmp_path / "defs"])
    await sync_schedules(client, engine, settings)
    description = await client.get_schedule_handle(schedule_id("morning")).describe()
    assert description.info.next_action_times[0].astimezone(PARIS).strftime("%H:%M") == "18:30"
    for name in ("morning", "weekly-digest"):
        await client.get_schedule_handle(schedule_id(name)).delete()


async def test_a_triggered_schedule_starts_a_run_named_after_the_campaign_and_time(
    dev_server_env: WorkflowEnvironment, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    shutil.copytree(EXAMPLES / "weekly-digest", tmp_path / "defs")
    (tmp_path / "defs" / "campaign.yaml").write_text(
        (tmp_path / "defs" / "campaign.yaml").read_text().replace("follow_up:", "# follow_up:")
    )
    apply_paths(engine, [tmp_path / "defs"])
    audience(engine, 30)
    client: Client = client_with_plugin(dev_server_env, settings)
    async with Worker(client, task_queue=settings.task_queue):
        await sync_schedules(client, engine, settings)
        handle = client.get_schedule_handle(schedule_id("weekly-digest"))
        await handle.trigger()
        async with asyncio.timeout(60):
            while (
                not run_reports(engine, "weekly-digest")
                or run_reports(engine, "weekly-digest")[0]["status"] != "completed"
            ):
                await asyncio.sleep(0.2)
        [report] = run_reports(engine, "weekly-digest")
        # The report is written by the run's last activity; the workflow completes just after.
        run = client.get_workflow_handle(report["run_id"])
        await run.result()
        await handle.delete()
    assert report["run_id"].startswith("campaign:weekly-digest:20")
    assert report["run_id"].endswith("Z")
    assert report["sent"] > 0 and report["audience"] == 30
    assert (await run.describe()).status == WorkflowExecutionStatus.COMPLETED
    assert datetime.fromisoformat(
        report["run_id"].split(":", 2)[2].replace("Z", "+00:00")
    ) <= datetime.now(UTC)
