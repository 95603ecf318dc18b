"""Webhook routes on a real server: submit checks, the delivery log, redeliver, the secret, and ownership."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook
from tests.api.shapes import assert_error
from tests.conftest import LiveServer
from tests.receiver import Receiver, Reply
from tests.webhooks.test_dispatcher import FAST, settled, submit, wait_until


@pytest.fixture
async def live(server_settings: Any) -> AsyncIterator[LiveServer]:
    async with LiveServer(server_settings(net={"allow_cidrs": ["127.0.0.0/8"]}, webhooks=FAST)) as server:
        yield server


async def test_a_sixth_webhook_and_a_header_override_are_422_and_no_job(live: LiveServer) -> None:
    async with await live.authed_client() as client:
        six = [{"url": "https://example.com/hook"}] * 6
        body = assert_error(
            await client.post("/api/v1/jobs", json={"recipe": "greeting", "inputs": {"text": "a"}, "webhooks": six}),
            422,
        )
        assert "at most 5" in body["error"]["message"]
        hook = {"url": "https://example.com/hook", "headers": {"webhook-signature": "v1,forged"}}
        body = assert_error(
            await client.post("/api/v1/jobs", json={"recipe": "greeting", "inputs": {"text": "a"}, "webhooks": [hook]}),
            422,
        )
        assert "webhook-signature" in body["error"]["message"]
        bad_url = {"recipe": "greeting", "inputs": {"text": "a"}, "webhooks": [{"url": "gopher://x"}]}
        assert_error(await client.post("/api/v1/jobs", json=bad_url), 422)
        assert (await client.get("/api/v1/jobs")).json()["total"] == 0


async def test_delivery_log_and_redeliver_keep_the_webhook_id(live: LiveServer, receiver: Receiver) -> None:
    receiver.routes["/gone"] = Reply(410)
    async with await live.authed_client() as client:
        secret = (await client.get("/api/v1/auth/webhook-secret")).json()["webhook_secret"]
        job_id = await submit(client, [{"url": receiver.url("/gone")}])
        (item,) = await settled(client, job_id)
        assert item["state"] == "failed" and item["url"] == receiver.url("/gone") and item["method"] == "POST"
        (attempt,) = item["attempts"]
        assert attempt["attempt"] == 1 and attempt["status_code"] == 410 and attempt["at"].endswith("Z")
        receiver.routes["/gone"] = Reply(204)
        response = await client.post(f"/api/v1/jobs/{job_id}/deliveries/{item['id']}/redeliver")
        assert response.status_code == 202, response.text
        assert response.json()["id"] == item["id"] and response.json()["state"] == "pending"

        async def redelivered() -> dict[str, Any] | None:
            (again,) = (await client.get(f"/api/v1/jobs/{job_id}/deliveries")).json()["items"]
            return again if again["state"] == "succeeded" else None

        again = await wait_until(redelivered)
        assert [a["status_code"] for a in again["attempts"]] == [410, 204]
        assert_error(await client.post(f"/api/v1/jobs/{job_id}/deliveries/msg_nope/redeliver"), 404, "not_found")
    first, second = [s for s in receiver.seen if s.path == "/gone"]
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == item["id"]
    Webhook(secret).verify(second.body, second.headers)


async def test_another_users_job_deliveries_are_404(live: LiveServer, receiver: Receiver) -> None:
    async with await live.authed_client() as owner:
        job_id = await submit(owner, [{"url": receiver.url("/hook")}])
        (item,) = await settled(owner, job_id)
    async with await live.authed_client(await live.token("mallory")) as other:
        assert_error(await other.get(f"/api/v1/jobs/{job_id}/deliveries"), 404, "not_found")
        assert_error(await other.post(f"/api/v1/jobs/{job_id}/deliveries/{item['id']}/redeliver"), 404, "not_found")
        mine = (await other.get("/api/v1/auth/webhook-secret")).json()["webhook_secret"]
    async with await live.authed_client() as owner:
        assert (await owner.get("/api/v1/auth/webhook-secret")).json()["webhook_secret"] != mine
