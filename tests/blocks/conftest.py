"""Fixtures for block tests: `make_ctx` builds the `BlockContext` a block runs with; `file_service` a real one."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor.blocks.base import BlockContext, UsageMeter
from conveyor.net import GuardedClient
from conveyor.settings import LimitsSettings
from conveyor.store.blobs import LocalBlobStore
from conveyor.store.db import SqliteDatabase
from conveyor.store.files import FileService
from conveyor.store.migrate import upgrade


@pytest.fixture
def make_ctx() -> Callable[..., BlockContext]:
    """Builds a context for one node run; keyword arguments replace its fields (`files=`, `http=`, `limits=`…).

    Files and HTTP default to `None`: the pure blocks never use them, and blocks that do pass real ones.
    """

    def make(**overrides: Any) -> BlockContext:
        ctx = BlockContext(
            job_id="job-test",
            node_id="node-test",
            files=None,  # type: ignore[arg-type]
            http=None,  # type: ignore[arg-type]
            usage=UsageMeter(),
            logger=logging.getLogger("test"),
            limits=LimitsSettings(),
        )
        return dataclasses.replace(ctx, **overrides) if overrides else ctx

    return make


@pytest.fixture
async def file_service(tmp_path: Path) -> AsyncIterator[FileService]:
    """A real file service (SQLite in `tmp_path`, local blobs) bound to user `u1` and job `j1`."""
    path = tmp_path / "c.db"
    upgrade(f"sqlite:///{path}")
    db = SqliteDatabase(path)
    await db.connect()
    async with GuardedClient() as http:
        yield FileService(db, LocalBlobStore(tmp_path / "files"), http, LimitsSettings(), user_id="u1", job_id="j1")
    await db.close()
