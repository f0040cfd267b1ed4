"""Campaign runs: one workflow per run, pages of 5,000 (or 10 s of the rate limit), each
reachable member exactly once."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities import suppression
from activities.apply import apply_paths
from activities.campaigns import MAX_SUBSTITUTED_BYTES, PageSender, _substitutable
from activities.campaigns import start_run as start_campaign_run
from activities.channels import configured_senders
from activities.channels.base import Outgoing
from activities.db import CampaignAudienceRow, DeliveryRow, ProfileRow
from activities.erasure import erase_profile
from activities.profiles import profile_update, upsert_profiles
from parcours.contracts import CampaignPage, RunPlan, StartRun
from parcours.definitions import Campaign
from parcours.loader import load_paths
from parcours.settings import Settings
from starter.campaigns import start_run
from tests.conftest import EXAMPLES
from tests.delivery import with_providers
from tests.fakes.sendgrid import FakeSendGrid
from tests.journeys import run_worker
from workflows.campaign import page_size

AUDIENCE = 10_000
OPTED_OUT = range(0, AUDIENCE, 40)  # 250 profiles
BOUNCED = range(7, AUDIENCE, 100)  # 100 addresses on the suppression list


def audience(engine: Engine, size: int = AUDIENCE) -> None:
    upsert_profiles(
        engine,
        [
            profile_update(
                f"p{i:05d}",
                email=f"p{i:05d}@example.com",
                attributes={"newsletter": True, "first_name": f"P{i}"},
                consent={"email": False} if i in OPTED_OUT else None,
            )
            for i in range(size)
        ]
        + [profile_update("no-news", email="no@example.com", attributes={"newsletter": False})],
    )
    with Session(engine) as session, session.begin():
        for i in BOUNCED:
            suppression.suppress(session, "email", f"p{i:05d}@example.com", "bounced", "sendgrid")


def reachable(size: int = AUDIENCE) -> list[str]:
    """The addresses a run may send to in an `audience` of this size."""
    left_out = set(OPTED_OUT) | set(BOUNCED)
    return [f"p{i:05d}@example.com" for i in range(size) if i not in left_out]


def one_pass_digest(directory: Path) -> Path:
    """The weekly digest copied to `directory` with no follow-up and no rate limit: one pass,
    as fast as the worker sends."""
    shutil.copytree(EXAMPLES / "weekly-digest", directory)
    campaign = directory / "campaign.yaml"
    campaign.write_text(
        campaign.read_text()
        .replace("follow_up:", "# follow_up:")
        .replace("rate_limit:", "# rate_limit:")
    )
    return directory


@pytest.fixture
async def client(
    time_skipping_env: WorkflowEnvironment, settings: Settings, fake_sendgrid: FakeSendGrid
) -> AsyncIterator[Client]:
    async for client in run_worker(
        time_skipping_env, with_providers(settings, sendgrid=fake_sendgrid)
    ):
        yield client


@pytest.fixture
def digest(engine: Engine, tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES / "weekly-digest", tmp_path / "digest")
    apply_paths(engine, [tmp_path / "digest"])


RUN_ID = "campaign:weekly-digest:2026-11-29T09:00:00Z"


def snapshot(engine: Engine, run_id: str = RUN_ID) -> RunPlan:
    """A weekly digest run started now by its first activity: the audience snapshot."""
    request = StartRun(campaign_id="weekly-digest", run_id=run_id, now=datetime.now(UTC))
    return start_campaign_run(engine, request)


def first_page(
    engine: Engine, settings: Settings, plan: RunPlan, follow_up: bool = False
) -> PageSender:
    """The run's first page, up to 2,000, as its activity sends it (a follow-up two days on)."""
    page = CampaignPage(
        run_id=RUN_ID,
        campaign=plan.campaign,
        from_seq=1,
        limit=2000,
        now=datetime.now(UTC) + timedelta(days=2 if follow_up else 0),
        follow_up=follow_up,
    )
    return PageSender(engine, settings.delivery, configured_senders(settings), settings, page)


async def test_a_run_sends_every_reachable_member_exactly_once_and_reports_the_others(
    client: Client, engine: Engine, settings: Settings, fake_sendgrid: FakeSendGrid, digest: None
) -> None:
    audience(engine)
    handle = await start_run(client, engine, settings, "weekly-digest")
    assert handle.id.startswith("campaign:weekly-digest:")
    report = await handle.result()

    sent_to = reachable()
    mails = fake_sendgrid.requests
    first = [m for m in mails if m.subject.startswith("Your week")]
    assert Counter(m.to[0] for m in first) == Counter(sent_to), "each reachable member once"
    assert first[0].text is not None and "Here is what happened" in first[0].text
    assert first[0].subject == "Your week at Parcours, P1"
    assert (report.audience, report.sent, report.status) == (AUDIENCE, len(sent_to), "completed")
    assert report.suppressed == {
        "opted_out": len(OPTED_OUT),
        "bounced": len(set(BOUNCED) - set(OPTED_OUT)),
    }
    assert report.failed == {}
    # One request per 1,000 recipients, not one per recipient.
    assert fake_sendgrid.attempts <= 2 * (AUDIENCE // 1000 + 1)

    # The follow-up, two days later, went to those who did not open (all of them here).
    reminders = [m for m in mails if m.subject.startswith("In case you missed it")]
    assert Counter(m.to[0] for m in reminders) == Counter(sent_to)

    history = await handle.fetch_history()
    scheduled = [
        e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    # One activity per page of 2,000 (twice: the first message, then the follow-up).
    assert len(scheduled) <= 2 + 2 * (AUDIENCE // 2000 + 1)


@pytest.mark.parametrize(
    ("rate_limit", "size"),
    [(None, 5000), ("200/s", 2000), ("1000/s", 5000), ("30/m", 5), ("1/m", 1), ("0.5/s", 5)],
)
def test_a_page_takes_5000_recipients_or_10_seconds_of_the_rate_limit(
    rate_limit: str | None, size: int
) -> None:
    campaign = Campaign(
        id="c", audience={"segment": "s"}, channel="email", template="t", rate_limit=rate_limit
    )
    assert page_size(campaign) == size


async def test_a_run_with_no_rate_limit_sends_pages_of_5000(
    client: Client, engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    apply_paths(engine, [one_pass_digest(tmp_path / "defs")])
    audience(engine)
    handle = await start_run(client, engine, settings, "weekly-digest")
    assert (await handle.result()).sent == len(reachable())
    pages = [
        e.activity_task_scheduled_event_attributes
        for e in (await handle.fetch_history()).events
        if e.activity_task_scheduled_event_attributes.activity_type.name == "send_campaign_page"
    ]
    assert len(pages) == AUDIENCE // 5000


@pytest.mark.parametrize("follow_up", [False, True], ids=["first", "follow-up"])
def test_a_page_whose_requests_timed_out_after_sendgrid_took_them_is_not_sent_again(
    engine: Engine,
    settings: Settings,
    fake_sendgrid: FakeSendGrid,
    digest: None,
    follow_up: bool,
) -> None:
    settings = with_providers(settings, sendgrid=fake_sendgrid).model_copy(
        update={"provider_timeout_seconds": 0.5}
    )
    audience(engine, 2000)
    plan = snapshot(engine)
    if follow_up:
        first_page(engine, settings, plan).run()
    first_pass = len(fake_sendgrid.requests)
    # Both of the page's requests (SendGrid takes 1,000 each) answer after the client gave up;
    # SendGrid keeps their mails.
    fake_sendgrid.hang_next(1.5, times=2)
    with pytest.raises(ApplicationError, match="could not be sent yet"):
        first_page(engine, settings, plan, follow_up).run()
    fake_sendgrid.wait_for(first_pass + len(reachable(2000)), timeout=30)
    first_page(engine, settings, plan, follow_up).run()

    mails = fake_sendgrid.requests[first_pass:]
    assert Counter(m.to[0] for m in mails) == Counter(reachable(2000)), "each once, none again"
    assert fake_sendgrid.attempts == (4 if follow_up else 2)
    with Session(engine) as session:
        rows = [
            row
            for row in session.scalars(select(DeliveryRow).where(DeliveryRow.workflow_id == RUN_ID))
            if row.idempotency_key.endswith("/follow-up") == follow_up
        ]
    # Found through Email Activity, each with the id of the request that carried it.
    sent = [r for r in rows if r.status == "sent"]
    assert {r.status for r in rows} <= {"sent", "suppressed"} and len(sent) == len(reachable(2000))
    assert {r.provider_message_id for r in sent} == {m.message_id.split(".")[0] for m in mails}


def test_a_mail_too_long_for_a_bulk_request_is_found_by_its_tag_and_not_sent_again(
    engine: Engine, settings: Settings, fake_sendgrid: FakeSendGrid, tmp_path: Path
) -> None:
    defs = one_pass_digest(tmp_path / "defs")
    templates = defs / "templates.yaml"
    long_html = "  <p>" + "A long digest. " * 700 + "</p>\n"  # past the substitutions' limit
    templates.write_text(
        templates.read_text().replace("  <p>Here is what happened this week.</p>\n", long_html, 1)
    )
    apply_paths(engine, [defs])
    settings = with_providers(settings, sendgrid=fake_sendgrid).model_copy(
        update={"provider_timeout_seconds": 0.5}
    )
    audience(engine, 3)
    plan = snapshot(engine)
    # Each goes alone and answers after the client gave up; SendGrid keeps both.
    fake_sendgrid.hang_next(1.5, times=2)
    with pytest.raises(ApplicationError, match="could not be sent yet"):
        first_page(engine, settings, plan).run()
    fake_sendgrid.wait_for(2, timeout=30)
    result = first_page(engine, settings, plan).run()

    assert result.sent == 2 and fake_sendgrid.attempts == 2
    assert sorted(m.to[0] for m in fake_sendgrid.requests) == reachable(3)
    assert all(len(m.html or "") > MAX_SUBSTITUTED_BYTES for m in fake_sendgrid.requests)


def test_each_snapshot_numbers_its_members_from_one_in_id_order(
    engine: Engine, digest: None
) -> None:
    audience(engine, 30)
    members = sorted(f"p{i:05d}" for i in range(30))
    for run_id in (RUN_ID, "campaign:weekly-digest:again"):
        plan = snapshot(engine, run_id)
        with Session(engine) as session:
            rows = session.execute(
                select(CampaignAudienceRow.seq, CampaignAudienceRow.profile_id)
                .where(CampaignAudienceRow.run_id == run_id)
                .order_by(CampaignAudienceRow.seq)
            ).all()
        assert plan.audience == 30 and [tuple(r) for r in rows] == list(enumerate(members, 1))


def test_members_gone_after_the_snapshot_are_not_sent_to_and_the_others_are(
    engine: Engine, settings: Settings, fake_sendgrid: FakeSendGrid, digest: None
) -> None:
    settings = with_providers(settings, sendgrid=fake_sendgrid)
    audience(engine, 50)
    plan = snapshot(engine)
    # Erased: gone from the snapshot too. Deleted some other way: still a member, failed.
    erase_profile(engine, "p00001")
    with engine.begin() as connection:
        connection.execute(delete(ProfileRow).where(ProfileRow.id == "p00002"))
    result = first_page(engine, settings, plan).run()

    assert (result.sent, result.failed) == (len(reachable(50)) - 2, 1)
    with Session(engine) as session:
        rows = session.scalars(
            select(DeliveryRow).where(DeliveryRow.profile_id.in_(["p00001", "p00002"]))
        ).all()
    assert [(r.profile_id, r.status, r.reason) for r in rows] == [
        ("p00002", "failed", "profile 'p00002' was erased")
    ]
    received = {m.to[0] for m in fake_sendgrid.requests}
    assert received == set(reachable(50)) - {"p00001@example.com", "p00002@example.com"}
    assert "Your week at Parcours, P3" in {m.subject for m in fake_sendgrid.requests}


async def test_a_run_can_be_paused_resumed_and_queried(
    client: Client, engine: Engine, settings: Settings, fake_sendgrid: FakeSendGrid, digest: None
) -> None:
    audience(engine, 3000)
    handle = await start_run(client, engine, settings, "weekly-digest")
    await handle.signal("pause")
    progress = await handle.query("progress")
    await handle.signal("resume")
    report = await handle.result()
    assert report.audience == 3000 and report.status == "completed"
    assert progress is None or progress.audience == 3000


def test_campaign_files_are_checked_before_anything_is_published(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "kind: campaign\nid: c\naudience: {segment: nobody}\nchannel: sms\ntemplate: t\n"
        "schedule: {cron: '0 9 * *', timezone: Europe/Parris}\nrate_limit: fast\n"
    )
    errors = [str(e) for e in load_paths([bad]).errors]
    assert any("schedule.cron: '0 9 * *' is not a valid cron" in e for e in errors)
    assert any(
        "rate_limit: 'fast' is not a valid rate_limit: expected a count per second" in e
        for e in errors
    )
    assert any("schedule.timezone: 'Europe/Parris' is not an IANA time zone" in e for e in errors)
    bad.write_text(
        "kind: campaign\nid: c\naudience: {segment: nobody}\nchannel: sms\ntemplate: t\n"
    )
    errors = [str(e) for e in load_paths([bad]).errors]
    assert errors == [
        f"{bad}:3: audience: segment 'nobody' is not defined or applied",
        f"{bad}:5: template: no template 't' is defined or applied",
    ]


def zone_where_it_is(hour: int, now: datetime) -> str:
    """An `Etc/GMT±N` zone whose clock reads about `hour` o'clock at `now`."""
    offset = (hour - now.astimezone(UTC).hour + 12) % 24 - 12
    return "UTC" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


async def test_send_at_sends_each_recipient_at_that_hour_of_their_own_clock(
    time_skipping_env: WorkflowEnvironment,
    client: Client,
    engine: Engine,
    settings: Settings,
    tmp_path: Path,
) -> None:
    (tmp_path / "local.yaml").write_text(
        "kind: segment\nid: all\nrule: {attribute: newsletter, op: eq, value: true}\n---\n"
        "kind: template\nid: hello\nchannel: email\nsubject: Hello\nbody: Good morning\n---\n"
        "kind: campaign\nid: morning\naudience: {segment: all}\nchannel: email\n"
        "template: hello\nsend_at: {local_time: '09:00'}\n"
    )
    apply_paths(engine, [tmp_path / "local.yaml"])
    # The shared test server's clock may run ahead of ours.
    now = await time_skipping_env.get_current_time()
    early, late = zone_where_it_is(5, now), zone_where_it_is(13, now)
    upsert_profiles(
        engine,
        [
            profile_update(
                name, email=f"{name}@example.com", timezone=zone, attributes={"newsletter": True}
            )
            for name, zone in (("early", early), ("late", late))
        ],
    )
    handle = await start_run(client, engine, settings, "morning")
    report = await handle.result()
    assert (report.sent, report.held) == (2, 0)
    with Session(engine) as session:
        sent = {r.profile_id: r.sent_at for r in session.scalars(select(DeliveryRow))}
    assert sent["early"] is not None and sent["late"] is not None
    local = sent["early"].astimezone(ZoneInfo(early))
    assert (local.hour, local.minute) == (9, 0), "held until 09:00 on the early riser's clock"
    assert sent["late"] < sent["early"] - timedelta(hours=3), "09:00 had passed there: sent at once"
    timers = [
        e
        for e in (await handle.fetch_history()).events
        if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED
    ]
    assert len(timers) == 1


@pytest.mark.parametrize(
    ("text", "html", "fits"),
    [
        ("x" * (MAX_SUBSTITUTED_BYTES - 64), None, True),
        ("x" * (MAX_SUBSTITUTED_BYTES - 63), None, False),
        ("x" * 100, "é" * ((MAX_SUBSTITUTED_BYTES - 164) // 2), True),
        ("x" * 100, "é" * ((MAX_SUBSTITUTED_BYTES - 164) // 2 + 1), False),
        ("😀" * ((MAX_SUBSTITUTED_BYTES - 64) // 4), "", True),
        ("😀" * ((MAX_SUBSTITUTED_BYTES - 64) // 4 + 1), "", False),
    ],
)
def test_bodies_go_out_in_bulk_only_while_their_utf8_bytes_fit_substitutions(
    text: str, html: str | None, fits: bool
) -> None:
    message = Outgoing(to="ada@example.com", subject="s", text=text, html=html)
    assert _substitutable(message) is fits
