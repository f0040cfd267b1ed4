"""The delivery ledger: one row per message, claimed before any provider is called.

A retried, replayed or restarted activity finds its row by idempotency key and does not send
again. A row left in `sending` means an attempt stopped during the provider call, so whether
the provider took the message is unknown: the provider is asked (SendGrid's Email Activity, by
the delivery id in the mail's custom args; Twilio's message list, by number, sender, body and
time) and the message is sent again only if it has no trace of it; a provider that cannot say
leaves it failed rather than sent a second time.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, bindparam, func, insert, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from activities import suppression
from activities.db import DeliveryRow, ProfileRow, dialect_of, is_one_of, utcnow
from activities.finishes import write_finish
from activities.profiles import write_session
from parcours.contracts import DeliveryResult, DeliveryStatus, EntryFinished, SendMessageInput
from parcours.delivery_policy import DeliveryPolicy
from parcours.records import Delivery, Profile

EXPIRED = "expired"
FREQUENCY_CAP = "frequency_cap"
# What a frequency cap counts: messages that reached, or may have reached, the provider.
COUNTED = ("sending", "sent", "delivered", "opened", "clicked", "bounced")
FINAL: frozenset[str] = frozenset(
    {"sent", "delivered", "opened", "clicked", "bounced", "failed", "suppressed"}
)
UNKNOWN_OUTCOME = (
    "an earlier attempt stopped during the provider call and the provider cannot say whether "
    "it took the message: not sent again to avoid a duplicate"
)


@dataclass(frozen=True)
class Claim:
    delivery_id: str
    # Set when this message was already settled by an earlier attempt: nothing to do.
    settled: DeliveryResult | None
    # An earlier attempt stopped during the provider call: ask the provider before sending.
    unknown: bool = False
    # What that attempt sent, and when: what the provider is asked about.
    to: str | None = None
    body: str | None = None
    sent_at: datetime | None = None


def claim(engine: Engine, request: SendMessageInput, now: datetime | None = None) -> Claim:
    try:
        with Session(engine) as session, session.begin():
            row = _find(session, request)
            if row is not None:
                return _claim_of(row)
            row = _new_row(request, now)
            _insert(session, row)
            return Claim(row.id, None)
    except IntegrityError:
        # A concurrent attempt inserted the same key first: settle against its row.
        return claim(engine, request, now)


# Built once, bound at each execution: every send runs them.
_ID_BY_KEY = select(DeliveryRow.id).where(DeliveryRow.idempotency_key == bindparam("key"))
DELIVERIES = cast(Table, DeliveryRow.__table__)
_INSERT = insert(DELIVERIES)
_COLUMNS = [column.key for column in DELIVERIES.columns]


def _find(session: Session, request: SendMessageInput) -> DeliveryRow | None:
    """The row an earlier attempt wrote for this message, if any. The key is looked up on the
    session's connection, past the ORM's execution layer, which costs more than the read
    itself: most messages are asked for once, and have none."""
    found = session.connection().execute(_ID_BY_KEY, {"key": request.idempotency_key}).scalar()
    return None if found is None else session.get_one(DeliveryRow, found)


def _insert(session: Session, row: DeliveryRow) -> None:
    """Write a new row, kept out of the session, by one INSERT: no unit of work to flush.
    Only the attributes set are inserted: the table's defaults fill the others."""
    set_ = inspect(row).dict
    session.connection().execute(_INSERT, [{c: set_[c] for c in _COLUMNS if c in set_}])


def _new_row(request: SendMessageInput, now: datetime | None) -> DeliveryRow:
    return DeliveryRow(
        id=str(uuid.uuid4()),
        idempotency_key=request.idempotency_key,
        profile_id=request.profile_id,
        channel=request.channel,
        template=request.template,
        status="queued",
        journey_id=request.journey_id,
        journey_version=request.journey_version,
        node_id=request.node_id,
        workflow_id=request.workflow_id,
        run_id=request.run_id,
        priority=request.priority,
        attempts=0,
        # When the message was due: what its maximum age is measured from.
        created_at=now or utcnow(),
    )


def _claim_of(row: DeliveryRow) -> Claim:
    """What an earlier attempt left in the row: settled, unknown, or still to do."""
    if row.status == "sending":
        return Claim(
            row.id, None, unknown=True, to=row.to_address, body=row.body, sent_at=row.sent_at
        )
    if row.status in FINAL:
        return Claim(row.id, _result(row))
    return Claim(row.id, None)


@dataclass(frozen=True)
class Admission:
    """What may be sent, checked against the store in the transaction that commits to it."""

    request: SendMessageInput
    profile: Profile
    to: str
    subject: str | None
    body: str
    now: datetime
    # Sent, not kept in the ledger: the text body is the record of what was said.
    html: str | None = None


@dataclass(frozen=True)
class Refusal:
    """A message known, before the ledger is asked, not to go: no profile, no address, no
    template, a template that does not render."""

    status: DeliveryStatus
    reason: str


@dataclass(frozen=True)
class Decided:
    """What `claim_and_admit` decided for this attempt."""

    delivery_id: str
    # Settled now, or held by quiet hours (`queued` with `not_before`); None: the row is
    # marked `sending`, committed, and the provider is to be called.
    result: DeliveryResult | None


def claim_and_admit(
    engine: Engine,
    request: SendMessageInput,
    now: datetime,
    admission: Admission | Refusal,
    policy: DeliveryPolicy,
    *,
    outbox: bool = False,
) -> Claim | Decided:
    """`claim` and `admit` (or the refusal's settling) in one transaction: the common case of
    a message asked for the first time costs one write, not two. A message settled in it
    records the entry's finish it carries (`request.finish`) in the same transaction.

    An earlier attempt's row wins over what this one prepared: a settled delivery is returned
    as the `Claim` it is, as is one left `sending` (unknown: the caller asks the provider, then
    `admit`s in a transaction of its own)."""
    try:
        with write_session(engine) as session:
            _lock_profile(session, request.profile_id)
            earlier = _find(session, request)
            if earlier is not None:
                found = _claim_of(earlier)
                if found.settled is not None or found.unknown:
                    return found
            # A new row is written once, with its outcome, after the checks (the cap leaves
            # it out in any case).
            row = earlier or _new_row(request, now)
            if isinstance(admission, Refusal):
                row.status, row.reason = admission.status, admission.reason
                result: DeliveryResult | None = _result(row)
            else:
                result = _admit_row(session, row, admission, policy, outbox)
            if earlier is None:
                _insert(session, row)
            return Decided(row.id, _with_finish(session, result, request.finish))
    except IntegrityError:
        # A concurrent attempt inserted the same key first (PostgreSQL; SQLite's write lock
        # keeps them apart): decide against its row.
        return claim_and_admit(engine, request, now, admission, policy, outbox=outbox)


def _with_finish(
    session: Session, result: DeliveryResult | None, finished: EntryFinished | None
) -> DeliveryResult | None:
    """The result, the entry's finish written with it when the message is settled: a message
    held by quiet hours, or still to be sent, is not the entry's end yet."""
    if finished is None or result is None or result.not_before is not None:
        return result
    write_finish(session.connection(), finished)
    return result.model_copy(update={"finish_recorded": True})


def admit(
    engine: Engine,
    delivery_id: str,
    admission: Admission,
    policy: DeliveryPolicy,
    *,
    outbox: bool = False,
) -> DeliveryResult | None:
    """Mark the provider call as under way, committed before the call is made (or, for the
    outbox, the message as sent); or say why not: a suppressed delivery, or one held by quiet
    hours (`queued` with `not_before`).

    One transaction per profile at a time, so two messages sent to one profile at once cannot
    both slip under its frequency cap. A message settled here records the entry's finish it
    carries, as in `claim_and_admit`.
    """
    with write_session(engine) as session:
        _lock_profile(session, admission.request.profile_id)
        row = session.get(DeliveryRow, delivery_id)
        assert row is not None
        result = _admit_row(session, row, admission, policy, outbox)
        return _with_finish(session, result, admission.request.finish)


def _lock_profile(session: Session, profile_id: str) -> None:
    # SQLite's write session already holds the one write lock; PostgreSQL locks the profile.
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(ProfileRow.id).where(ProfileRow.id == profile_id).with_for_update())


def _admit_row(
    session: Session,
    row: DeliveryRow,
    admission: Admission,
    policy: DeliveryPolicy,
    outbox: bool,
) -> DeliveryResult | None:
    request, now = admission.request, admission.now

    def suppressed(reason: str) -> DeliveryResult:
        row.status, row.reason = "suppressed", reason
        return _result(row)

    reason = suppression.reason_for(
        session.connection(), admission.profile, request.channel, admission.to
    )
    if reason is not None:
        return suppressed(reason)
    if request.priority == "marketing":
        if now - row.created_at > policy.max_age:
            return suppressed(EXPIRED)
        quiet = policy.quiet_hours.get(request.channel)
        opens = (
            quiet.opens_at(now, policy.zone(admission.profile.timezone))
            if quiet is not None and request.respect_quiet_hours
            else None
        )
        if opens is not None:
            if opens - row.created_at > policy.max_age:
                return suppressed(EXPIRED)
            row.reason = f"quiet hours ({quiet}) until {opens.isoformat()}"
            return _result(row).model_copy(update={"not_before": opens})
        cap = policy.frequency_caps.get(request.channel)
        if cap is not None:
            sent = marketing_sent(
                session,
                [row.profile_id],
                row.channel,
                now - cap.window,
                besides=DeliveryRow.id != row.id,
            )
            if sent.get(row.profile_id, 0) >= cap.limit:
                return suppressed(FREQUENCY_CAP)
    row.status, row.reason, row.sent_at = "sending", None, now
    row.to_address, row.subject, row.body = admission.to, admission.subject, admission.body
    row.attempts += 1
    if outbox:
        # No provider: recording the message is the whole of sending it.
        row.status, row.provider = "sent", "outbox"
        return _result(row)
    return None


def marketing_sent(
    session: Session,
    profile_ids: Sequence[str],
    channel: str,
    since: datetime,
    *,
    besides: ColumnElement[bool],
) -> dict[str, int]:
    """Marketing messages each profile was sent on `channel` since `since`: what a frequency
    cap counts. `besides` leaves out the sender's own deliveries (its row, its run)."""
    rows = session.execute(
        select(DeliveryRow.profile_id, func.count())
        .where(
            is_one_of(DeliveryRow.profile_id, profile_ids, dialect_of(session)),
            DeliveryRow.channel == channel,
            DeliveryRow.sent_at >= since,
            DeliveryRow.priority == "marketing",
            DeliveryRow.status.in_(COUNTED),
            besides,
        )
        .group_by(DeliveryRow.profile_id)
    ).all()
    return {profile_id: count for profile_id, count in rows}


def unclaimed(
    engine: Engine, profile_id: str, provider: str, message_ids: Sequence[str]
) -> list[str]:
    """The provider's message ids, of the given ones, that none of the profile's deliveries
    holds: what a message found at the provider may still be the delivery of."""
    with Session(engine) as session:
        held = set(
            session.scalars(
                select(DeliveryRow.provider_message_id).where(
                    DeliveryRow.profile_id == profile_id,
                    DeliveryRow.provider == provider,
                    DeliveryRow.provider_message_id.in_(message_ids),
                )
            )
        )
    return [m for m in message_ids if m not in held]


def release(engine: Engine, delivery_id: str, reason: str) -> None:
    """The provider did not take the message: a later attempt may send it."""
    with Session(engine) as session, session.begin():
        row = session.get(DeliveryRow, delivery_id)
        assert row is not None
        row.status, row.reason = "queued", reason


def finish(
    engine: Engine,
    delivery_id: str,
    status: DeliveryStatus,
    *,
    reason: str | None = None,
    provider: str | None = None,
    provider_message_id: str | None = None,
    finished: EntryFinished | None = None,
) -> DeliveryResult:
    """Settle the delivery, with the entry's finish it carries when there is one."""
    with Session(engine) as session, session.begin():
        row = session.get(DeliveryRow, delivery_id)
        assert row is not None
        row.status, row.reason, row.provider_message_id = status, reason, provider_message_id
        row.provider = provider or row.provider
        result = _with_finish(session, _result(row), finished)
        assert result is not None
        return result


def list_deliveries(
    engine: Engine, profile_id: str | None = None, limit: int = 1000
) -> list[Delivery]:
    with Session(engine) as session:
        query = select(DeliveryRow).order_by(DeliveryRow.created_at, DeliveryRow.id).limit(limit)
        if profile_id is not None:
            query = query.where(DeliveryRow.profile_id == profile_id)
        return [
            Delivery(
                id=row.id,
                profile_id=row.profile_id,
                channel=row.channel,
                template=row.template,
                status=row.status,
                reason=row.reason,
                journey_id=row.journey_id,
                campaign_id=row.campaign_id,
                idempotency_key=row.idempotency_key,
                provider=row.provider,
                provider_message_id=row.provider_message_id,
                created_at=row.created_at,
                to=row.to_address,
                subject=row.subject,
            )
            for row in session.scalars(query)
        ]


def _result(row: DeliveryRow) -> DeliveryResult:
    return DeliveryResult(
        delivery_id=row.id,
        status=row.status,
        reason=row.reason,
        provider_message_id=row.provider_message_id,
    )
