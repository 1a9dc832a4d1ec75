"""Engines and migrations: SQLite (WAL, foreign keys, one writer at a time) or PostgreSQL."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def sqlite_url(data_dir: str | Path) -> str:
    """The default database: a SQLite file in the data directory."""
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{data_dir / 'digitbot.sqlite3'}"


def make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's begin event below issues BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection) -> None:
        # Writers take the write lock up front: a deferred transaction that upgrades to writing can fail at
        # once with "database is locked" when another writer got there first, instead of waiting its turn.
        # Readers do not: in WAL mode they read a snapshot beside the writer (the trainer's big read too).
        immediate = connection.get_execution_options().get("for_writing")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def for_writing(engine: Engine) -> Engine:
    """The same engine (pool, events) for transactions that write: on SQLite they lock at BEGIN."""
    return engine.execution_options(for_writing=True)


def _migrate(engine: Engine, step, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        step(config, revision)
        connection.commit()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the Alembic migrations up to `revision` (idempotent; runs at every start)."""
    _migrate(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Undo migrations down to `revision` ("base": an empty database)."""
    _migrate(engine, command.downgrade, revision)


def connect(url: str) -> Engine:
    """An engine for `url` with the schema migrated to the newest version."""
    engine = make_engine(url)
    upgrade(engine)
    log.info("database ready: %s", engine.url.render_as_string(hide_password=True))
    return engine
