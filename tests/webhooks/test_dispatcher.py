"""Webhook delivery end to end: a real server finishes jobs and delivers to a real receiver on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from tests.conftest import LiveServer
from tests.receiver import Receiver, Reply

from conveyor.net import retry_after_s

FAST = {"retry_delays": [0, 0.1, 0.1, 0.1], "poll_interval_s": 0.1}


def hooked_settings(make_settings: Any, **webhooks: Any) -> Any:
    return make_settings(net={"allow_cidrs": ["127.0.0.0/8"]}, webhooks=FAST | webhooks)


async def wait_until(check: Any, timeout_s: float = 15.0) -> Any:
    """Awaits `check()` until it returns something truthy (bounded); returns that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout_s} s")


async def deliveries(client: Any, job_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/v1/jobs/{job_id}/deliveries")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def settled(client: Any, job_id: str) -> list[dict[str, Any]]:
    """The job's deliveries once none is pending any more."""

    async def check() -> list[dict[str, Any]] | None:
        items = await deliveries(client, job_id)
        return items if items and all(item["state"] != "pending" for item in items) else None

    result: list[dict[str, Any]] = await wait_until(check)
    return result


async def submit(client: Any, hooks: list[dict[str, Any]], text: str = "world") -> str:
    body = {"recipe": "greeting", "inputs": {"text": text}, "webhooks": hooks}
    response = await client.post("/api/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def test_500_three_times_then_200_is_four_signed_attempts_with_one_id(
    server_settings: Any, receiver: Receiver
) -> None:
    receiver.scripts["/hook"] = [Reply(500), Reply(500), Reply(500)]
    async with LiveServer(hooked_settings(server_settings)) as live, await live.authed_client() as client:
        secret = (await client.get("/api/v1/auth/webhook-secret")).json()["webhook_secret"]
        assert secret.startswith("whsec_")
        assert (await client.get("/api/v1/auth/webhook-secret")).json()["webhook_secret"] == secret
        job_id = await submit(client, [{"url": receiver.url("/hook"), "headers": {"X-Custom": "yes"}}])
        (item,) = await settled(client, job_id)
    assert item["state"] == "succeeded" and item["attempt_count"] == 4 and item["event"] == "job.succeeded"
    assert [a["status_code"] for a in item["attempts"]] == [500, 500, 500, 200]
    assert all(a["duration_ms"] >= 0 for a in item["attempts"]) and item["next_attempt_at"] is None
    seen = [s for s in receiver.seen if s.path == "/hook"]
    assert len(seen) == 4
    assert {s.headers["webhook-id"] for s in seen} == {item["id"]} and item["id"].startswith("msg_")
    for request in seen:
        payload = Webhook(secret).verify(request.body, request.headers)
        assert request.method == "POST" and request.headers["content-type"] == "application/json"
        assert request.headers["x-custom"] == "yes"
        assert payload["type"] == "job.succeeded"
        assert payload["data"]["id"] == job_id and payload["data"]["state"] == "succeeded"
        assert payload["data"]["outputs"] == {"text": "Hello, world!"}
        # Each signature is for its own timestamp: under another timestamp it does not verify.
        forged = request.headers | {"webhook-timestamp": str(int(request.headers["webhook-timestamp"]) - 1)}
        with pytest.raises(WebhookVerificationError, match="signature"):
            Webhook(secret).verify(request.body, forged)


async def test_410_stops_retries(server_settings: Any, receiver: Receiver) -> None:
    receiver.routes["/gone"] = Reply(410)
    async with LiveServer(hooked_settings(server_settings)) as live, await live.authed_client() as client:
        job_id = await submit(client, [{"url": receiver.url("/gone")}])
        (item,) = await settled(client, job_id)
        await asyncio.sleep(0.4)  # more than the retry delays: nothing more is sent
    assert item["state"] == "failed" and item["attempt_count"] == 1 and item["last_status"] == 410
    assert len([s for s in receiver.seen if s.path == "/gone"]) == 1


async def test_after_the_last_attempt_it_fails_and_3xx_is_not_followed(
    server_settings: Any, receiver: Receiver
) -> None:
    receiver.routes["/moved"] = Reply(302, {"Location": receiver.url("/elsewhere")})
    async with LiveServer(hooked_settings(server_settings)) as live, await live.authed_client() as client:
        job_id = await submit(client, [{"url": receiver.url("/moved")}])
        (item,) = await settled(client, job_id)
    assert item["state"] == "failed" and item["attempt_count"] == len(FAST["retry_delays"])
    assert [a["status_code"] for a in item["attempts"]] == [302] * 4
    assert "redirect" in item["last_error"]
    assert not [s for s in receiver.seen if s.path == "/elsewhere"]


async def test_get_webhooks_carry_query_parameters_and_no_body(server_settings: Any, receiver: Receiver) -> None:
    async with LiveServer(hooked_settings(server_settings)) as live, await live.authed_client() as client:
        secret = (await client.get("/api/v1/auth/webhook-secret")).json()["webhook_secret"]
        job_id = await submit(
            client, [{"url": receiver.url("/get?a=1"), "method": "GET"}, {"url": receiver.url("/post")}]
        )
        items = await settled(client, job_id)
    assert [item["state"] for item in items] == ["succeeded", "succeeded"]
    assert len({item["id"] for item in items}) == 2
    (got,) = [s for s in receiver.seen if s.path.startswith("/get")]
    assert got.method == "GET" and got.body == b""
    assert got.path == f"/get?a=1&jobId={job_id}&status=succeeded"
    Webhook(secret).verify(b"", got.headers, json_parse=False)


async def test_retry_after_is_honoured(server_settings: Any, receiver: Receiver) -> None:
    receiver.scripts["/busy"] = [Reply(503, {"Retry-After": "1"})]
    async with LiveServer(hooked_settings(server_settings)) as live, await live.authed_client() as client:
        job_id = await submit(client, [{"url": receiver.url("/busy")}])
        (item,) = await settled(client, job_id)
    assert [a["status_code"] for a in item["attempts"]] == [503, 200]
    first, second = item["attempts"]
    from datetime import datetime

    gap = datetime.fromisoformat(second["at"]) - datetime.fromisoformat(first["at"])
    assert gap.total_seconds() >= 0.9  # not the 0.1 s of the schedule


async def test_a_refused_address_fails_at_once(server_settings: Any, receiver: Receiver) -> None:
    settings = server_settings(webhooks=FAST)  # loopback not allowed
    async with LiveServer(settings) as live, await live.authed_client() as client:
        job_id = await submit(client, [{"url": receiver.url("/hook")}])
        (item,) = await settled(client, job_id)
    assert item["state"] == "failed" and item["attempt_count"] == 1 and "loopback" in item["last_error"]
    assert receiver.seen == []


async def test_cancelled_pending_job_gets_its_webhook(make_settings: Any, receiver: Receiver) -> None:
    settings = make_settings(
        net={"allow_cidrs": ["127.0.0.0/8"]}, webhooks=FAST, executor={"concurrency": 1, "poll_interval_s": 5.0}
    )
    async with LiveServer(settings) as live, await live.authed_client() as client:
        # Keep the only runner busy so the next job stays pending.
        blocker = {"recipe": "two-branches", "inputs": {"text": "x"}}
        assert (await client.post("/api/v1/jobs", json=blocker)).status_code == 202
        job_id = await submit(client, [{"url": receiver.url("/cancelled")}])
        response = await client.post(f"/api/v1/jobs/{job_id}/cancel")
        if response.json()["state"] != "cancelled":
            pytest.skip("the job started before it could be cancelled")
        (item,) = await settled(client, job_id)
    assert item["event"] == "job.cancelled" and item["state"] == "succeeded"
    (got,) = [s for s in receiver.seen if s.path == "/cancelled"]
    assert orjson.loads(got.body)["data"]["state"] == "cancelled"


async def test_jobs_without_webhooks_write_no_deliveries(server_settings: Any) -> None:
    async with LiveServer(hooked_settings(server_settings)) as live, await live.authed_client() as client:
        job_id = await submit(client, [])
        for _ in range(200):
            if (await client.get(f"/api/v1/jobs/{job_id}")).json()["state"] == "succeeded":
                break
            await asyncio.sleep(0.02)
        assert await deliveries(client, job_id) == []
        assert await live.runtime.db.fetch_val("SELECT COUNT(*) FROM webhook_deliveries") == 0


@pytest.mark.parametrize(
    ("value", "expected"), [("3", 3.0), ("", None), ("soon", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)]
)
def test_retry_after_parsing(value: str, expected: float | None) -> None:
    assert retry_after_s({"retry-after": value} if value else {}) == expected
