"""Alembic environment: runs on the connection that storage.db.upgrade hands over."""

from alembic import context
from sqlalchemy import text

from storage.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        # Several bot instances may start at once: one migrates, the others wait and find nothing to do.
        connection.execute(text("SELECT pg_advisory_xact_lock(7243190)"))
    context.run_migrations()
