"""The app factory: nothing opens at import or creation, and a lifespan leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

from conveyor.app import create_app


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(120)
async def test_fifty_lifespans_leave_fds_threads_and_tasks_at_baseline(make_settings: Any) -> None:
    """Regression guard (as datasette's test_fd_leak): every lifespan closes all it opened."""
    settings = make_settings()

    async def one_lifespan() -> None:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            assert app.state.runtime.executor is not None

    await one_lifespan()  # first use: imports, seeding and lazy caches happen once
    await asyncio.sleep(0.05)
    fds, threads, tasks = _open_fds(), threading.active_count(), len(asyncio.all_tasks())
    for _ in range(50):
        await one_lifespan()
    await asyncio.sleep(0.05)
    assert _open_fds() <= fds
    assert threading.active_count() <= threads + 1  # the default executor may keep one idle worker
    assert len(asyncio.all_tasks()) <= tasks


def test_create_app_opens_nothing(make_settings: Any, tmp_path: Any) -> None:
    settings = make_settings(data_dir=tmp_path / "never")
    before = _open_fds()
    app = create_app(settings)
    assert _open_fds() == before
    assert not (tmp_path / "never").exists()
    assert not hasattr(app.state, "runtime")
