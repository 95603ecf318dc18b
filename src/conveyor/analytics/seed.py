"""The demo data model seeded on first start (`CONVEYOR_SEED_DEMO`): a generated DuckDB database and its model.

Several processes may start at once on one data directory and one store, and each start must leave exactly one
demo. The database file is built when the model is first used (`ModelService` calls `ensure_demo_database`),
under a temporary name renamed into place (a rename is atomic; every build writes the same data); the
connection, the model and its files are inserted in one transaction that only goes on when its connection insert
was not a duplicate. The connection row, once made, stays: a demo model the
operator deleted is not made again.
"""

from __future__ import annotations

import logging
import os
import secrets
import uuid
from collections.abc import Callable
from pathlib import Path

from conveyor.analytics.demo import build_demo_database, demo_model_files
from conveyor.analytics.store import model_ops, now_ms
from conveyor.store.db import Database, Op

DEMO_CONNECTION = "demo"
DEMO_MODEL = "Demo sales"
log = logging.getLogger("conveyor.seed")


def demo_database_path(data_dir: Path) -> Path:
    return (data_dir / "analytics" / "demo.duckdb").resolve()


def demo_generators(data_dir: Path) -> dict[str, Callable[[Path], object]]:
    """What `ModelService` builds on first use: the demo database file of this data directory."""
    return {str(demo_database_path(data_dir)): ensure_demo_database}


def ensure_demo_database(path: Path) -> bool:
    """Builds the demo DuckDB file at `path` unless it exists; True when this call built it."""
    if path.is_file():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        build_demo_database(scratch)
        os.replace(scratch, path)
    finally:
        for leftover in (scratch, scratch.with_name(scratch.name + ".wal")):
            leftover.unlink(missing_ok=True)
    return True


async def seed_demo_model(db: Database, data_dir: Path) -> str | None:
    """Makes the demo database and model unless the demo connection exists; the new model's id, or None."""
    path = demo_database_path(data_dir)
    if await db.fetch_val("SELECT id FROM analytics_connections WHERE name = $1", DEMO_CONNECTION) is not None:
        return None
    at = now_ms()
    connection_id, model_id = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        inserted = await _insert_demo(db, connection_id, model_id, path, at)
    except Exception:  # e.g. the operator named a model "Demo sales": the server starts all the same
        log.exception("could not seed the demo data model")
        return None
    if not inserted:
        return None
    log.info("seeded the demo data model %s (%s)", DEMO_MODEL, model_id)
    return model_id


async def _insert_demo(db: Database, connection_id: str, model_id: str, path: Path, at: int) -> bool:
    ops = model_ops(model_id, DEMO_MODEL, connection_id, demo_model_files(), None, at)
    for op in ops:  # only when the connection was new: a process that lost the race to another inserts nothing more
        op.if_changed = True
    (inserted, *_rest) = await db.write(
        Op(
            "INSERT INTO analytics_connections (id, name, kind, target, created_at) VALUES ($1, $2, 'duckdb', $3, $4)"
            " ON CONFLICT (name) DO NOTHING",
            (connection_id, DEMO_CONNECTION, str(path), at),
        ),
        *ops,
    )
    return bool(inserted)
