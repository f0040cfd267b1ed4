"""Campaign runs in the store: start (snapshot the audience), send a page, finish (report).

A run sends each member of its snapshot at most once: every recipient is a ledger row keyed by
(run, profile), claimed in bulk before the provider is called, exactly as journey messages are.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from pydantic_core import from_json
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    type_coerce,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities import ledger, metrics, rendering, suppression
from activities.bound import BoundActivities
from activities.catalog import known_segments
from activities.channels import configured_senders
from activities.channels.base import DELIVERY_TAG, Outgoing, ProviderError, Sender
from activities.channels.email import MAX_PERSONALIZATIONS, SendGridEmail
from activities.channels.sms import TwilioSms
from activities.child_processes import ChildProcesses, process_count
from activities.db import (
    CampaignAudienceRow,
    CampaignRow,
    CampaignRunRow,
    DeliveryRow,
    ProfileRow,
    dialect_of,
    insert_many,
    is_one_of,
    ordered_ids,
    plan_for_values,
    utcnow,
)
from activities.delivery import address_of, no_address, retry_delay, send_clock, sms_taken
from activities.ledger import DELIVERIES
from activities.rendering import RenderError, profile_json
from activities.rule_sql import members_query
from parcours.contracts import (
    CampaignPage,
    CampaignReport,
    FinishRun,
    PageResult,
    RunPlan,
    StartRun,
)
from parcours.definitions import Campaign, Template
from parcours.delivery_policy import DeliveryPolicy
from parcours.settings import Settings

PROFILES = cast(Table, ProfileRow.__table__)
AUDIENCE = cast(Table, CampaignAudienceRow.__table__)
# What a message's template context and its checks read of a profile (`profile_json`).
PROFILE_COLUMNS = tuple(
    PROFILES.c[name]
    for name in (
        "id",
        "email",
        "phone",
        "timezone",
        "locale",
        "attributes",
        "consent",
        "device_tokens",
        "created_at",
        "updated_at",
    )
)


# On SQLite a page reads each profile's columns as the text SQLite holds and writes the JSON
# form from it: JSON columns parsed once (empty ones not at all), times only rewritten. Through
# SQLAlchemy's types they would become datetimes and dicts to be dumped again; built by SQLite
# (`json_object`) and parsed, 2.6 µs more per recipient.
_SQLITE_PROFILE_COLUMNS = tuple(type_coerce(c, String).label(c.name) for c in PROFILE_COLUMNS)


def profile_columns(dialect: str) -> tuple[ColumnElement[Any], ...]:
    """What a page reads of each profile, last in its row, for `page_profile`."""
    return _SQLITE_PROFILE_COLUMNS if dialect == "sqlite" else PROFILE_COLUMNS


def page_profile(dialect: str, row: Any) -> dict[str, Any] | None:
    """A profile's JSON form, as `Profile.model_dump(mode="json")` gives it, from a row ending
    with what `profile_columns` reads; None for a profile gone since the snapshot."""
    if dialect != "sqlite":
        return None if row.id is None else profile_json(row)
    *_, id_, email, phone, timezone, locale, attributes, consent, tokens, created, updated = row
    if id_ is None:
        return None
    return {
        "id": id_,
        "email": email,
        "phone": phone,
        "timezone": timezone,
        "locale": locale,
        "attributes": from_json(attributes) if attributes and attributes != "{}" else {},
        "consent": from_json(consent) if consent and consent != "{}" else {},
        "device_tokens": from_json(tokens) if tokens and tokens != "[]" else [],
        "created_at": _sqlite_time_json(created),
        "updated_at": _sqlite_time_json(updated),
    }


def _sqlite_time_json(text: str | None) -> str | None:
    """A time as SQLAlchemy keeps it in SQLite ("2026-11-29 04:40:15.123456") as pydantic
    writes it: "2026-11-29T04:40:15.123456Z", with no fraction when it is zero."""
    if text is None:
        return None
    text = f"{text[:10]}T{text[11:]}"
    return f"{text.removesuffix('.000000')}Z"


# Bodies longer than SendGrid's substitution limit go out one request each.
MAX_SUBSTITUTED_BYTES = 9_000
# Non-email channels send one request per recipient, this many at a time.
CONCURRENCY = 16
PAGE_TAG = "parcours_page"
HEARTBEAT_EVERY = 2.0


class CampaignActivities(BoundActivities):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.senders: dict[str, Sender] = configured_senders(settings)
        processes = process_count(settings.page_processes)
        self.page_processes = (
            ChildProcesses(processes, _start_page_process, (settings,), _send_page_in_process)
            if processes
            else None
        )

    @activity.defn(name="start_campaign_run")
    async def start_campaign_run(self, request: StartRun) -> RunPlan:
        return await asyncio.to_thread(start_run, self.engine, request)

    @activity.defn(name="send_campaign_page")
    async def send_campaign_page(self, page: CampaignPage) -> PageResult:
        # Heartbeats let Temporal notice a dead worker within seconds, not at the page timeout.
        work = asyncio.ensure_future(
            self.page_processes.run(page)
            if self.page_processes
            else asyncio.to_thread(self._send_page, page)
        )
        while True:
            done, _ = await asyncio.wait({work}, timeout=HEARTBEAT_EVERY)
            if done:
                return work.result()
            activity.heartbeat()

    @activity.defn(name="finish_campaign_run")
    async def finish_campaign_run(self, run: FinishRun) -> CampaignReport:
        return await asyncio.to_thread(finish_run, self.engine, run.run_id, run.status, run.now)

    @activity.defn(name="running_campaign_run")
    async def running_campaign_run(self, campaign_id: str) -> str | None:
        """A run of this campaign that is still going, if any (a schedule skips while one is).
        Runs recorded as running whose workflow has ended (terminated by hand) are closed."""
        client = activity.client()
        for run_id in await asyncio.to_thread(running_runs, self.engine, campaign_id):
            try:
                status = (await client.get_workflow_handle(run_id).describe()).status
            except RPCError:
                status = None
            if status == WorkflowExecutionStatus.RUNNING:
                return run_id
            await asyncio.to_thread(_close_run, self.engine, run_id)
        return None

    def _send_page(self, page: CampaignPage) -> PageResult:
        return PageSender(
            self.engine, self.settings.delivery, self.senders, self.settings, page
        ).run()

    def close(self) -> None:
        if self.page_processes is not None:
            self.page_processes.close()


# In a page process: the activities it sends pages with, made once by `_start_page_process`.
_IN_PROCESS: CampaignActivities | None = None


def _start_page_process(settings: Settings) -> None:
    global _IN_PROCESS
    _IN_PROCESS = CampaignActivities(settings.model_copy(update={"page_processes": 0}))
    # What the process holds from now on lives as long as it does (see plugin.frozen_heap).
    gc.freeze()


def _send_page_in_process(page: CampaignPage) -> PageResult:
    assert _IN_PROCESS is not None, "not a page process"
    return _IN_PROCESS._send_page(page)


def start_run(engine: Engine, request: StartRun) -> RunPlan:
    """Record the run and snapshot its audience in one statement; a retry starts it afresh."""
    with Session(engine) as session, session.begin():
        campaign_row = session.get(CampaignRow, request.campaign_id)
        if campaign_row is None:
            raise ApplicationError(
                f"campaign {request.campaign_id!r} is not applied", non_retryable=True
            )
        campaign = Campaign.model_validate(campaign_row.definition)
        run = session.get(CampaignRunRow, request.run_id)
        if run is not None and run.audience_size is not None:
            return RunPlan(
                campaign=Campaign.model_validate(run.definition), audience=run.audience_size
            )
        if run is None:
            run = CampaignRunRow(
                id=request.run_id,
                campaign_id=campaign.id,
                status="running",
                definition=campaign_row.definition,
                templates=campaign_row.templates,
                started_at=request.now,
            )
            session.add(run)
        session.execute(
            delete(CampaignAudienceRow).where(CampaignAudienceRow.run_id == request.run_id)
        )
        plan_for_values(session)
        members = members_query(
            engine.dialect.name, campaign.audience, request.now, known_segments(engine)
        )
        run.audience_size = _snapshot(session, request.run_id, members)
        return RunPlan(campaign=campaign, audience=run.audience_size)


# Where SQLite numbers a snapshot: a temporary table, the connection's own.
_NUMBERED = Table(
    "campaign_numbered",
    MetaData(),
    Column("seq", Integer, primary_key=True),
    Column("profile_id", String, nullable=False),
    prefixes=["TEMPORARY"],
)


def _snapshot(session: Session, run_id: str, members: Select[Any]) -> int:
    """Write the members to the run's snapshot, numbered from 1 in their order; returns how
    many there are."""
    if dialect_of(session) == "sqlite":
        # SQLite sorts the whole audience again for row_number(); a table's integer key numbers
        # rows as they are inserted instead (100,000 members: 0.14 s against 0.23 s).
        _NUMBERED.create(session.connection(), checkfirst=True)
        session.execute(delete(_NUMBERED))
        session.execute(insert(_NUMBERED).from_select(["profile_id"], members))
        numbered = select(literal(run_id), _NUMBERED.c.seq, _NUMBERED.c.profile_id)
    else:
        listed = members.subquery()
        numbered = select(
            literal(run_id), func.row_number().over(order_by=listed.c.id), listed.c.id
        )
    session.execute(
        insert(CampaignAudienceRow).from_select(["run_id", "seq", "profile_id"], numbered)
    )
    return session.scalar(select(func.count()).where(CampaignAudienceRow.run_id == run_id)) or 0


@dataclass(slots=True)
class _Profile:
    """A profile as a page reads it: its JSON form (what templates see), and the fields its
    checks read a dozen times per recipient, which costs less as attributes than as keys."""

    json: dict[str, Any]
    email: str | None
    phone: str | None
    timezone: str | None
    consent: dict[str, Any]
    device_tokens: list[str]

    @classmethod
    def of(cls, json: dict[str, Any]) -> _Profile:
        return cls(
            json, json["email"], json["phone"], json["timezone"], json["consent"],
            json["device_tokens"],
        )  # fmt: skip


# A page's member as `_members` reads it: seq, profile id, then its profile's columns. Read by
# position: by name, each field of a SQLAlchemy row took 0.7 µs, as much as the rest of a
# recipient's claim.
_Member = tuple[Any, ...]


@dataclass(slots=True)
class _Recipient:
    seq: int
    profile_id: str
    # The profile's row as the page read it; None when it was erased after the snapshot.
    profile: _Profile | None
    # The recipient's ledger row: the values to insert (fresh) or to write back (existing).
    row: dict[str, Any]
    fresh: bool
    address: str | None = None
    message: Outgoing | None = None


# A ledger row's values that a page reads back and may change.
_LEDGER_STATE = (
    "id",
    "status",
    "reason",
    "provider",
    "provider_message_id",
    "to_address",
    "subject",
    "sent_at",
    "attempts",
)


class PageSender:
    """One page of a run: claim, admit, render and send up to `page.limit` recipients.

    Every recipient's ledger row is written, with the outcome of its checks (`sending`,
    `suppressed`, `failed`, or `queued` while held), in one transaction committed before the
    provider is called; the provider's answer is written in a second one. Rows are read and
    written in bulk through SQLAlchemy Core: a page costs a handful of statements, not a few
    per recipient.
    """

    def __init__(
        self,
        engine: Engine,
        policy: DeliveryPolicy,
        senders: dict[str, Sender],
        settings: Settings,
        page: CampaignPage,
    ) -> None:
        self.engine, self.policy, self.senders, self.settings = engine, policy, senders, settings
        self.dialect = engine.dialect.name
        self.page = page
        self.campaign = page.campaign
        self.channel = self.campaign.channel
        self.now = send_clock(page.now)
        self.tag = f"{page.run_id}/{page.from_seq}"
        # What sets a follow-up's ledger keys and request tags apart from the first message's.
        self._suffix = "/follow-up" if page.follow_up else ""
        self.result = PageResult(next_seq=page.from_seq)
        self.release: list[str] = []
        # Existing rows whose state changed, by id, written back row by row.
        self._changed: dict[str, _Recipient] = {}
        # Requests the provider took: (provider, message id, the delivery ids it carried).
        self._taken: list[tuple[str, str, list[str]]] = []
        self._held: dict[str | None, datetime | None] = {}

    def run(self) -> PageResult:
        members = self._members()
        if not members:
            return self.result
        self.result.next_seq = members[-1][0] + 1
        if self.page.follow_up:
            members = self._follow_up_targets(members)
        recipients = self._claim(members)
        self._reconcile([r for r in recipients if r.row["status"] == "sending"])
        pending = [r for r in recipients if r.row["status"] == "queued"]
        admitted = self._admit(pending, self._template())
        # Committed before any provider call: a crash from here on leaves them `sending`.
        self._write_claims(recipients)
        self._send(admitted)
        self._write_outcomes()
        counts = Counter(r.row["status"] for r in recipients)
        self.result.sent = sum(counts[s] for s in ledger.COUNTED if s != "sending")
        self.result.suppressed, self.result.failed = counts["suppressed"], counts["failed"]
        if self.release:
            raise ApplicationError(
                f"{len(self.release)} message(s) of page {self.tag} could not be sent yet",
                type="ProviderUnavailable",
                next_retry_delay=self._retry_after,
            )
        return self.result

    # -- steps -------------------------------------------------------------------------------

    def _members(self) -> list[_Member]:
        """The page's members in snapshot order: seq, profile id, then what `profile_columns`
        reads of its profile (NULL when the profile is gone since)."""
        query = (
            select(AUDIENCE.c.seq, AUDIENCE.c.profile_id, *profile_columns(self.dialect))
            .select_from(AUDIENCE.outerjoin(PROFILES, PROFILES.c.id == AUDIENCE.c.profile_id))
            .where(AUDIENCE.c.run_id == self.page.run_id, AUDIENCE.c.seq >= self.page.from_seq)
            .order_by(AUDIENCE.c.seq)
            .limit(self.page.limit)
        )
        with self.engine.connect() as connection:
            # `all()` fetches the rows in one driver call; iterating asks for them one by one.
            return cast(list[_Member], connection.execute(query).all())

    def _follow_up_targets(self, members: list[_Member]) -> list[_Member]:
        """Those whose first message went out and was not opened (or clicked) since."""
        assert self.campaign.follow_up is not None
        waiting = ("sent", "delivered") + (
            ("opened",) if self.campaign.follow_up.to == "not_clicked" else ()
        )
        keys = {f"{self.page.run_id}/{m[1]}": m for m in members}
        with self.engine.connect() as connection:
            targets = set(
                connection.scalars(
                    select(DELIVERIES.c.idempotency_key).where(
                        is_one_of(DELIVERIES.c.idempotency_key, list(keys), self.dialect),
                        DELIVERIES.c.status.in_(waiting),
                    )
                )
            )
        return [member for key, member in keys.items() if key in targets]

    def _request_tag(self, seq: int) -> str:
        """The tag (custom arg `PAGE_TAG`) of the SendGrid request that carries recipient `seq`.

        A page's recipients go in requests by their numbers in the snapshot, each 1,000 from the
        page's first in one request tagged with the first of them: `sent_to` answers at most
        1,000 mails a query, so a request whose outcome is unknown is always looked up whole.
        A follow-up's requests are tagged apart from those of the first message."""
        first = seq - (seq - self.page.from_seq) % MAX_PERSONALIZATIONS
        return f"{self.page.run_id}/{first}{self._suffix}"

    def _key(self, profile_id: str) -> str:
        return f"{self.page.run_id}/{profile_id}{self._suffix}"

    def _claim(self, members: Sequence[_Member]) -> list[_Recipient]:
        """Every recipient with its ledger row: the existing one (a retried or held page), or
        a fresh `queued` one, inserted with its outcome by `_write_claims`."""
        keys = {self._key(m[1]): m for m in members}
        with self.engine.connect() as connection:
            existing = {
                row.idempotency_key: row._asdict()
                for row in connection.execute(
                    select(
                        DELIVERIES.c.idempotency_key, *(DELIVERIES.c[c] for c in _LEDGER_STATE)
                    ).where(is_one_of(DELIVERIES.c.idempotency_key, list(keys), self.dialect))
                )
            }
        # What every fresh row of the page shares.
        blank = {
            "channel": self.channel,
            "template": self._template_id(),
            "status": "queued",
            "reason": None,
            "campaign_id": self.campaign.id,
            "workflow_id": self.page.run_id,
            "priority": self.campaign.priority,
            "provider": None,
            "provider_message_id": None,
            "to_address": None,
            "subject": None,
            "sent_at": None,
            "attempts": 0,
            "created_at": self.now,
            "updated_at": self.now,
        }
        ids = iter(ordered_ids(len(keys) - len(existing)))
        recipients = []
        for key, member in keys.items():
            seq, profile_id = member[:2]
            row = existing.get(key)
            fresh = row is None
            if row is None:
                row = {**blank, "id": next(ids), "idempotency_key": key, "profile_id": profile_id}
            json = page_profile(self.dialect, member)
            profile = _Profile.of(json) if json is not None else None
            recipient = _Recipient(seq, profile_id, profile, row, fresh)
            if profile is None and row["status"] in ("queued", "sending"):
                self._settle(recipient, "failed", f"profile {profile_id!r} was erased")
            recipients.append(recipient)
        return recipients

    def _reconcile(self, unknown: list[_Recipient]) -> None:
        """Rows left `sending` by an attempt that stopped during the provider call: ask the
        provider which of them it took; the others are sent now. A provider that cannot say
        leaves them failed (outcome unknown) rather than risk a duplicate."""
        if not unknown:
            return
        sender = self.senders.get(self.channel)
        if isinstance(sender, TwilioSms):
            for recipient in unknown:
                row = recipient.row
                sid = sms_taken(
                    self.engine, sender, recipient.profile_id, row["to_address"], row["sent_at"]
                )
                if sid is None:
                    row["status"] = "queued"
                else:
                    self._settle(recipient, "sent", None, provider=sender.provider, message_id=sid)
            return
        lookups: dict[str, dict[str, str] | None] = {}
        for recipient in unknown:
            tag = self._request_tag(recipient.seq)
            if tag not in lookups:
                lookups[tag] = (
                    sender.sent_to(PAGE_TAG, tag) if isinstance(sender, SendGridEmail) else None
                )
            taken = lookups[tag]
            if taken is None:
                self._settle(recipient, "failed", ledger.UNKNOWN_OUTCOME)
                continue
            message_id = taken.get((recipient.row["to_address"] or "").lower())
            if message_id is None:
                recipient.row["status"] = "queued"
            else:
                self._settle(
                    recipient, "sent", None, provider="sendgrid", message_id=message_id or None
                )

    def _admit(self, pending: list[_Recipient], template: Template) -> list[_Recipient]:
        suppressed = self._suppressed_addresses(pending)
        capped = self._over_cap(pending)
        renderer = rendering.renderer(template)
        admitted: list[_Recipient] = []
        for recipient in pending:
            row, profile = recipient.row, recipient.profile
            assert profile is not None, "erased profiles were settled when claimed"
            address = address_of(profile, self.channel)
            reason = None
            if address is None:
                reason = no_address(self.channel)
            elif suppression.opted_out(profile, self.channel):
                reason = suppression.OPTED_OUT
            elif address in suppressed:
                reason = suppressed[address]
            elif self.campaign.priority == "marketing":
                held = self._held_until(profile.timezone)
                if held is not None:
                    row["reason"] = f"held until {held.isoformat()}"
                    self.result.held_until = min(self.result.held_until or held, held)
                    self._touched(recipient)
                    continue
                if recipient.profile_id in capped:
                    reason = ledger.FREQUENCY_CAP
            if reason is not None:
                self._settle(recipient, "suppressed", reason)
                continue
            try:
                rendered = renderer.render_profile(self.settings, profile.json)
            except RenderError as exc:
                self._settle(recipient, "failed", str(exc))
                continue
            assert address is not None, "a recipient with no address was suppressed"
            recipient.address = address
            recipient.message = Outgoing(
                to=address,
                subject=rendered.subject,
                text=rendered.text,
                html=rendered.html,
                correlation={DELIVERY_TAG: row["id"]},
            )
            row.update(
                status="sending",
                reason=None,
                to_address=address,
                subject=rendered.subject,
                sent_at=self.now,
                attempts=(row["attempts"] or 0) + 1,
            )
            self._touched(recipient)
            admitted.append(recipient)
        return admitted

    def _send(self, admitted: list[_Recipient]) -> None:
        sender = self.senders.get(self.channel)
        if not admitted:
            return
        if sender is None:
            # No provider: recording the message is the whole of sending it.
            self._taken.append(("outbox", "", [r.row["id"] for r in admitted]))
            for r in admitted:
                r.row.update(status="sent", provider="outbox")
        elif isinstance(sender, SendGridEmail):
            self._send_email(sender, admitted)
        else:
            self._send_each(sender, admitted)

    def _send_email(self, sender: SendGridEmail, admitted: list[_Recipient]) -> None:
        requests: dict[str, list[_Recipient]] = {}
        single: list[_Recipient] = []
        for r in admitted:
            assert r.message is not None
            tag = self._request_tag(r.seq)
            if _substitutable(r.message):
                requests.setdefault(tag, []).append(r)
            else:
                # Tagged like the request it would have gone in, to be found the same way.
                r.message.correlation[PAGE_TAG] = tag
                single.append(r)
        for tag, batch in requests.items():
            try:
                message_id = sender.send_bulk(
                    [r.message for r in batch if r.message], {PAGE_TAG: tag}
                )
            except ProviderError as exc:
                for r in batch:
                    self._refused(r, exc)
                continue
            self._taken.append((sender.provider, message_id, [r.row["id"] for r in batch]))
            for r in batch:
                r.row.update(
                    status="sent", provider=sender.provider, provider_message_id=message_id
                )
        self._send_each(sender, single)

    def _send_each(self, sender: Sender, recipients: list[_Recipient]) -> None:
        def one(r: _Recipient) -> None:
            assert r.message is not None
            try:
                message_id = sender.send(r.message)
            except ProviderError as exc:
                self._refused(r, exc)
                return
            self._settle(r, "sent", None, provider=sender.provider, message_id=message_id)

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(one, recipients))

    def _refused(self, recipient: _Recipient, exc: ProviderError) -> None:
        row = recipient.row
        if exc.suppress is not None:
            assert recipient.address is not None
            with Session(self.engine) as session, session.begin():
                suppression.suppress(
                    session, self.channel, recipient.address, exc.suppress, "provider"
                )
            self._settle(recipient, "suppressed", f"{exc.suppress}: {exc.message}")
        elif exc.retryable:
            if not exc.ambiguous:
                row.update(status="queued", reason=exc.message)
                self._touched(recipient)
            # Either way the page is tried again; an ambiguous row is reconciled first.
            self.release.append(row["id"])
            delay = retry_delay(exc, self.settings)
            if delay:
                self._retry_after = timedelta(seconds=delay)
        else:
            self._settle(recipient, "failed", exc.message)

    _retry_after: timedelta | None = None

    # -- facts from the store ------------------------------------------------------------------

    def _template_id(self) -> str:
        if self.page.follow_up and self.campaign.follow_up is not None:
            return self.campaign.follow_up.template
        return self.campaign.template

    def _template(self) -> Template:
        with self.engine.connect() as connection:
            templates = connection.scalar(
                select(CampaignRunRow.templates).where(CampaignRunRow.id == self.page.run_id)
            )
        return Template.model_validate((templates or {})[self._template_id()])

    def _suppressed_addresses(self, pending: list[_Recipient]) -> dict[str, str]:
        addresses = [
            a
            for r in pending
            if r.profile is not None and (a := address_of(r.profile, self.channel))
        ]
        with Session(self.engine) as session:
            return suppression.suppressed_addresses(session, self.channel, addresses)

    def _over_cap(self, pending: list[_Recipient]) -> set[str]:
        cap = self.policy.frequency_caps.get(self.channel)
        if cap is None or self.campaign.priority != "marketing" or not pending:
            return set()
        with Session(self.engine) as session:
            sent = ledger.marketing_sent(
                session,
                [r.profile_id for r in pending],
                self.channel,
                self.now - cap.window,
                besides=DeliveryRow.workflow_id.is_distinct_from(self.page.run_id),
            )
        return {profile_id for profile_id, n in sent.items() if n >= cap.limit}

    def _held_until(self, timezone: str | None) -> datetime | None:
        # The same for every recipient in one zone: worked out once per zone and page.
        if timezone not in self._held:
            self._held[timezone] = self._held_in(timezone)
        return self._held[timezone]

    def _held_in(self, timezone: str | None) -> datetime | None:
        send_at = self.campaign.send_at
        if send_at is not None and not self.page.follow_up:
            zone = self.policy.zone(timezone or send_at.fallback_timezone)
            local = self.now.astimezone(zone)
            hour, minute = map(int, send_at.local_time.split(":"))
            due = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
            # The run's day in that zone: a zone already past the hour sends now.
            if due > local:
                return due.astimezone(self.now.tzinfo)
        quiet = self.policy.quiet_hours.get(self.channel)
        return quiet.opens_at(self.now, self.policy.zone(timezone)) if quiet else None

    # -- writing rows ----------------------------------------------------------------------------

    def _settle(
        self,
        recipient: _Recipient,
        status: str,
        reason: str | None,
        *,
        provider: str | None = None,
        message_id: str | None = None,
    ) -> None:
        row = recipient.row
        row["status"], row["reason"] = status, reason
        if provider is not None:
            row["provider"], row["provider_message_id"] = provider, message_id
        self._touched(recipient)

    def _touched(self, recipient: _Recipient) -> None:
        if not recipient.fresh:
            self._changed[recipient.row["id"]] = recipient

    def _write_claims(self, recipients: list[_Recipient]) -> None:
        """Insert the fresh rows and write back the changed ones, in one transaction."""
        fresh = [r.row for r in recipients if r.fresh]
        try:
            with self.engine.begin() as connection:
                insert_many(connection, DELIVERIES, fresh)
                statuses = self._write_changed(connection)
        except IntegrityError as exc:
            # Another attempt of this page (a worker thought dead) claimed them first: the
            # next attempt finds its rows and settles against them.
            raise ApplicationError(
                f"page {self.tag} was claimed by another attempt meanwhile: {exc.orig}",
                type="PageClaimed",
            ) from exc
        for r in recipients:
            r.fresh = False
        # Counted once committed; a row held or under way is counted when it settles.
        metrics.deliveries_settled(self.channel, [*(row["status"] for row in fresh), *statuses])

    def _write_outcomes(self) -> None:
        """What the provider said: one statement per request it took, and the rows it
        refused or that went out one by one."""
        if not self._taken and not self._changed:
            return
        with self.engine.begin() as connection:
            for provider, message_id, ids in self._taken:
                connection.execute(
                    update(DELIVERIES)
                    .where(is_one_of(DELIVERIES.c.id, ids, self.dialect))
                    .values(
                        status="sent",
                        reason=None,
                        provider=provider,
                        provider_message_id=message_id or None,
                        updated_at=utcnow(),
                    )
                )
            statuses = self._write_changed(connection)
        sent = ["sent"] * sum(len(ids) for _, _, ids in self._taken)
        metrics.deliveries_settled(self.channel, [*sent, *statuses])

    def _write_changed(self, connection: Connection) -> list[str]:
        """Write back the rows changed since; returns their statuses."""
        changed, self._changed = list(self._changed.values()), {}
        if not changed:
            return []
        values = [
            {
                "b_id": r.row["id"],
                **{c: r.row[c] for c in _LEDGER_STATE if c != "id"},
                "updated_at": utcnow(),
            }
            for r in changed
        ]
        statement = (
            update(DELIVERIES)
            .where(DELIVERIES.c.id == bindparam("b_id"))
            .values({k: bindparam(k) for k in values[0] if k != "b_id"})
        )
        connection.execute(statement, values)
        return [r.row["status"] for r in changed]


def _substitutable(message: Outgoing | None) -> bool:
    """Whether the message's bodies fit in SendGrid's substitutions. A character is 1 to 4
    bytes of UTF-8: only bodies between the two bounds are encoded to be measured."""
    if message is None:
        return True
    chars = len(message.text) + len(message.html or "") + 64
    if 4 * chars <= MAX_SUBSTITUTED_BYTES:
        return True
    if chars > MAX_SUBSTITUTED_BYTES:
        return False
    size = len(message.text.encode()) + len((message.html or "").encode()) + 64
    return size <= MAX_SUBSTITUTED_BYTES


def running_runs(engine: Engine, campaign_id: str) -> list[str]:
    with Session(engine) as session:
        return list(
            session.scalars(
                select(CampaignRunRow.id).where(
                    CampaignRunRow.campaign_id == campaign_id, CampaignRunRow.status == "running"
                )
            )
        )


def _close_run(engine: Engine, run_id: str) -> None:
    with Session(engine) as session, session.begin():
        run = session.get(CampaignRunRow, run_id)
        if run is not None and run.status == "running":
            run.status = "abandoned"


def finish_run(engine: Engine, run_id: str, status: str, now: datetime) -> CampaignReport:
    with Session(engine) as session, session.begin():
        run = session.get(CampaignRunRow, run_id)
        if run is None:
            raise ApplicationError(f"campaign run {run_id!r} was never started", non_retryable=True)
        follow_up = Campaign.model_validate(run.definition).follow_up
        counts = session.execute(
            select(DeliveryRow.template, DeliveryRow.status, DeliveryRow.reason, func.count())
            .where(DeliveryRow.workflow_id == run_id)
            .group_by(DeliveryRow.template, DeliveryRow.status, DeliveryRow.reason)
        ).all()
        sent = follow_ups = 0
        suppressed: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        held = 0
        for template, state, reason, n in counts:
            if follow_up is not None and template == follow_up.template:
                follow_ups += n if state in ledger.COUNTED else 0
            elif state in ledger.COUNTED:
                sent += n
            elif state == "suppressed":
                suppressed[(reason or "unknown").split(":")[0]] += n
            elif state == "failed":
                failed[reason or "unknown"] += n
            else:
                held += n
        run.status, run.finished_at = status, now
        report = CampaignReport(
            run_id=run_id,
            campaign_id=run.campaign_id,
            status=status,
            audience=run.audience_size or 0,
            sent=sent,
            suppressed=dict(suppressed),
            failed=dict(failed),
            held=held,
            follow_up_sent=follow_ups,
            started_at=run.started_at,
            finished_at=now,
            duration_seconds=(now - run.started_at).total_seconds(),
        )
        run.report = report.model_dump(mode="json")
        return report


def run_reports(engine: Engine, campaign_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """The campaign's latest runs: the report of each finished one, progress of the others."""
    with Session(engine) as session:
        runs = session.scalars(
            select(CampaignRunRow)
            .where(CampaignRunRow.campaign_id == campaign_id)
            .order_by(CampaignRunRow.started_at.desc())
            .limit(limit)
        )
        return [
            run.report
            or {
                "run_id": run.id,
                "campaign_id": run.campaign_id,
                "status": run.status,
                "audience": run.audience_size or 0,
                "sent": 0,
                "suppressed": {},
                "failed": {},
                "started_at": run.started_at.isoformat(),
            }
            for run in runs
        ]


def latest_runs(engine: Engine) -> dict[str, dict[str, Any]]:
    with Session(engine) as session:
        rows = session.execute(
            select(CampaignRunRow.campaign_id, CampaignRunRow.id, CampaignRunRow.status).order_by(
                CampaignRunRow.started_at
            )
        ).all()
        return {campaign: {"id": run, "status": status} for campaign, run, status in rows}
