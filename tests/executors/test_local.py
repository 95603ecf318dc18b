"""Crash recovery with a real server process: kill -9 mid-job, restart, and see what the store says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.processes import ServerProcess, wait_for

pytestmark = pytest.mark.timeout(120)


def slow_recipe(on_interrupt: str, seconds: float) -> dict[str, Any]:
    return {
        "name": f"Slow {on_interrupt}",
        "on_interrupt": on_interrupt,
        "nodes": {
            "start": {"block": "chat_input", "config": {"fields": {"text": {"type": "text", "required": True}}}},
            "first": {
                "block": "text_template",
                "config": {"template": "{{ text }}-1"},
                "inputs": {"text": "start.text"},
            },
            "wait": {"block": "delay", "config": {"seconds": seconds}, "inputs": {"value": "first.text"}},
            "last": {"block": "text_template", "config": {"template": "{{ v }}-2"}, "inputs": {"v": "wait.value"}},
            "out": {"block": "recipe_output", "inputs": {"text": "last.text"}},
        },
    }


def node_state(client: httpx.Client, job_id: str, node: str) -> str | None:
    detail = client.get(f"/api/v1/jobs/{job_id}").json()
    state: str | None = detail["nodes"].get(node, {}).get("state")
    return state


def events_of(client: httpx.Client, job_id: str, kind: str, node: str) -> int:
    text = client.get(f"/api/v1/jobs/{job_id}/events").text
    return text.count(f'"kind":"{kind}","node":"{node}"')


def crash_mid_job(tmp_path: Path, on_interrupt: str, seconds: float) -> tuple[ServerProcess, str, str]:
    """Starts a server, finishes one job, starts a slow one, and kills the server -9 during its delay."""
    server = ServerProcess(tmp_path / "data").start()
    with server.client() as client:
        done = client.post("/api/v1/jobs", json={"recipe": "greeting", "inputs": {"text": "kept"}}).json()["id"]
        wait_for(lambda: client.get(f"/api/v1/jobs/{done}/result").status_code == 200)
        recipe = client.post("/api/v1/recipes", json=slow_recipe(on_interrupt, seconds)).json()["id"]
        job = client.post("/api/v1/jobs", json={"recipe": recipe, "inputs": {"text": "go"}}).json()["id"]
        wait_for(
            lambda: node_state(client, job, "first") == "succeeded" and node_state(client, job, "wait") == "running"
        )
    server.kill9()
    return server, done, job


def test_kill_9_mid_job_fails_it_as_interrupted_and_keeps_finished_results(tmp_path: Path) -> None:
    server, done, job = crash_mid_job(tmp_path, "fail", 60)
    with server, server.client() as client:
        detail = wait_for(lambda: (d := client.get(f"/api/v1/jobs/{job}").json())["state"] != "running" and d)
        assert detail["state"] == "failed" and detail["error"]["code"] == "interrupted"
        result = client.get(f"/api/v1/jobs/{done}/result").json()
        assert result["outputs"] == {"text": "Hello, kept!"}


def test_kill_9_with_resume_finishes_without_rerunning_finished_nodes(tmp_path: Path) -> None:
    server, _, job = crash_mid_job(tmp_path, "resume", 1.5)
    with server, server.client() as client:
        result = wait_for(lambda: (r := client.get(f"/api/v1/jobs/{job}/result")).status_code == 200 and r.json())
        assert result["state"] == "succeeded" and result["outputs"] == {"text": "go-1-2"}
        assert events_of(client, job, "started", "first") == 1
        assert events_of(client, job, "finished", "first") == 1
        assert events_of(client, job, "started", "wait") == 2  # it was cut off, so it ran again
        assert client.get(f"/api/v1/jobs/{job}").json()["attempts"] == 2


def test_sigterm_releases_running_jobs_to_the_queue(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={"CONVEYOR_EXECUTOR__CONCURRENCY": "2"}).start()
    with server.client() as client:
        recipe = client.post("/api/v1/recipes", json=slow_recipe("fail", 30)).json()["id"]
        job = client.post("/api/v1/jobs", json={"recipe": recipe, "inputs": {"text": "t"}}).json()["id"]
        wait_for(lambda: node_state(client, job, "wait") == "running")
    server.stop()
    with server, server.client() as client:
        detail = client.get(f"/api/v1/jobs/{job}").json()
        assert detail["state"] in ("pending", "running")  # given back, then claimed again: not lost
        client.post(f"/api/v1/jobs/{job}/cancel")


async def test_jobs_claimed_during_a_renewal_are_not_taken_for_lost(make_settings: Any) -> None:
    """Regression: a job claimed while a renewal awaited its write was missing from the renewal's read of the
    store, was cancelled as 'taken by another runner', and failed as interrupted once its lease lapsed."""
    import asyncio

    from tests.api.test_jobs import wait_result
    from tests.conftest import LiveServer

    settings = make_settings(executor={"renew_interval_s": 0.02, "lease_s": 2.0, "concurrency": 8})
    async with LiveServer(settings) as live, await live.authed_client() as client:
        body = {"recipe": "greeting", "inputs": {"text": "x"}}
        ids = []
        for _ in range(10):
            batch = await asyncio.gather(*(client.post("/api/v1/jobs", json=body) for _ in range(30)))
            ids += [response.json()["id"] for response in batch]
        states = [(await wait_result(client, job_id, timeout_s=30))["state"] for job_id in ids]
        assert states.count("succeeded") == len(ids), {s: states.count(s) for s in set(states)}
