"""SQLite's WAL is started over while writes never pause, so it cannot grow without end under load."""

from __future__ import annotations

import asyncio
import os
import struct
import time
from pathlib import Path

from conveyor.store.db import Op, SqliteDatabase


def _wal_resets(wal: Path) -> int:
    """The WAL header's checkpoint sequence number: SQLite adds one each time it starts the WAL over."""
    with wal.open("rb") as handle:
        header = handle.read(16)
    return struct.unpack(">I", header[12:16])[0] if len(header) == 16 else 0


async def test_the_wal_is_started_over_under_steady_writes(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "steady.db")
    await db.connect()
    try:
        await db.write(Op("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"), Op("CREATE INDEX t_v ON t (v)"))
        wal = tmp_path / "steady.db-wal"
        first = _wal_resets(wal)
        deadline = time.monotonic() + 10
        writes = 0
        # Back-to-back batches with random index keys: thousands of WAL frames a second and never a quiet moment.
        while _wal_resets(wal) < first + 2 and time.monotonic() < deadline:
            batch = [Op("INSERT INTO t (v) VALUES ($1)", (os.urandom(16).hex(),)) for _ in range(50)]
            await asyncio.gather(*(db.write(op) for op in batch))
            writes += len(batch)
        assert _wal_resets(wal) >= first + 2, f"the WAL was never started over in {writes} writes"
        assert await db.fetch_val("SELECT COUNT(*) FROM t") == writes  # held writes waited, none was lost
    finally:
        await db.close()
