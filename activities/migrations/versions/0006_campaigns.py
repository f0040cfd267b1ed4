"""campaigns, their runs and each run's audience snapshot

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("templates", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "campaign_runs",
        sa.Column("id", sa.String(length=512), nullable=False),
        sa.Column("campaign_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("templates", sa.JSON(), nullable=False),
        sa.Column("audience_size", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_campaign_runs_campaign", "campaign_runs", ["campaign_id", "started_at"])
    op.create_table(
        "campaign_audience",
        sa.Column("run_id", sa.String(length=512), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("profile_id", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "seq"),
    )
    with op.batch_alter_table("deliveries") as batch:
        batch.create_index("ix_deliveries_workflow", ["workflow_id"])


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_index("ix_deliveries_workflow")
    op.drop_table("campaign_audience")
    op.drop_index("ix_campaign_runs_campaign", "campaign_runs")
    op.drop_table("campaign_runs")
    op.drop_table("campaigns")
