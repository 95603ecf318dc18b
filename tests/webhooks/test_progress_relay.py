"""The Omni progress relay on SQLite and PostgreSQL: every progress event of an AI job with progress webhooks
becomes one outbox row, also when an event with a smaller id commits after a larger one was read (ids come from a
sequence at insert, not at commit), and none twice."""

from __future__ import annotations

import asyncio
from typing import Any

from conveyor.api.omni_webhooks import ProgressRelay
from conveyor.jobs.service import JobService
from conveyor.settings import Settings
from conveyor.store.blobs import LocalBlobStore
from conveyor.store.db import Database, Op
from conveyor.store.files import FileService
from conveyor.store.recipes import create_recipe

BASE = 10**12  # explicit event ids far above the sequence's


async def ai_job(db: Database, tmp_path: Any, *, progress: bool) -> str:
    """A job with an AI job row (progress webhooks on or off), as `analytics.ai_jobs` writes them."""
    files = FileService(db, LocalBlobStore(tmp_path / "files"), None, Settings(data_dir=tmp_path).limits)
    jobs = JobService(db, files, max_pending=100, inline_max=1024)
    row, _ = await jobs.submit(recipe_id="r1", revision=1, inputs={}, timeout_s=60)
    job_id = str(row["id"])
    await db.write(
        Op(
            "INSERT INTO ai_conversations (id, user_id, model_id, title, created_at, updated_at)"
            " VALUES ($1, 'u', 'm', 't', 0, 0)",
            (job_id,),
        ),
        Op(
            "INSERT INTO ai_jobs (id, conversation_id, user_id, model_id, prompt, progress_webhook, created_at)"
            " VALUES ($1, $1, 'u', 'm', 'p', $2, 0)",
            (job_id, int(progress)),
        ),
    )
    return job_id


async def progress_event(db: Database, job_id: str, event_id: int) -> None:
    await db.write(
        Op(
            "INSERT INTO job_events (id, job_id, kind, node, data, at) VALUES ($1, $2, 'progress', 'n', '{}', 0)",
            (event_id, job_id),
        )
    )


async def relayed(db: Database) -> list[str]:
    rows = await db.fetch_all("SELECT event FROM webhook_deliveries ORDER BY event")
    return [row["event"] for row in rows]


async def test_late_commits_are_relayed_once_within_the_look_back(db: Database, tmp_path: Any) -> None:
    await create_recipe(db, name="r", body={"name": "r", "nodes": {}}, recipe_id="r1")
    job = await ai_job(db, tmp_path, progress=True)
    quiet = await ai_job(db, tmp_path, progress=False)
    woken: list[int] = []
    relay = ProgressRelay(db, lambda: woken.append(1))
    await relay.start()
    await relay.stop()  # driven by hand below, poll by poll
    relay.LOOKBACK_S = 0.5
    await progress_event(db, job, BASE + 10)
    await progress_event(db, quiet, BASE + 11)  # no progress webhooks: never relayed
    assert await relay.relay_once() == 1
    await progress_event(db, job, BASE + 5)  # a smaller id, committed after the larger one was read
    assert await relay.relay_once() == 1
    assert await relay.relay_once() == 0  # nothing twice
    assert await relayed(db) == sorted(f"progress.{BASE + n}" for n in (5, 10)) and len(woken) == 2
    await asyncio.sleep(relay.LOOKBACK_S * 2)
    assert await relay.relay_once() == 0  # the window moved past them: still nothing twice
    await progress_event(db, job, BASE + 20)
    assert await relay.relay_once() == 1
    assert await relayed(db) == sorted(f"progress.{BASE + n}" for n in (5, 10, 20))
