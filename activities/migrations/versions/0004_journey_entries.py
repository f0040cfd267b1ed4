"""journey entries (for re-entry rules), goal conversions, entry by segment

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("journeys") as batch:
        batch.add_column(sa.Column("entry_segment", sa.String(length=128), nullable=True))
        batch.create_index("ix_journeys_entry_segment", ["entry_segment"])
    op.create_table(
        "journey_entries",
        sa.Column("journey_id", sa.String(length=128), nullable=False),
        sa.Column("profile_id", sa.String(length=255), nullable=False),
        sa.Column("first_entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_version", sa.Integer(), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("journey_id", "profile_id"),
    )
    op.create_table(
        "conversions",
        sa.Column("journey_id", sa.String(length=128), nullable=False),
        sa.Column("profile_id", sa.String(length=255), nullable=False),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("variants", sa.JSON(), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("converted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("journey_id", "profile_id", "entered_at"),
    )


def downgrade() -> None:
    op.drop_table("conversions")
    op.drop_table("journey_entries")
    with op.batch_alter_table("journeys") as batch:
        batch.drop_index("ix_journeys_entry_segment")
        batch.drop_column("entry_segment")
