"""Deliveries lose three indexes no query uses, which every ledger row paid for when written

`ix_deliveries_profile_id` repeats the first column of `ix_deliveries_profile_channel_sent`,
which serves every lookup by profile (frequency caps, erasure, `GET /v1/deliveries`). Nothing
looks deliveries up by `journey_id` or `campaign_id`: a campaign run's report and a journey
entry's messages are found by `workflow_id`. A campaign page writes a thousand rows at once,
and each index cost it about a tenth of its insert time.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

DROPPED = ("profile_id", "journey_id", "campaign_id")


def upgrade() -> None:
    for column in DROPPED:
        op.drop_index(f"ix_deliveries_{column}", table_name="deliveries")


def downgrade() -> None:
    for column in DROPPED:
        op.create_index(f"ix_deliveries_{column}", "deliveries", [column])
