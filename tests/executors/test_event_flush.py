"""When the executor writes node events: a resuming job's `finished` events at once (a resumed run skips the nodes
whose `finished` is in the store, so a crash must not lose them), everything else after `EVENT_FLUSH_DELAY_S`
with whatever other jobs emitted meanwhile. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from conveyor.executors.local import EVENT_FLUSH_DELAY_S, LocalExecutor
from conveyor.jobs.service import ClaimedJob, JobService
from conveyor.settings import Settings
from conveyor.store.blobs import LocalBlobStore
from conveyor.store.db import Database
from conveyor.store.files import FileService
from conveyor.store.recipes import create_recipe


@pytest.fixture
async def jobs(db: Database, tmp_path: Any) -> JobService:
    await create_recipe(db, name="r", body={"name": "r", "nodes": {}}, recipe_id="r1")
    files = FileService(db, LocalBlobStore(tmp_path / "files"), None, Settings(data_dir=tmp_path).limits)
    return JobService(db, files, max_pending=100, inline_max=1024)


def executor_for(jobs: JobService) -> LocalExecutor:
    """An executor that runs nothing by itself (no engine, no graphs): only its event buffering is exercised."""
    nothing: Any = None
    return LocalExecutor(
        jobs, nothing, nothing, concurrency=1, lease_s=30, renew_interval_s=10, poll_interval_s=1, claims=False
    )


async def claimed(jobs: JobService, executor: LocalExecutor, on_interrupt: str) -> ClaimedJob:
    row, _ = await jobs.submit(recipe_id="r1", revision=1, inputs={}, timeout_s=60, on_interrupt=on_interrupt)
    job = await jobs.claim_one(row["id"], executor.owner, 30_000)
    assert job is not None
    return job


async def node_events(jobs: JobService, job_id: str) -> list[tuple[str, str]]:
    return [(e["kind"], e["node"]) for e in await jobs.events(job_id) if e["kind"] != "state"]


async def turns(count: int = 5) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_a_resuming_jobs_finished_event_is_written_at_once(jobs: JobService) -> None:
    executor = executor_for(jobs)
    failing = await claimed(jobs, executor, "fail")
    resuming = await claimed(jobs, executor, "resume")
    executor._emit_for(failing)("finished", "a", {"outputs": {}})  # waits for the delay, alone
    executor._emit_for(resuming)("started", "b", {})  # a start is not urgent either
    executor._emit_for(resuming)("finished", "b", {"outputs": {"text": "x"}})  # urgent: written at once
    await turns()  # loop turns only, no time for the delay to pass: the write is done (SQLite) or under way
    await asyncio.gather(*executor._event_writes)
    assert await node_events(jobs, resuming.id) == [("started", "b"), ("finished", "b")]
    assert await node_events(jobs, failing.id) == [("finished", "a")]  # it went in the same write
    assert orjson.loads((await jobs.events(resuming.id))[-1]["data"]) == {"outputs": {"text": "x"}}


async def test_other_events_are_written_after_the_delay(jobs: JobService) -> None:
    executor = executor_for(jobs)
    job = await claimed(jobs, executor, "fail")
    emit = executor._emit_for(job)
    emit("started", "a", {})
    emit("finished", "a", {"outputs": {}})
    await asyncio.sleep(EVENT_FLUSH_DELAY_S * 3)
    await asyncio.gather(*executor._event_writes)
    assert await node_events(jobs, job.id) == [("started", "a"), ("finished", "a")]
