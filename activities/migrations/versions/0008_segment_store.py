"""jsonb for the objects segment rules read; a revision token for the segment catalog

PostgreSQL: profiles.attributes, profiles.consent and events.properties become `jsonb`, parsed
once when written instead of at every `->` a rule makes. A string holding NUL (\\u0000) cannot
be stored in `jsonb`: such rows would stop the conversion, so the migration names them.
SQLite keeps its JSON text.

Both: `catalog_revisions`, one row per catalog (`segments`) whose token changes in every
transaction that changes it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

from uuid import uuid4

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMNS = (("profiles", "attributes"), ("profiles", "consent"), ("events", "properties"))


def upgrade() -> None:
    catalog_revisions = op.create_table(
        "catalog_revisions",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("token", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.bulk_insert(catalog_revisions, [{"name": "segments", "token": uuid4().hex}])
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        nul = bind.execute(
            sa.text(f"SELECT count(*) FROM {table} WHERE {column}::text LIKE '%\\\\u0000%'")
        ).scalar_one()
        if nul:
            raise RuntimeError(
                f"{table}.{column}: {nul} row(s) hold a NUL character (\\u0000), which jsonb "
                "cannot store; remove it from those values and migrate again"
            )
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} DROP DEFAULT")
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE jsonb USING {column}::jsonb")
    op.execute("ALTER TABLE profiles ALTER COLUMN consent SET DEFAULT '{}'::jsonb")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, column in COLUMNS:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE json USING {column}::json")
        op.execute("ALTER TABLE profiles ALTER COLUMN consent SET DEFAULT '{}'::json")
    op.drop_table("catalog_revisions")
