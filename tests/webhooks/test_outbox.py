"""The outbox: deliveries are written with a job's end (never by a refused one) and survive a crash."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook
from tests.processes import ServerProcess, free_port
from tests.receiver import Receiver
from tests.webhooks.test_dispatcher import wait_until

from conveyor.jobs.service import JobService
from conveyor.jobs.states import JobState
from conveyor.settings import Settings
from conveyor.store.blobs import LocalBlobStore
from conveyor.store.db import Database, open_database
from conveyor.store.files import FileService
from conveyor.store.recipes import create_recipe

OWNER = "testhost:1:abc"
HOOKS = [("https://example.com/a", "POST", "{}", "native"), ("https://example.com/b", "GET", "{}", "native")]


@pytest.fixture
async def jobs(database_url: str, tmp_path: Path) -> AsyncIterator[JobService]:
    db = open_database(database_url)
    await db.connect()
    await create_recipe(db, name="r", body={"name": "r", "nodes": {}}, recipe_id="r1")
    files = FileService(db, LocalBlobStore(tmp_path / "files"), None, Settings(data_dir=tmp_path).limits)
    try:
        yield JobService(db, files, max_pending=5, inline_max=1024)
    finally:
        await db.close()


async def outbox_rows(db: Database, job_id: str) -> list[Any]:
    return await db.fetch_all(
        "SELECT id, position, event, state FROM webhook_deliveries WHERE job_id = $1 ORDER BY position",
        job_id,
    )


async def test_finish_writes_one_delivery_per_webhook_and_wakes_the_dispatcher(jobs: JobService) -> None:
    woken: list[bool] = []
    jobs.on_deliveries = lambda: woken.append(True)
    job, _ = await jobs.submit(recipe_id="r1", revision=1, inputs={}, timeout_s=60, webhooks=HOOKS)
    (claimed,) = await jobs.claim(OWNER, 1, 30_000)
    assert claimed.webhook_count == 2
    # Someone who lost the lease finishes: refused, and it writes no delivery.
    assert not await jobs.finish(
        job["id"], "thief:9:x", JobState.SUCCEEDED, outputs={}, error=None, usage=None, webhook_count=2
    )
    assert await outbox_rows(jobs.db, job["id"]) == [] and woken == []
    assert await jobs.finish(
        job["id"], OWNER, JobState.FAILED, outputs=None, error={"code": "x"}, usage=None, webhook_count=2
    )
    rows = await outbox_rows(jobs.db, job["id"])
    assert [(r["position"], r["event"], r["state"]) for r in rows] == [
        (0, "job.failed", "pending"),
        (1, "job.failed", "pending"),
    ]
    assert all(r["id"].startswith("msg_") and len(r["id"]) == 36 for r in rows) and rows[0]["id"] != rows[1]["id"]
    assert woken == [True]


async def test_cancel_and_recovery_write_deliveries(jobs: JobService) -> None:
    cancelled, _ = await jobs.submit(recipe_id="r1", revision=1, inputs={}, timeout_s=60, webhooks=HOOKS[:1])
    await jobs.cancel(cancelled["id"])
    assert [r["event"] for r in await outbox_rows(jobs.db, cancelled["id"])] == ["job.cancelled"]
    lapsed, _ = await jobs.submit(recipe_id="r1", revision=1, inputs={}, timeout_s=60, webhooks=HOOKS[:1])
    await jobs.claim(OWNER, 1, 1)
    await asyncio.sleep(0.01)
    counts = await jobs.recover(local_owners="nobody:%", is_dead=lambda owner: True)
    assert counts["failed"] == 1
    assert [r["event"] for r in await outbox_rows(jobs.db, lapsed["id"])] == ["job.failed"]


async def test_jobs_without_webhooks_finish_with_no_outbox_write(jobs: JobService) -> None:
    job, _ = await jobs.submit(recipe_id="r1", revision=1, inputs={}, timeout_s=60)
    (claimed,) = await jobs.claim(OWNER, 1, 30_000)
    assert claimed.webhook_count == 0
    assert await jobs.finish(job["id"], OWNER, JobState.SUCCEEDED, outputs={}, error=None, usage=None)
    assert await outbox_rows(jobs.db, job["id"]) == []


async def test_kill_9_after_the_job_finished_the_webhook_is_still_delivered(tmp_path: Path) -> None:
    port = free_port()  # nothing listens yet: the first attempts are refused
    env = {"CONVEYOR_NET__ALLOW_CIDRS": "127.0.0.0/8", "CONVEYOR_WEBHOOKS__RETRY_DELAYS": "0,1,1,1,1,1,1,1,1,1"}
    server = ServerProcess(tmp_path / "data", env=env)
    await asyncio.to_thread(server.start)
    receiver = Receiver()
    try:
        token = server.token()
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
            secret = (await client.get("/api/v1/auth/webhook-secret")).json()["webhook_secret"]
            body = {
                "recipe": "greeting",
                "inputs": {"text": "crash"},
                "webhooks": [{"url": f"http://127.0.0.1:{port}/h"}],
            }
            job_id = (await client.post("/api/v1/jobs", json=body)).json()["id"]

            async def failed_once() -> bool:
                items = (await client.get(f"/api/v1/jobs/{job_id}/deliveries")).json()["items"]
                return bool(items) and items[0]["attempt_count"] >= 1 and items[0]["state"] == "pending"

            await wait_until(failed_once)
        server.kill9()
        await receiver.start(port)
        await asyncio.to_thread(server.start)
        await wait_until(lambda: _seen(receiver), timeout_s=30)
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
            (item,) = (await client.get(f"/api/v1/jobs/{job_id}/deliveries")).json()["items"]

            async def delivered() -> bool:
                items = (await client.get(f"/api/v1/jobs/{job_id}/deliveries")).json()["items"]
                return bool(items[0]["state"] == "succeeded")

            await wait_until(delivered)
    finally:
        await asyncio.to_thread(server.stop)
        if receiver.port:
            await receiver.close()
    (got,) = receiver.seen
    assert got.headers["webhook-id"] == item["id"]
    assert Webhook(secret).verify(got.body, got.headers)["data"]["outputs"] == {"text": "Hello, crash!"}


async def _seen(receiver: Receiver) -> bool:
    return bool(receiver.seen)


async def test_deliveries_leased_by_a_dead_process_are_freed_on_start(jobs: JobService) -> None:
    from conveyor.net import GuardedClient
    from conveyor.settings import WebhooksSettings
    from conveyor.webhooks.dialects import default_dialects
    from conveyor.webhooks.dispatcher import Dispatcher

    job, _ = await jobs.submit(recipe_id="r1", revision=1, inputs={}, timeout_s=60, webhooks=HOOKS[:1])
    await jobs.cancel(job["id"])
    async with GuardedClient() as http:
        dispatcher = Dispatcher(jobs.db, jobs, http, default_dialects(), WebhooksSettings())
        host = dispatcher.owner.split(":")[0]
        dead = f"{host}:999999999:dead"  # no such pid
        await jobs.db.execute("UPDATE webhook_deliveries SET lease_owner = $1, lease_expires_at = $2", dead, 2**50)
        assert await dispatcher.recover() == 1
    (row,) = await jobs.db.fetch_all("SELECT lease_owner, state FROM webhook_deliveries")
    assert row["lease_owner"] is None and row["state"] == "pending"
