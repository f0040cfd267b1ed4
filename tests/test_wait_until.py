"""`wait until 09:00` in the profile's zone, across daylight-saving changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.engine import Engine
from temporalio.testing import WorkflowEnvironment

from activities.apply import apply_paths
from activities.profiles import set_profile
from parcours.loader import load_paths
from parcours.records import NewEvent
from parcours.settings import Settings
from parcours.timing import next_local_time
from starter.binaries import temporal_test_server
from starter.routing import send_event
from starter.search_attributes import register
from tests.journeys import finish, run_worker

PARIS = ZoneInfo("Europe/Paris")
MORNING = """
kind: template
id: morning
channel: email
subject: Good morning
body: hi
---
kind: journey
id: morning
entry: {event: joined}
start: nine
nodes:
  - {id: nine, type: wait, until: {time: "09:00", timezone: profile, fallback_timezone: America/New_York}, next: mail}
  - {id: mail, type: message, channel: email, template: morning, next: birthday}
  - {id: birthday, type: wait, until_attribute: birthday, next: done}
  - {id: done, type: end}
"""


@pytest.mark.parametrize(
    ("now", "at", "expected"),
    [
        # The day before clocks go forward: 09:00 in Paris is 07:00 UTC, not 08:00.
        (datetime(2027, 3, 27, 9, 0, tzinfo=UTC), time(9), datetime(2027, 3, 28, 7, 0, tzinfo=UTC)),
        # Before clocks go back: 09:00 is 08:00 UTC on the Sunday.
        (
            datetime(2027, 10, 30, 9, 0, tzinfo=UTC),
            time(9),
            datetime(2027, 10, 31, 8, 0, tzinfo=UTC),
        ),
        # Later the same day.
        (datetime(2027, 1, 5, 6, 0, tzinfo=UTC), time(9), datetime(2027, 1, 5, 8, 0, tzinfo=UTC)),
        # 02:30 does not exist on the spring-forward night: moved forward by the gap.
        (
            datetime(2027, 3, 27, 23, 0, tzinfo=UTC),
            time(2, 30),
            datetime(2027, 3, 28, 1, 30, tzinfo=UTC),
        ),
        # 02:30 happens twice on the fall-back night: the first one.
        (
            datetime(2027, 10, 30, 22, 0, tzinfo=UTC),
            time(2, 30),
            datetime(2027, 10, 31, 0, 30, tzinfo=UTC),
        ),
    ],
)
def test_next_local_time_keeps_the_wall_clock(now: datetime, at: time, expected: datetime) -> None:
    assert next_local_time(now, at, PARIS) == expected


def test_a_wait_takes_exactly_one_kind_and_real_zones(tmp_path: Path) -> None:
    def errors(text: str) -> str:
        (tmp_path / "bad.yaml").write_text(text)
        return "\n".join(str(e) for e in load_paths([tmp_path / "bad.yaml"]).errors)

    assert "nodes[0].until.time: '25:00' is not a valid time: expected HH:MM" in errors(
        MORNING.replace('"09:00"', '"25:00"')
    )
    assert "nodes[0].until.fallback_timezone: 'Mars/Base' is not an IANA time zone" in errors(
        MORNING.replace("America/New_York", "Mars/Base")
    )
    assert (
        "nodes[0].until: a wait takes exactly one of `duration`, `until` or `until_attribute`"
        in errors(MORNING.replace("{id: nine, type: wait,", "{id: nine, type: wait, duration: 1h,"))
    )


@pytest.fixture
async def env() -> AsyncIterator[WorkflowEnvironment]:
    # Its own server: this test moves the clock months ahead.
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(temporal_test_server())
    )
    await register(env.client)
    yield env
    await env.shutdown()


async def test_waiting_until_nine_across_the_march_change_lands_at_nine_in_paris(
    env: WorkflowEnvironment, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    (tmp_path / "morning.yaml").write_text(MORNING)
    apply_paths(engine, [tmp_path / "morning.yaml"])
    set_profile(
        engine,
        "ana",
        email="ana@example.com",
        timezone="Europe/Paris",
        attributes={"birthday": "2027-04-02T10:00:00+02:00"},
    )
    set_profile(engine, "nyc", email="nyc@example.com")  # no zone: the fallback applies
    # Move the server's clock to Saturday 27 March 2027, 10:00 in Paris (09:00 UTC).
    target = datetime(2027, 3, 27, 9, 0, tzinfo=UTC)
    await env.sleep(target - await env.get_current_time())
    async for client in run_worker(env, settings):
        for profile in ("ana", "nyc"):
            await send_event(client, engine, settings, NewEvent(type="joined", profile_id=profile))
        ana = await finish(env, client, "journey:morning:ana")
        nyc = await finish(env, client, "journey:morning:nyc")
    mail_at = ana.path[1].entered_at
    local = mail_at.astimezone(PARIS)
    assert (local.date().isoformat(), local.hour, local.minute) == ("2027-03-28", 9, 0)
    assert mail_at.astimezone(UTC).hour == 7, "summer time began overnight"
    assert ana.path[3].entered_at >= datetime(2027, 4, 2, 8, 0, tzinfo=UTC)
    assert ana.path[3].entered_at < datetime(2027, 4, 2, 8, 0, tzinfo=UTC) + timedelta(minutes=1)
    new_york = nyc.path[1].entered_at.astimezone(ZoneInfo("America/New_York"))
    assert (new_york.hour, new_york.minute) == (9, 0)
    assert nyc.path[2].outcome == "nothing to wait for", "no birthday attribute"
