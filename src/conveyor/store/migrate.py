"""Schema migrations: `upgrade()` brings a database to the newest Alembic revision (`conveyor migrate`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, pool, text

from conveyor.store.db import sqlalchemy_url

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x636F6E76  # "conv": the advisory lock key migrations hold on PostgreSQL


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrates the database at `url` to `revision`, creating a SQLite file's directory first."""
    sa_url = sqlalchemy_url(url)
    if sa_url.startswith("sqlite:///"):
        Path(sa_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(sa_url, poolclass=pool.NullPool)
    if sa_url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _wal(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.execute("PRAGMA journal_mode = WAL")
            dbapi_conn.execute("PRAGMA busy_timeout = 10000")

    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Several processes starting together (API servers, workers) migrate one after another: the
                # later ones find the schema current. PostgreSQL's DDL is transactional, so the lock spans it.
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            config = alembic_config(url)
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    finally:
        engine.dispose()
