"""Distributed mode for real: PostgreSQL, a Valkey broker, a server sending jobs to `conveyor worker` processes.

The server runs in the test's loop (`LiveServer`, `executor.kind = celery`); workers are subprocesses sharing
its database and data directory; Valkey is a process of the test's own, so it can be restarted empty.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import LiveServer
from tests.executors.test_local import slow_recipe
from tests.processes import WorkerProcess
from tests.valkey import ValkeyProcess

from conveyor.settings import Settings

pytestmark = pytest.mark.timeout(180)

ECHO = {
    "name": "Echo",
    "nodes": {
        "start": {"block": "chat_input", "config": {"fields": {"text": {"type": "text", "required": True}}}},
        "t": {"block": "text_template", "config": {"template": "echo {{ text }}"}, "inputs": {"text": "start.text"}},
        "out": {"block": "recipe_output", "inputs": {"text": "t.text"}},
    },
}


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[ValkeyProcess]:
    broker = ValkeyProcess(tmp_path / "valkey").start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def distributed(tmp_path: Path, pg_url: str, valkey: ValkeyProcess) -> Any:
    """Settings (for the in-process server) and the environment (for workers) of one distributed deployment."""
    data_dir = tmp_path / "data"
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database": {"url": pg_url},
        "executor": {"kind": "celery", "poll_interval_s": 0.2, "renew_interval_s": 0.5, "lease_s": 5.0},
        "net": {"allow_cidrs": ["127.0.0.0/8"]},
        "celery": {"broker_url": valkey.url, "sweep_interval_s": 0.3, "redispatch_after_s": 1.0},
    }
    env = {
        "CONVEYOR_DATA_DIR": str(data_dir),
        "CONVEYOR_DATABASE__URL": pg_url,
        "CONVEYOR_CELERY__BROKER_URL": valkey.url,
        "CONVEYOR_EXECUTOR__RENEW_INTERVAL_S": "0.5",
        "CONVEYOR_EXECUTOR__LEASE_S": "5",
        "CONVEYOR_NET__ALLOW_CIDRS": "127.0.0.0/8",
    }

    class Deployment:
        def settings(self, **overrides: Any) -> Settings:
            return Settings(**(values | overrides))

        def worker(self, **kwargs: Any) -> WorkerProcess:
            return WorkerProcess(tmp_path / "logs", env, **kwargs)

    return Deployment()


@pytest.fixture
async def served(distributed: Any) -> AsyncIterator[tuple[LiveServer, httpx.AsyncClient]]:
    async with LiveServer(distributed.settings(), worker=False) as live, await live.authed_client() as http:
        for recipe_id, body in (("echo", ECHO), ("slow-resume", slow_recipe("resume", 3.0))):
            created = await http.post("/api/v1/recipes", json={"id": recipe_id, **body})
            assert created.status_code == 201, created.text
        yield live, http


async def _submit(http: httpx.AsyncClient, recipe: str, text: str) -> str:
    answer = await http.post("/api/v1/jobs", json={"recipe": recipe, "inputs": {"text": text}})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


async def _ended(http: httpx.AsyncClient, job_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = (await http.get(f"/api/v1/jobs/{job_id}")).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return dict(job)
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end within {timeout_s} s")


async def test_a_worker_runs_what_the_server_sends(served: Any, distributed: Any) -> None:
    live, http = served
    assert live.runtime.executor is None  # the server runs no job itself
    with distributed.worker():
        job_id = await _submit(http, "echo", "hi")
        job = await _ended(http, job_id)
        assert job["state"] == "succeeded", job
        result = (await http.get(f"/api/v1/jobs/{job_id}/result")).json()
        assert result["outputs"] == {"text": "echo hi"}


async def test_jobs_sent_while_no_worker_is_up_run_when_one_starts(served: Any, distributed: Any) -> None:
    _live, http = served
    ids = [await _submit(http, "echo", str(i)) for i in range(5)]
    await asyncio.sleep(0.5)
    states = {(await http.get(f"/api/v1/jobs/{i}")).json()["state"] for i in ids}
    assert states == {"pending"}
    with distributed.worker():
        for job_id in ids:
            assert (await _ended(http, job_id))["state"] == "succeeded"


async def test_a_task_delivered_twice_runs_its_job_once(served: Any, distributed: Any) -> None:
    live, http = served
    with distributed.worker(concurrency=4):
        job_id = await _submit(http, "slow-resume", "x")
        for _ in range(3):  # the same job id sent again while it runs: the extra tasks claim nothing
            assert live.runtime.celery.send(job_id)
        job = await _ended(http, job_id)
        assert job["state"] == "succeeded"
        assert job["attempts"] == 1
        events = (await http.get(f"/api/v1/jobs/{job_id}/events")).text
        assert events.count('"state":"running"') == 1
        assert events.count('"node":"wait"') and events.count('"kind":"finished","node":"wait"') <= 1
        # A job that already ended claims nothing either.
        assert live.runtime.celery.send(job_id)
        await asyncio.sleep(1.0)
        again = (await http.get(f"/api/v1/jobs/{job_id}")).json()
        assert again["attempts"] == 1 and again["finished_at"] == job["finished_at"]


async def test_a_worker_killed_mid_job_is_recovered_and_the_job_resumes(served: Any, distributed: Any) -> None:
    _live, http = served
    first = distributed.worker().start()
    try:
        job_id = await _submit(http, "slow-resume", "k")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the worker is inside the slow node
            detail = (await http.get(f"/api/v1/jobs/{job_id}")).json()
            if detail["nodes"].get("wait", {}).get("state") == "running":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the job never reached its slow node")
        first.kill9()
    finally:
        first.stop()
    # The sweeper finds the dead owner (same host) and puts the job back; a new worker runs it to the end.
    with distributed.worker():
        job = await _ended(http, job_id)
        assert job["state"] == "succeeded", job
        assert job["attempts"] == 2
        result = (await http.get(f"/api/v1/jobs/{job_id}/result")).json()
        assert result["outputs"] == {"text": "k-1-2"}


async def test_a_broker_restart_loses_no_job(served: Any, distributed: Any, valkey: ValkeyProcess) -> None:
    _live, http = served
    ids = [await _submit(http, "echo", str(i)) for i in range(10)]
    valkey.restart()  # the queued tasks are gone with it; the jobs are still pending in the store
    with distributed.worker():
        for job_id in ids:
            assert (await _ended(http, job_id, timeout_s=60))["state"] == "succeeded"


async def test_sigterm_releases_running_jobs_to_another_worker(served: Any, distributed: Any) -> None:
    _live, http = served
    first = distributed.worker(grace_s=0.5).start()
    job_id = await _submit(http, "slow-resume", "t")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (await http.get(f"/api/v1/jobs/{job_id}")).json()["state"] != "running":
        await asyncio.sleep(0.05)
    assert first.stop() == 0, first.output()[-3000:]  # a warm shutdown, bounded by the grace
    assert (await http.get(f"/api/v1/jobs/{job_id}")).json()["state"] == "pending"
    with distributed.worker():
        job = await _ended(http, job_id)
        assert job["state"] == "succeeded"
        assert job["attempts"] == 2


async def test_a_sync_invoke_learns_of_a_worker_ending_its_run(served: Any, distributed: Any) -> None:
    live, http = served
    key = (await http.post("/api/v1/keys", json={"kind": "recipe", "name": "k", "recipe": "echo"})).json()["key"]
    with distributed.worker():
        async with httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {key}"}) as keyed:
            answer = await keyed.post("/v1/workflow/invoke", json={"input": {"text": "sync"}}, timeout=30)
    body = answer.json()
    assert answer.status_code == 200, body
    assert body["status"] == "SUCCEED" and body["output"] == {"text": "echo sync"}


async def test_a_webhook_of_a_job_a_worker_ended_is_delivered(served: Any, distributed: Any, receiver: Any) -> None:
    _live, http = served
    with distributed.worker():
        answer = await http.post(
            "/api/v1/jobs",
            json={"recipe": "echo", "inputs": {"text": "w"}, "webhooks": [{"url": receiver.url("/hook")}]},
        )
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        await _ended(http, job_id)
        deliveries: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            deliveries = (await http.get(f"/api/v1/jobs/{job_id}/deliveries")).json()["items"]
            if deliveries and deliveries[0]["state"] == "succeeded":
                break
            await asyncio.sleep(0.05)
        assert deliveries and deliveries[0]["state"] == "succeeded", deliveries
        assert len(receiver.seen) == 1


def test_the_broker_channel_keeps_one_client_per_pool(fresh_broker: str) -> None:
    """kombu would build a `redis.Redis` per publish and per ack (58 µs each); ours keeps one per connection pool,
    and a new pool (kombu drops its pool after a fork or an error) gets a new client. Messages still go through."""
    from conveyor.executors.celery import _Transport, celery_app

    app = celery_app(Settings(celery={"broker_url": fresh_broker}))
    assert app.conf.broker_transport is _Transport
    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            first = channel._create_client()
            assert channel._create_client() is first and first.connection_pool is channel.pool
            with conn.SimpleQueue("conveyor-test-client") as queue:
                for i in range(3):
                    queue.put({"n": i})
                got = [queue.get(timeout=5) for _ in range(3)]
                for message in got:
                    message.ack()
            assert [m.payload for m in got] == [{"n": 0}, {"n": 1}, {"n": 2}]
            channel._disconnect_pools()
            again = channel._create_client()
            assert again is not first and again.connection_pool is channel.pool
        tls = celery_app(Settings(celery={"broker_url": "rediss://127.0.0.1:1/0"}))
        assert tls.conf.broker_transport is None  # kombu's own set-up for TLS
        tls.close()
    finally:
        app.close()
