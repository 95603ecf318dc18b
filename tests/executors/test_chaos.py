"""Chaos: 2 API processes, 2 Celery workers, PostgreSQL and Valkey; kill and restart things mid-run; lose nothing.

500 jobs of three recipes with different sleeps (seeded random choice), each with one webhook to a real
receiver, submitted through both API processes. Meanwhile: one worker is killed with SIGKILL and started
again, Valkey is restarted (empty: its queues are lost), and one API process is killed with SIGKILL (and
started again at the end, to read results through it). Then every accepted job must be terminal, no node may
have finished twice in one job, every job's result must read the same through both API processes, and every
job's webhook must be delivered once per delivery row, with no request the delivery log does not account for
(beyond the attempts a killed process made without living to log them).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from tests.conftest import _psycopg_url
from tests.executors.test_local import slow_recipe
from tests.processes import ServerProcess, WorkerProcess
from tests.receiver import Receiver
from tests.valkey import ValkeyProcess

pytestmark = pytest.mark.timeout(420)

JOBS = 500
SUBMITTERS = 8
RECIPES = {"chaos-fast": ("fail", 0.05), "chaos-mid": ("resume", 0.3), "chaos-slow": ("resume", 1.0)}
WEBHOOK_CONCURRENCY = 16  # per server: the most attempts a killed server can have had in flight


def _env(pg_url: str, valkey: ValkeyProcess, data_dir: Path) -> dict[str, str]:
    return {
        "CONVEYOR_DATA_DIR": str(data_dir),
        "CONVEYOR_DATABASE__URL": pg_url,
        "CONVEYOR_AUTH__JWT_SECRET": secrets.token_hex(32),  # shared: tokens work on both servers
        "CONVEYOR_EXECUTOR__KIND": "celery",
        "CONVEYOR_EXECUTOR__LEASE_S": "5",
        "CONVEYOR_EXECUTOR__RENEW_INTERVAL_S": "0.5",
        "CONVEYOR_CELERY__BROKER_URL": valkey.url,
        "CONVEYOR_CELERY__SWEEP_INTERVAL_S": "0.5",
        "CONVEYOR_CELERY__REDISPATCH_AFTER_S": "2",
        "CONVEYOR_CELERY__CONCURRENCY": "8",
        "CONVEYOR_NET__ALLOW_CIDRS": "127.0.0.0/8",
        "CONVEYOR_WEBHOOKS__RETRY_DELAYS": "0,0.5,1,1,1,1,1,1,1,1",
        "CONVEYOR_WEBHOOKS__ATTEMPT_TIMEOUT_S": "5",
        "CONVEYOR_LIMITS__MAX_PENDING_JOBS": "100000",
    }


def _query(pg_url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(_psycopg_url(pg_url)) as conn:
        return list(conn.execute(sql).fetchall())


async def test_nothing_is_lost_when_workers_the_broker_and_a_server_die(tmp_path: Path, pg_url: str) -> None:
    receiver = Receiver()
    await receiver.start()
    valkey = ValkeyProcess(tmp_path / "valkey").start()
    env = _env(pg_url, valkey, tmp_path / "data")
    api = [ServerProcess(tmp_path / "data", env=env) for _ in range(2)]
    workers = [WorkerProcess(tmp_path / "logs", env, concurrency=8) for _ in range(2)]
    try:
        await asyncio.to_thread(api[0].start, 60.0)
        await asyncio.gather(*(asyncio.to_thread(p.start) for p in (api[1], *workers)))
        token = await asyncio.to_thread(api[0].token)
        headers = {"Authorization": f"Bearer {token}"}
        clients = [httpx.AsyncClient(base_url=p.url, headers=headers, timeout=30.0) for p in api]
        try:
            for name, (on_interrupt, seconds) in RECIPES.items():
                created = await clients[0].post(
                    "/api/v1/recipes", json={"id": name, **slow_recipe(on_interrupt, seconds)}
                )
                assert created.status_code == 201, created.text
            accepted = await _submit_with_chaos(clients, api, workers, valkey, receiver)
            assert len(accepted) > JOBS * 0.6, len(accepted)
            await _wait_all_ended(pg_url, accepted)
            await asyncio.to_thread(api[1].start, 60.0)  # back, to read through it too
            await _check_results(clients, accepted)
            await _check_deliveries(pg_url, accepted, receiver)
            assert _query(pg_url, "SELECT job_id, node FROM job_events WHERE kind = 'finished' "
                                  "GROUP BY job_id, node HAVING COUNT(*) > 1") == []  # fmt: skip
            # The chaos hit: some runs were interrupted (resumed, or failed as interrupted).
            hit = _query(pg_url, "SELECT COUNT(*) FROM jobs WHERE attempts > 1 OR state = 'failed'")[0][0]
            assert hit > 0
        finally:
            for client in clients:
                await client.aclose()
    finally:
        for process in (*workers, *api):
            await asyncio.to_thread(process.stop)
        valkey.stop()
        await receiver.close()


async def _submit_with_chaos(
    clients: list[httpx.AsyncClient],
    api: list[ServerProcess],
    workers: list[WorkerProcess],
    valkey: ValkeyProcess,
    receiver: Receiver,
) -> list[str]:
    """Submits JOBS jobs over both servers while killing things; the ids the servers accepted."""
    rng = random.Random(20261123)
    plan = [rng.choice(list(RECIPES)) for _ in range(JOBS)]
    accepted: list[str] = []
    next_index = 0
    api_down = False

    async def submitter() -> None:
        nonlocal next_index
        while next_index < JOBS:
            index = next_index
            next_index += 1
            client = clients[0] if api_down else clients[index % 2]
            body = {
                "recipe": plan[index],
                "inputs": {"text": str(index)},
                "webhooks": [{"url": receiver.url("/hook")}],
            }
            try:
                answer = await client.post("/api/v1/jobs", json=body)
            except httpx.HTTPError:
                continue  # the server died under the call: not accepted, as its client would see
            if answer.status_code == 202:
                accepted.append(answer.json()["id"])

    async def chaos() -> None:
        nonlocal api_down
        await _until(lambda: len(accepted) >= JOBS // 5)
        await asyncio.to_thread(workers[0].kill9)
        await asyncio.to_thread(workers[0].start)
        await _until(lambda: len(accepted) >= JOBS // 2)
        await asyncio.to_thread(valkey.restart)
        await _until(lambda: len(accepted) >= JOBS * 7 // 10)
        api_down = True
        await asyncio.to_thread(api[1].kill9)

    await asyncio.gather(chaos(), *(submitter() for _ in range(SUBMITTERS)))
    return accepted


async def _until(check: Any, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the run did not get that far in time")
        await asyncio.sleep(0.02)


async def _wait_all_ended(pg_url: str, accepted: list[str], timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    open_jobs: list[tuple[Any, ...]] = []
    while time.monotonic() < deadline:
        open_jobs = await asyncio.to_thread(
            _query, pg_url, "SELECT id, state FROM jobs WHERE state IN ('pending', 'running')"
        )
        if not open_jobs:
            break
        await asyncio.sleep(0.5)
    assert open_jobs == [], f"{len(open_jobs)} jobs never ended"
    states = dict(await asyncio.to_thread(_query, pg_url, "SELECT id, state FROM jobs"))
    assert set(accepted) <= set(states)
    assert {states[i] for i in accepted} <= {"succeeded", "failed"}


async def _check_results(clients: list[httpx.AsyncClient], accepted: list[str]) -> None:
    for job_id in accepted:
        first, second = [await client.get(f"/api/v1/jobs/{job_id}/result") for client in clients]
        assert first.status_code == 200, first.text
        assert first.json() == second.json()
        if first.json()["state"] == "succeeded":
            assert first.json()["outputs"]["text"].endswith("-1-2")
        else:  # only a `fail` recipe's job ends failed, and only by an interruption
            assert first.json()["error"]["code"] == "interrupted"


async def _check_deliveries(pg_url: str, accepted: list[str], receiver: Receiver, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    rows: list[tuple[Any, ...]] = []
    while time.monotonic() < deadline:
        rows = await asyncio.to_thread(_query, pg_url, "SELECT id, job_id, state, attempts FROM webhook_deliveries")
        if len(rows) >= len(accepted) and all(state != "pending" for _, _, state, _ in rows):
            break
        await asyncio.sleep(0.5)
    by_job = Counter(job_id for _, job_id, _, _ in rows)
    assert set(by_job) == set(accepted) and set(by_job.values()) == {1}, "one delivery row per job"
    assert {state for _, _, state, _ in rows} == {"succeeded"}
    logged = dict(await asyncio.to_thread(
        _query, pg_url, "SELECT delivery_id, COUNT(*) FROM webhook_attempts GROUP BY delivery_id"
    ))  # fmt: skip
    received = Counter(seen.headers.get("webhook-id") for seen in receiver.seen)
    assert set(received) == {delivery_id for delivery_id, *_ in rows}  # every delivery arrived, with its own id
    unlogged = sum(max(0, count - logged.get(delivery_id, 0)) for delivery_id, count in received.items())
    assert unlogged <= WEBHOOK_CONCURRENCY, f"{unlogged} requests the delivery log does not account for"
