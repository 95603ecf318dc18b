"""The Alembic migrations build exactly the schema `store/schema.py` declares, on both back ends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, pool

from conveyor.store.db import sqlalchemy_url
from conveyor.store.schema import metadata


def test_migrations_match_the_declared_schema(database_url: str) -> None:
    engine = create_engine(sqlalchemy_url(database_url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    assert diff == [], diff
