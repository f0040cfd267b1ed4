"""Alembic environment: runs on the engine the store hands it, never on a URL of its own."""

from alembic import context

from activities.db import Base

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
