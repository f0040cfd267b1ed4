"""The delivery ledger: one row per message, claimed before any provider is called.

A retried, replayed or restarted activity finds its row by idempotency key and does not send
again. A row left in `sending` means an attempt stopped during the provider call, so whether
the provider took the message is unknown: it is failed rather than sent a second time.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from activities.db import DeliveryRow
from parcours.contracts import DeliveryResult, DeliveryStatus, SendMessageInput
from parcours.records import Delivery

FINAL: frozenset[str] = frozenset(
    {"sent", "delivered", "opened", "clicked", "bounced", "failed", "suppressed"}
)
UNKNOWN_OUTCOME = (
    "an earlier attempt stopped during the provider call, so it may have been sent: "
    "not sent again to avoid a duplicate"
)


@dataclass(frozen=True)
class Claim:
    delivery_id: str
    # Set when this message was already settled by an earlier attempt: nothing to do.
    settled: DeliveryResult | None


def claim(engine: Engine, request: SendMessageInput) -> Claim:
    try:
        with Session(engine) as session, session.begin():
            row = session.scalar(
                select(DeliveryRow).where(DeliveryRow.idempotency_key == request.idempotency_key)
            )
            if row is None:
                row = DeliveryRow(
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
                )
                session.add(row)
                return Claim(row.id, None)
            if row.status == "sending":
                row.status, row.reason = "failed", UNKNOWN_OUTCOME
            if row.status in FINAL:
                return Claim(row.id, _result(row))
            return Claim(row.id, None)
    except IntegrityError:
        # A concurrent attempt inserted the same key first: settle against its row.
        return claim(engine, request)


def start_sending(
    engine: Engine, delivery_id: str, to: str, subject: str | None, body: str
) -> None:
    """Mark the provider call as under way (committed before the call is made)."""
    with Session(engine) as session, session.begin():
        row = session.get(DeliveryRow, delivery_id)
        assert row is not None
        row.status, row.to_address, row.subject, row.body = "sending", to, subject, body
        row.attempts += 1


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
    to: str | None = None,
    subject: str | None = None,
    body: str | None = None,
) -> DeliveryResult:
    with Session(engine) as session, session.begin():
        row = session.get(DeliveryRow, delivery_id)
        assert row is not None
        row.status, row.reason, row.provider_message_id = status, reason, provider_message_id
        row.provider = provider or row.provider
        if to is not None:
            row.to_address, row.subject, row.body = to, subject, body
        return _result(row)


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
