"""ix_events_waiting: the events still waiting to be routed, by when they were received

A schedule routes the events a caller never retried (the API process died mid-routing, or
Temporal was unreachable and the client gave up). A partial index keeps finding them cheap on
a store of tens of millions of events, nearly all of them routed.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

WAITING = sa.text("routed_at IS NULL")


def upgrade() -> None:
    op.create_index(
        "ix_events_waiting",
        "events",
        ["received_at"],
        sqlite_where=WAITING,
        postgresql_where=WAITING,
    )


def downgrade() -> None:
    op.drop_index("ix_events_waiting", table_name="events")
