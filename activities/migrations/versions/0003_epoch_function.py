"""parcours_epoch(text): RFC 3339 text to epoch seconds, NULL when it is not one

Segment rules with `within_last` read datetimes stored as text in JSON attributes. SQLite gets
the same function from Python on each connection (activities/db.py), so both stores parse
exactly what the in-memory evaluator parses.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        r"""
        CREATE OR REPLACE FUNCTION parcours_epoch(value text) RETURNS double precision
        LANGUAGE plpgsql IMMUTABLE AS $$
        BEGIN
            IF value IS NULL
               OR value !~ '^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$' THEN
                RETURN NULL;
            END IF;
            RETURN extract(epoch FROM value::timestamptz);
        EXCEPTION WHEN others THEN
            RETURN NULL;
        END
        $$
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS parcours_epoch(text)")
