"""Omni's webhooks on a real server and receiver: the exact terminal body, `webhookMetadata` byte for byte, a
signature checked by an HMAC written here (not our signer), a stable `event_id` across retries, DELIVERING while
the terminal webhook is unsent, unsigned without a secret, and progress events sent once, best effort."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from tests.api.omni_support import answer, assert_omni_error, conforms, llm_settings, make_model, wait_state
from tests.conftest import LiveServer
from tests.llm.scripted_openai import ScriptedOpenAI
from tests.receiver import Receiver, Reply
from tests.webhooks.test_dispatcher import wait_until

JOBS = "/api/v1/ai/jobs"
JOB = "/api/v1/ai/jobs/{jobId}"
SECRET = "omni-test-secret-\u00e9"
# Odd spacing, key order, number forms and unicode escapes: a re-serialized dict would change every one of them.
METADATA = '{ "z": 1.50,"a" : [1e3, -0.0, "\\u00e9"],\n  "nested": {"b": null, "a": true} }'
TERMINAL_KEYS = ["event_id", "jobId", "status", "result_summary", "metadata", "completed_at"]


@pytest.fixture
async def scripted() -> Any:
    async with ScriptedOpenAI() as server:
        yield server


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """A receiver's check of Omni's scheme, written from its description alone."""
    timestamp = headers["x-omni-signature-timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["x-omni-signature"]) and abs(time.time() - int(timestamp)) < 300


def hook_settings(make_settings: Any, scripted: ScriptedOpenAI, **webhooks: Any) -> Any:
    return make_settings(
        seed_demo=False,
        net={"allow_cidrs": ["127.0.0.0/8"]},
        llm=llm_settings(scripted),
        webhooks={"retry_delays": [0, 0.1, 0.1], "poll_interval_s": 0.1} | webhooks,
    )


def raw_submit(model_id: str, url: str, *, secret: str | None = SECRET, progress: bool = False) -> bytes:
    fields = [
        f'"modelId": "{model_id}"',
        '"prompt": "Revenue by region"',
        '"topicName": "sales"',
        f'"webhookUrl": "{url}"',
        f'"webhookMetadata": {METADATA}',
        f'"progressWebhookEnabled": {"true" if progress else "false"}',
    ]
    if secret is not None:
        fields.append(f'"webhookSigningSecret": {orjson.dumps(secret).decode()}')
    return ("{" + ", ".join(fields) + "}").encode()


async def test_terminal_webhook_is_signed_exact_and_stable_across_retries(
    make_settings: Any, tmp_path: Path, scripted: ScriptedOpenAI, receiver: Receiver
) -> None:
    receiver.scripts["/hook"] = [Reply(status=500)]  # the first attempt fails: a retry follows
    async with (
        LiveServer(hook_settings(make_settings, scripted, retry_delays=[0, 1.5])) as live,
        await live.authed_client() as client,
    ):
        model_id = await make_model(live.runtime, tmp_path)
        answer(scripted, "West leads revenue.")
        response = await client.post(
            JOBS, content=raw_submit(model_id, receiver.url("/hook")), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 201, response.text
        assert SECRET not in response.text
        job_id = response.json()["jobId"]
        delivering = await wait_state(client, job_id, {"DELIVERING", "COMPLETE", "FAILED"})
        assert delivering["state"] == "DELIVERING"  # the first attempt failed; the retry is 1.5 s away
        conforms(delivering, "AiJobStatusResponse")
        assert "resultSummary" not in delivering and "completedAt" not in delivering
        assert_omni_error(await client.post(f"{JOBS}/{job_id}/cancel"), 409, JOB + "/cancel", "post")
        await wait_until(lambda: _count(receiver, "/hook", 2), timeout_s=15)
        assert (await wait_state(client, job_id, {"COMPLETE"}))["state"] == "COMPLETE"
        status = (await client.get(f"{JOBS}/{job_id}")).json()
        stored = await live.runtime.db.fetch_val("SELECT webhook_secret FROM ai_jobs WHERE id = $1", job_id)
        assert SECRET not in str(stored) and SECRET not in str(status)
    first, second = [seen for seen in receiver.seen if seen.path == "/hook"]
    for seen in (first, second):
        assert verify(SECRET, seen.headers, seen.body)
        assert not verify(SECRET + "x", seen.headers, seen.body)
        assert METADATA.encode() in seen.body  # byte for byte
        payload = orjson.loads(seen.body)
        assert list(payload) == TERMINAL_KEYS
        assert payload["jobId"] == job_id and payload["status"] == "COMPLETE"
        assert payload["result_summary"] == "West leads revenue." and payload["completed_at"].endswith("Z")
        assert payload["metadata"] == orjson.loads(METADATA)
    assert orjson.loads(first.body)["event_id"] == orjson.loads(second.body)["event_id"]


async def _count(receiver: Receiver, path: str, n: int) -> bool:
    return len([seen for seen in receiver.seen if seen.path == path]) >= n


async def test_without_a_secret_webhooks_go_unsigned_and_progress_is_sent_once(
    make_settings: Any, tmp_path: Path, scripted: ScriptedOpenAI, receiver: Receiver
) -> None:
    receiver.routes["/hook"] = Reply(status=503)  # every attempt fails: terminal retries, progress never retried
    async with (
        LiveServer(hook_settings(make_settings, scripted)) as live,
        await live.authed_client() as client,
    ):
        model_id = await make_model(live.runtime, tmp_path)
        answer(scripted, "West leads revenue.")
        body = raw_submit(model_id, receiver.url("/hook"), secret=None, progress=True)
        response = await client.post(JOBS, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 201, response.text
        job_id = response.json()["jobId"]

        async def settled() -> list[Any]:
            rows = await live.runtime.db.fetch_all(
                "SELECT event, state, attempts FROM webhook_deliveries WHERE job_id = $1", job_id
            )
            done = rows and all(row["state"] != "pending" for row in rows)
            terminal = [row for row in rows if row["event"].startswith("job.")]
            return rows if done and terminal else []

        rows = await wait_until(settled, timeout_s=20)
        assert (await wait_state(client, job_id, {"COMPLETE"}))["state"] == "COMPLETE"
    progress = [row for row in rows if row["event"].startswith("progress.")]
    (terminal,) = [row for row in rows if row["event"].startswith("job.")]
    assert progress and all(row["attempts"] == 1 and row["state"] == "failed" for row in progress)
    assert terminal["attempts"] == 3 and terminal["state"] == "failed"
    hooks = [seen for seen in receiver.seen if seen.path == "/hook"]
    assert all("x-omni-signature" not in seen.headers for seen in hooks)
    assert all("x-omni-signature-timestamp" in seen.headers for seen in hooks)
    updates = [orjson.loads(seen.body) for seen in hooks if b'"EXECUTING"' in seen.body]
    assert len(updates) == len(progress)
    # Sent side by side, they may arrive in any order: `iteration` orders them.
    assert sorted(update["progress"]["iteration"] for update in updates) == list(range(1, len(updates) + 1))
    assert all(update["jobId"] == job_id and update["progress"]["message"] for update in updates)
    assert len({update["event_id"] for update in updates}) == len(updates)


async def test_the_omni_signer_matches_the_documented_scheme() -> None:
    from conveyor.webhooks.signing import OmniSigner

    body = b'{"a":1}'
    headers = {k.lower(): v for k, v in OmniSigner([SECRET]).headers("msg_x", int(time.time()), body).items()}
    assert verify(SECRET, headers, body)
    assert set(OmniSigner([]).headers("msg_x", 1, body)) == {"X-Omni-Signature-Timestamp"}
    assert httpx  # the receiver side of these tests uses no client of ours
