"""events.routed_at: when an event was handed to the journeys and segments it concerns

An event is stored before it is routed; one whose routing failed (Temporal unreachable, say)
keeps `routed_at` empty, so the caller's retry of the same id routes it instead of being told
it is a duplicate. Events stored before this revision were routed (or imported) already.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("routed_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE events SET routed_at = received_at")


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("routed_at")
