"""journey finishes: one row per finished entry, for per-node reports

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journey_finishes",
        sa.Column("workflow_id", sa.String(length=512), nullable=False),
        sa.Column("first_run_id", sa.String(length=64), nullable=False),
        sa.Column("journey_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("profile_id", sa.String(length=255), nullable=False),
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("exit", sa.Text(), nullable=True),
        sa.Column("visits", sa.JSON(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workflow_id", "first_run_id"),
    )
    op.create_index("ix_journey_finishes_journey", "journey_finishes", ["journey_id", "version"])


def downgrade() -> None:
    op.drop_index("ix_journey_finishes_journey", table_name="journey_finishes")
    op.drop_table("journey_finishes")
