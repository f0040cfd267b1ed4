"""Campaign runs in the store: start (snapshot the audience), send a page, finish (report).

A run sends each member of its snapshot at most once: every recipient is a ledger row keyed by
(run, profile), claimed in bulk before the provider is called, exactly as journey messages are.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, func, insert, literal, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities import ledger, metrics, suppression
from activities.bound import BoundActivities
from activities.catalog import known_segments
from activities.channels import configured_senders
from activities.channels.base import DELIVERY_TAG, Outgoing, ProviderError, Sender
from activities.channels.email import MAX_PERSONALIZATIONS, SendGridEmail
from activities.db import (
    CampaignAudienceRow,
    CampaignRow,
    CampaignRunRow,
    DeliveryRow,
    ProfileRow,
    utcnow,
)
from activities.delivery import address_of, no_address, send_clock
from activities.rendering import RenderError, message_context, render
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
from parcours.records import Profile
from parcours.settings import Settings

DELIVERIES = cast(Table, DeliveryRow.__table__)
PROFILES = cast(Table, ProfileRow.__table__)
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

    @activity.defn(name="start_campaign_run")
    async def start_campaign_run(self, request: StartRun) -> RunPlan:
        return await asyncio.to_thread(start_run, self.engine, request)

    @activity.defn(name="send_campaign_page")
    async def send_campaign_page(self, page: CampaignPage) -> PageResult:
        # Heartbeats let Temporal notice a dead worker within seconds, not at the page timeout.
        work = asyncio.ensure_future(asyncio.to_thread(self._send_page, page))
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
        members = members_query(
            engine.dialect.name, campaign.audience, request.now, known_segments(engine)
        ).subquery()
        numbered = select(
            literal(request.run_id),
            func.row_number().over(order_by=members.c.id),
            members.c.id,
        )
        session.execute(
            insert(CampaignAudienceRow).from_select(["run_id", "seq", "profile_id"], numbered)
        )
        run.audience_size = session.scalar(
            select(func.count()).where(CampaignAudienceRow.run_id == request.run_id)
        )
        return RunPlan(campaign=campaign, audience=run.audience_size or 0)


@dataclass
class _Recipient:
    seq: int
    profile: Profile
    row: dict[str, Any]
    address: str | None = None
    message: Outgoing | None = None


class PageSender:
    """One page of a run: claim, admit, render and send up to `page.limit` recipients."""

    def __init__(
        self,
        engine: Engine,
        policy: DeliveryPolicy,
        senders: dict[str, Sender],
        settings: Settings,
        page: CampaignPage,
    ) -> None:
        self.engine, self.policy, self.senders, self.settings = engine, policy, senders, settings
        self.page = page
        self.campaign = page.campaign
        self.channel = self.campaign.channel
        self.now = send_clock(page.now)
        self.tag = f"{page.run_id}/{page.from_seq}"
        self.result = PageResult(next_seq=page.from_seq)
        self.release: list[str] = []

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
        template = self._template()
        admitted = self._admit(pending, template)
        self._send(admitted)
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

    def _members(self) -> list[tuple[int, str]]:
        with Session(self.engine) as session:
            return list(
                session.execute(
                    select(CampaignAudienceRow.seq, CampaignAudienceRow.profile_id)
                    .where(
                        CampaignAudienceRow.run_id == self.page.run_id,
                        CampaignAudienceRow.seq >= self.page.from_seq,
                    )
                    .order_by(CampaignAudienceRow.seq)
                    .limit(self.page.limit)
                ).all()
            )

    def _follow_up_targets(self, members: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """Those whose first message went out and was not opened (or clicked) since."""
        assert self.campaign.follow_up is not None
        waiting = ("sent", "delivered") + (
            ("opened",) if self.campaign.follow_up.to == "not_clicked" else ()
        )
        keys = {f"{self.page.run_id}/{p}": (seq, p) for seq, p in members}
        with Session(self.engine) as session:
            targets = set(
                session.scalars(
                    select(DeliveryRow.idempotency_key).where(
                        DeliveryRow.idempotency_key.in_(keys), DeliveryRow.status.in_(waiting)
                    )
                )
            )
        return [member for key, member in keys.items() if key in targets]

    def _key(self, profile_id: str) -> str:
        suffix = "/follow-up" if self.page.follow_up else ""
        return f"{self.page.run_id}/{profile_id}{suffix}"

    def _claim(self, members: Sequence[tuple[int, str]]) -> list[_Recipient]:
        """Every recipient's ledger row, inserting the missing ones in bulk."""
        keys = {self._key(p): (seq, p) for seq, p in members}
        template = self._template_id()
        with Session(self.engine) as session, session.begin():
            existing = {
                row.idempotency_key: row
                for row in session.execute(
                    select(DELIVERIES).where(DeliveryRow.idempotency_key.in_(keys))
                ).mappings()
            }
            fresh = [
                {
                    "id": str(uuid.uuid4()),
                    "idempotency_key": key,
                    "profile_id": profile_id,
                    "channel": self.channel,
                    "template": template,
                    "status": "queued",
                    "campaign_id": self.campaign.id,
                    "workflow_id": self.page.run_id,
                    "priority": self.campaign.priority,
                    "attempts": 0,
                    "created_at": self.now,
                    "updated_at": self.now,
                }
                for key, (_, profile_id) in keys.items()
                if key not in existing
            ]
            if fresh:
                session.execute(insert(DeliveryRow), fresh)
            profiles = {
                row["id"]: _profile(row)
                for row in session.execute(
                    select(PROFILES).where(PROFILES.c.id.in_([p for _, p in members]))
                ).mappings()
            }
        rows = {
            **{k: dict(v) for k, v in existing.items()},
            **{r["idempotency_key"]: r for r in fresh},
        }
        recipients, erased = [], []
        for key, (seq, profile_id) in keys.items():
            profile = profiles.get(profile_id)
            recipient = _Recipient(seq, profile or Profile(id=profile_id), rows[key])
            if profile is None and recipient.row["status"] in ("queued", "sending"):
                self._settle(recipient.row, "failed", f"profile {profile_id!r} was erased")
                erased.append(recipient)
            recipients.append(recipient)
        self._flush(erased)
        return recipients

    def _reconcile(self, unknown: list[_Recipient]) -> None:
        """Rows left `sending` by an attempt that stopped during the provider call: ask the
        provider which of them it took; the others are sent now. A provider that cannot say
        leaves them failed (outcome unknown) rather than risk a duplicate."""
        if not unknown:
            return
        sender = self.senders.get(self.channel)
        taken = sender.sent_to(PAGE_TAG, self.tag) if isinstance(sender, SendGridEmail) else None
        for recipient in unknown:
            row = recipient.row
            if taken is None:
                self._settle(row, "failed", ledger.UNKNOWN_OUTCOME)
            elif (row["to_address"] or "").lower() in taken:
                self._settle(row, "sent", None)
            else:
                row["status"] = "queued"
        self._flush(unknown)

    def _admit(self, pending: list[_Recipient], template: Template) -> list[_Recipient]:
        suppressed = self._suppressed_addresses(pending)
        capped = self._over_cap(pending)
        admitted: list[_Recipient] = []
        for recipient in pending:
            row, profile = recipient.row, recipient.profile
            address = address_of(profile, self.channel)
            reason = None
            if address is None:
                reason = no_address(self.channel)
            elif suppression.opted_out(profile, self.channel):
                reason = suppression.OPTED_OUT
            elif address in suppressed:
                reason = suppressed[address]
            elif self.campaign.priority == "marketing":
                held = self._held_until(profile)
                if held is not None:
                    row["reason"] = f"held until {held.isoformat()}"
                    self.result.held_until = min(self.result.held_until or held, held)
                    continue
                if profile.id in capped:
                    reason = ledger.FREQUENCY_CAP
            if reason is not None:
                self._settle(row, "suppressed", reason)
                continue
            try:
                rendered = render(template, message_context(self.settings, template, profile, None))
            except RenderError as exc:
                self._settle(row, "failed", str(exc))
                continue
            assert address is not None
            recipient.address = address
            recipient.message = Outgoing(
                to=address,
                subject=rendered.subject,
                text=rendered.text,
                html=rendered.html,
                correlation={DELIVERY_TAG: row["id"]},
            )
            row.update(
                status="sending", to_address=address, subject=rendered.subject, sent_at=self.now
            )
            row["attempts"] = (row.get("attempts") or 0) + 1
            admitted.append(recipient)
        # Committed before any provider call: a crash from here on leaves them `sending`.
        self._flush(pending)
        return admitted

    def _send(self, admitted: list[_Recipient]) -> None:
        sender = self.senders.get(self.channel)
        if not admitted:
            return
        if sender is None:
            for r in admitted:
                self._settle(r.row, "sent", None, provider="outbox")
        elif isinstance(sender, SendGridEmail):
            self._send_email(sender, admitted)
        else:
            self._send_each(sender, admitted)
        self._flush(admitted)

    def _send_email(self, sender: SendGridEmail, admitted: list[_Recipient]) -> None:
        bulk: list[_Recipient] = []
        single: list[_Recipient] = []
        for r in admitted:
            (bulk if _substituted_size(r.message) <= MAX_SUBSTITUTED_BYTES else single).append(r)
        for start in range(0, len(bulk), MAX_PERSONALIZATIONS):
            batch = bulk[start : start + MAX_PERSONALIZATIONS]
            try:
                message_id = sender.send_bulk(
                    [r.message for r in batch if r.message], {PAGE_TAG: self.tag}
                )
            except ProviderError as exc:
                for r in batch:
                    self._refused(r, exc)
                continue
            for r in batch:
                self._settle(r.row, "sent", None, provider=sender.provider, message_id=message_id)
        self._send_each(sender, single)

    def _send_each(self, sender: Sender, recipients: list[_Recipient]) -> None:
        def one(r: _Recipient) -> None:
            assert r.message is not None
            try:
                message_id = sender.send(r.message)
            except ProviderError as exc:
                self._refused(r, exc)
                return
            self._settle(r.row, "sent", None, provider=sender.provider, message_id=message_id)

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
            self._settle(row, "suppressed", f"{exc.suppress}: {exc.message}")
        elif exc.retryable:
            if not exc.ambiguous:
                row.update(status="queued", reason=exc.message)
            # Either way the page is tried again; an ambiguous row is reconciled first.
            self.release.append(row["id"])
            if exc.retry_after:
                self._retry_after = timedelta(seconds=exc.retry_after)
        else:
            self._settle(row, "failed", exc.message)

    _retry_after: timedelta | None = None

    # -- facts from the store ------------------------------------------------------------------

    def _template_id(self) -> str:
        if self.page.follow_up and self.campaign.follow_up is not None:
            return self.campaign.follow_up.template
        return self.campaign.template

    def _template(self) -> Template:
        with Session(self.engine) as session:
            templates = session.scalar(
                select(CampaignRunRow.templates).where(CampaignRunRow.id == self.page.run_id)
            )
        return Template.model_validate((templates or {})[self._template_id()])

    def _suppressed_addresses(self, pending: list[_Recipient]) -> dict[str, str]:
        addresses = [a for r in pending if (a := address_of(r.profile, self.channel))]
        with Session(self.engine) as session:
            return suppression.suppressed_addresses(session, self.channel, addresses)

    def _over_cap(self, pending: list[_Recipient]) -> set[str]:
        cap = self.policy.frequency_caps.get(self.channel)
        if cap is None or self.campaign.priority != "marketing" or not pending:
            return set()
        with Session(self.engine) as session:
            sent = ledger.marketing_sent(
                session,
                [r.profile.id for r in pending],
                self.channel,
                self.now - cap.window,
                besides=DeliveryRow.workflow_id.is_distinct_from(self.page.run_id),
            )
        return {profile_id for profile_id, n in sent.items() if n >= cap.limit}

    def _held_until(self, profile: Profile) -> datetime | None:
        send_at = self.campaign.send_at
        if send_at is not None and not self.page.follow_up:
            zone = self.policy.zone(profile.timezone or send_at.fallback_timezone)
            local = self.now.astimezone(zone)
            hour, minute = map(int, send_at.local_time.split(":"))
            due = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
            # The run's day in that zone: a zone already past the hour sends now.
            if due > local:
                return due.astimezone(self.now.tzinfo)
        quiet = self.policy.quiet_hours.get(self.channel)
        return quiet.opens_at(self.now, self.policy.zone(profile.timezone)) if quiet else None

    # -- writing rows back -----------------------------------------------------------------------

    def _settle(
        self,
        row: dict[str, Any],
        status: str,
        reason: str | None,
        *,
        provider: str | None = None,
        message_id: str | None = None,
    ) -> None:
        row["status"], row["reason"] = status, reason
        if provider is not None:
            row["provider"], row["provider_message_id"] = provider, message_id

    def _flush(self, recipients: Sequence[_Recipient]) -> None:
        """Write the rows' current state back in one statement."""
        if not recipients:
            return
        values = [
            {
                "b_id": r.row["id"],
                "status": r.row["status"],
                "reason": r.row.get("reason"),
                "provider": r.row.get("provider"),
                "provider_message_id": r.row.get("provider_message_id"),
                "to_address": r.row.get("to_address"),
                "subject": r.row.get("subject"),
                "sent_at": r.row.get("sent_at"),
                "attempts": r.row.get("attempts") or 0,
                "updated_at": utcnow(),
            }
            for r in recipients
        ]
        statement = (
            update(DELIVERIES)
            .where(DELIVERIES.c.id == bindparam("b_id"))
            .values({k: bindparam(k) for k in values[0] if k != "b_id"})
        )
        with Session(self.engine) as session, session.begin():
            session.connection().execute(statement, values)
        metrics.deliveries_settled(self.channel, (r.row["status"] for r in recipients))


def _substituted_size(message: Outgoing | None) -> int:
    if message is None:
        return 0
    return len(message.text.encode()) + len((message.html or "").encode()) + 64


def _profile(row: Any) -> Profile:
    # Rows the store wrote are valid already: skip validating a thousand of them per page.
    return Profile.model_construct(
        **{name: row[name] for name in ("id", "email", "phone", "timezone", "locale")},
        attributes=row["attributes"] or {},
        consent=row["consent"] or {},
        device_tokens=row["device_tokens"] or [],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


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
