"""GPTBots' workflow API on a real server: sync and async invoke, query/result, keys, webhooks and error shape."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook
from tests.conftest import LiveServer
from tests.receiver import Receiver
from tests.webhooks.test_dispatcher import FAST, wait_until

INVOKE = "/v1/workflow/invoke"
QUERY = "/v1/workflow/query/result"
TEXT_FIELD = {"text": {"type": "text", "required": True}}
ECHO = {
    "name": "Echo",
    "nodes": {
        "start": {"block": "chat_input", "config": {"fields": TEXT_FIELD}},
        "out": {"block": "recipe_output", "inputs": {"text": "start.text"}},
    },
}
TYPED = {
    "name": "Typed",
    "nodes": {
        "start": {
            "block": "chat_input",
            "config": {
                "fields": {
                    "topic": {"type": "text", "required": True},
                    "count": {"type": "number", "required": True},
                    "loud": {"type": "boolean", "required": False},
                }
            },
        },
        "out": {"block": "recipe_output", "inputs": {"text": "start.topic"}},
    },
}
PARSE = {
    "name": "Parse",
    "nodes": {
        "start": {"block": "chat_input", "config": {"fields": TEXT_FIELD}},
        "parse": {"block": "text_to_json", "inputs": {"text": "start.text"}},
        "out": {"block": "recipe_output", "inputs": {"objects": "parse.json"}},
    },
}


def slow(seconds: float) -> dict[str, Any]:
    return {
        "name": "Slow",
        "nodes": {
            "start": {"block": "chat_input", "config": {"fields": TEXT_FIELD}},
            "wait": {"block": "delay", "config": {"seconds": seconds}, "inputs": {"value": "start.text"}},
            "out": {"block": "recipe_output", "inputs": {"text": "wait.value"}},
        },
    }


RESULT_FIELDS = {
    "workflowId",
    "workflowName",
    "workflowVersion",
    "workflowRunId",
    "input",
    "output",
    "workflowExecutionTime",
    "status",
    "totalCost",
    "totalTokens",
    "startTime",
    "endTime",
}


def assert_gptbots_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """GPTBots' error shape on its paths: exactly `{"code", "message"}`, with the right HTTP status."""
    assert response.status_code == status, (response.status_code, response.text)
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message"}, body
    assert isinstance(body["code"], str) and body["code"]
    assert isinstance(body["message"], str) and body["message"]
    if code is not None:
        assert body["code"] == code, body
    return body


async def _recipe(client: Any, recipe_id: str, body: dict[str, Any] = ECHO) -> str:
    response = await client.post("/api/v1/recipes", json={**body, "id": recipe_id})
    assert response.status_code == 201, response.text
    return recipe_id


async def _key(client: Any, kind: str, recipe: str | None = None) -> str:
    body: dict[str, Any] = {"name": "gptbots", "kind": kind}
    if recipe is not None:
        body["recipe"] = recipe
    response = await client.post("/api/v1/keys", json=body)
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


def _keyed(server: LiveServer, key: str, *, bare: bool = False) -> httpx.AsyncClient:
    header = key if bare else f"Bearer {key}"
    return httpx.AsyncClient(base_url=server.url, headers={"Authorization": header}, timeout=30.0)


async def _query(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    response = await client.post(QUERY, json={"workflowRunId": run_id})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def _until_ended(client: httpx.AsyncClient, run_id: str, timeout_s: float = 20.0) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        result = await _query(client, run_id)
        return result if result["status"] in ("SUCCEED", "FAILED") else None

    result: dict[str, Any] = await wait_until(ended, timeout_s)
    return result


async def test_a_sync_invoke_answers_the_finished_run(server: LiveServer, client: Any) -> None:
    await _recipe(client, "echo")
    key = await _key(client, "recipe", "echo")
    before = int(time.time() * 1000)
    async with _keyed(server, key) as keyed:
        response = await keyed.post(INVOKE, json={"userId": None, "input": {"text": "hi"}})
    assert response.status_code == 200, response.text
    result = response.json()
    assert set(result) == RESULT_FIELDS, result
    assert result["status"] == "SUCCEED" and result["output"] == {"text": "hi"} and result["input"] == {"text": "hi"}
    assert result["workflowId"] == "echo" and result["workflowName"] == "Echo" and result["workflowVersion"] == "1"
    assert result["totalTokens"] == 0 and result["totalCost"] == 0
    assert isinstance(result["totalTokens"], int) and isinstance(result["totalCost"], int | float)
    assert before <= result["startTime"] <= result["endTime"] <= int(time.time() * 1000)
    assert result["workflowExecutionTime"] == result["endTime"] - result["startTime"]
    job = (await client.get(f"/api/v1/jobs/{result['workflowRunId']}")).json()
    assert job["state"] == "succeeded" and job["recipe"] == "echo"


async def test_the_bare_authorization_header_works(server: LiveServer, client: Any) -> None:
    await _recipe(client, "echo")
    key = await _key(client, "recipe", "echo")
    async with _keyed(server, key, bare=True) as keyed:
        result = (await keyed.post(INVOKE, json={"input": {"text": "bare"}})).json()
        assert result["status"] == "SUCCEED" and result["output"] == {"text": "bare"}
        assert (await _query(keyed, result["workflowRunId"]))["output"] == {"text": "bare"}


async def test_a_failed_run_answers_failed_with_the_node(server: LiveServer, client: Any) -> None:
    await _recipe(client, "parse", PARSE)
    key = await _key(client, "recipe", "parse")
    async with _keyed(server, key) as keyed:
        response = await keyed.post(INVOKE, json={"input": {"text": "{nope"}})
        assert response.status_code == 200, response.text
        result = response.json()
        assert set(result) == RESULT_FIELDS | {"error"}
        assert result["status"] == "FAILED" and result["output"] is None
        assert result["error"]["code"] == "node_failed" and result["error"]["node"] == "parse"
        assert isinstance(result["error"]["message"], str) and result["error"]["message"]
        assert result["endTime"] >= result["startTime"]
        assert await _query(keyed, result["workflowRunId"]) == result


async def test_a_sync_invoke_past_the_wait_answers_running_and_the_run_goes_on(server_settings: Any) -> None:
    async with LiveServer(server_settings(gptbots={"sync_wait_s": 0.5})) as server:
        async with await server.authed_client() as client:
            await _recipe(client, "slow", slow(1.5))
            key = await _key(client, "recipe", "slow")
        async with _keyed(server, key) as keyed:
            started = time.monotonic()
            response = await keyed.post(INVOKE, json={"input": {"text": "later"}})
            waited = time.monotonic() - started
            assert response.status_code == 200, response.text
            running = response.json()
            assert running["status"] == "RUNNING" and running["output"] is None and running["endTime"] is None
            assert 0.4 <= waited < 1.4, waited
            run_id = running["workflowRunId"]
            done = await _until_ended(keyed, run_id)
            assert done["status"] == "SUCCEED" and done["output"] == {"text": "later"}
            assert done["workflowRunId"] == run_id and done["workflowExecutionTime"] >= 1000


async def test_an_async_invoke_answers_pending_at_once(server: LiveServer, client: Any) -> None:
    await _recipe(client, "slow", slow(0.5))
    key = await _key(client, "recipe", "slow")
    async with _keyed(server, key) as keyed:
        started = time.monotonic()
        response = await keyed.post(INVOKE, json={"input": {"text": "a"}, "isAsync": True})
        assert time.monotonic() - started < 0.4
        assert response.status_code == 200, response.text
        pending = response.json()
        assert set(pending) == {"workflowId", "workflowName", "workflowVersion", "workflowRunId", "status"}
        assert pending["status"] == "PENDING" and pending["workflowId"] == "slow" and pending["workflowVersion"] == "1"
        early = await _query(keyed, pending["workflowRunId"])
        assert early["status"] in ("PENDING", "RUNNING") and early["output"] is None
        done = await _until_ended(keyed, pending["workflowRunId"])
        assert done["status"] == "SUCCEED" and done["output"] == {"text": "a"}


async def test_a_cancelled_run_is_failed_with_the_code_cancelled(server: LiveServer, client: Any) -> None:
    await _recipe(client, "slow", slow(30))
    async with await server.authed_client() as jwt:
        pending = (await jwt.post(INVOKE, json={"workflowId": "slow", "input": {"text": "a"}, "isAsync": True})).json()
        run_id = pending["workflowRunId"]
        await asyncio.sleep(0.2)
        assert (await client.post(f"/api/v1/jobs/{run_id}/cancel")).status_code in (200, 202)
        result = await _until_ended(jwt, run_id)
    assert result["status"] == "FAILED" and result["error"]["code"] == "cancelled" and result["output"] is None


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"topic": "x"}, ["count"]),
        ({"topic": "x", "count": 1, "colour": "red"}, ["colour"]),
        ({"topic": 5, "count": "many", "loud": "yes"}, ["topic", "count", "loud"]),
        ({"extra": 1}, ["extra", "topic", "count"]),
    ],
)
async def test_an_input_that_does_not_match_the_start_node_is_422_naming_each_field(
    server: LiveServer, client: Any, given: dict[str, Any], named: list[str]
) -> None:
    await _recipe(client, "typed", TYPED)
    key = await _key(client, "recipe", "typed")
    async with _keyed(server, key) as keyed:
        body = assert_gptbots_error(await keyed.post(INVOKE, json={"input": given}), 422, "input_invalid")
        assert body["message"].startswith("input does not match the workflow's start node: ")
        for field in named:
            assert f"{field}: " in body["message"], (field, body["message"])
        for field in {"topic", "count", "loud", "colour", "extra"} - set(named):
            assert f"{field}: " not in body["message"], (field, body["message"])
        ok = await keyed.post(INVOKE, json={"input": {"topic": "x", "count": 2}})
        assert ok.json()["status"] == "SUCCEED" and ok.json()["output"] == {"text": "x"}
    assert (await client.get("/api/v1/jobs")).json()["total"] == 1  # the refused calls made no job


async def test_a_recipe_key_runs_only_its_own_workflow(server: LiveServer, client: Any) -> None:
    await _recipe(client, "echo")
    await _recipe(client, "other", {**ECHO, "name": "Other"})
    key = await _key(client, "recipe", "echo")
    async with _keyed(server, key) as keyed:
        for other in ("other", "Other", "missing"):
            assert_gptbots_error(
                await keyed.post(INVOKE, json={"workflowId": other, "input": {"text": "a"}}), 403, "forbidden"
            )
        for own in ("echo", "Echo"):
            result = (await keyed.post(INVOKE, json={"workflowId": own, "input": {"text": own}})).json()
            assert result["status"] == "SUCCEED" and result["workflowId"] == "echo"
    assert (await client.get("/api/v1/jobs")).json()["total"] == 2


async def test_personal_keys_and_jwts_name_the_workflow_and_may_not_send_user_id(
    server: LiveServer, client: Any
) -> None:
    await _recipe(client, "echo")
    personal = await _key(client, "personal")
    async with _keyed(server, personal) as pat, await server.authed_client() as jwt:
        for caller in (pat, jwt):
            body = assert_gptbots_error(await caller.post(INVOKE, json={"input": {"text": "a"}}), 422)
            assert "workflowId" in body["message"]
            result = (await caller.post(INVOKE, json={"workflowId": "echo", "input": {"text": "b"}})).json()
            assert result["status"] == "SUCCEED" and result["output"] == {"text": "b"}
            acting = {"workflowId": "echo", "userId": "someone", "input": {"text": "c"}}
            assert_gptbots_error(await caller.post(INVOKE, json=acting), 403, "forbidden")
        assert_gptbots_error(await pat.post(INVOKE, json={"workflowId": "nope", "input": {}}), 404, "not_found")


async def test_an_org_key_acts_for_the_user_the_body_names(server: LiveServer) -> None:
    auth = server.runtime.auth
    await auth.create_user("alice", org="acme")
    await auth.create_user("bob", org="acme")
    await auth.create_user("carol", org="globex")
    bob = await auth.get_user("bob")
    async with await server.authed_client(await server.token("alice")) as alice:
        await _recipe(alice, "echo")
        # Bob sees Alice's recipe only if shared; his own copy keeps the test about acting, not sharing.
        org_key = await _key(alice, "org")
    async with await server.authed_client(await server.token("bob")) as as_bob:
        await _recipe(as_bob, "bobs", {**ECHO, "name": "Bobs"})
    async with _keyed(server, org_key) as keyed:
        result = (await keyed.post(INVOKE, json={"workflowId": "bobs", "userId": "bob", "input": {"text": "b"}})).json()
        assert result["status"] == "SUCCEED", result
        job = await server.runtime.jobs.get(result["workflowRunId"])
        assert job["user_id"] == bob["id"]
        assert (await _query(keyed, result["workflowRunId"]))["output"] == {"text": "b"}
        carol = {"workflowId": "echo", "userId": "carol", "input": {"text": "c"}}
        assert_gptbots_error(await keyed.post(INVOKE, json=carol), 403, "forbidden")
        twice = await keyed.post(INVOKE, params={"userId": "alice"}, json={**carol, "userId": "bob"})
        assert_gptbots_error(twice, 422)


async def test_another_keys_or_users_run_is_404(server: LiveServer, client: Any) -> None:
    await _recipe(client, "echo")
    first, second = await _key(client, "recipe", "echo"), await _key(client, "recipe", "echo")
    async with _keyed(server, first) as keyed:
        run_id = (await keyed.post(INVOKE, json={"input": {"text": "mine"}})).json()["workflowRunId"]
        assert (await _query(keyed, run_id))["status"] == "SUCCEED"
        assert_gptbots_error(await keyed.post(QUERY, json={"workflowRunId": "no-such-run"}), 404, "not_found")
    async with _keyed(server, second) as other_key:
        assert_gptbots_error(await other_key.post(QUERY, json={"workflowRunId": run_id}), 404, "not_found")
    async with await server.authed_client(await server.token("mallory")) as mallory:
        assert_gptbots_error(await mallory.post(QUERY, json={"workflowRunId": run_id}), 404, "not_found")
    assert (await _query(client, run_id))["output"] == {"text": "mine"}  # the owner's JWT sees all its runs


async def test_a_webhook_gets_the_query_result_object(server_settings: Any, receiver: Receiver) -> None:
    settings = server_settings(net={"allow_cidrs": ["127.0.0.0/8"]}, webhooks=FAST)
    async with LiveServer(settings) as server, await server.authed_client() as client:
        await _recipe(client, "echo")
        created = (await client.post("/api/v1/keys", json={"name": "h", "kind": "recipe", "recipe": "echo"})).json()
        hooks = [
            {"method": "POST", "url": receiver.url("/post"), "headers": {"Authorization": "Bearer theirs"}},
            {"method": "GET", "url": receiver.url("/get?fr=google")},
        ]
        async with _keyed(server, created["key"]) as keyed:
            pending = (
                await keyed.post(INVOKE, json={"input": {"text": "w"}, "isAsync": True, "webhook": hooks})
            ).json()
            run_id = pending["workflowRunId"]

            async def both() -> bool:
                return {s.path.split("?")[0] for s in receiver.seen} >= {"/post", "/get"}

            await wait_until(both)
            result = await _query(keyed, run_id)
    (posted,) = [s for s in receiver.seen if s.path == "/post"]
    assert posted.method == "POST" and posted.headers["authorization"] == "Bearer theirs"
    assert orjson.loads(posted.body) == result and result["status"] == "SUCCEED" and result["output"] == {"text": "w"}
    Webhook(created["webhookSecret"]).verify(posted.body, posted.headers)
    (got,) = [s for s in receiver.seen if s.path.startswith("/get")]
    assert got.method == "GET" and "fr=google" in got.path and run_id in got.path


async def test_errors_on_the_gptbots_paths_are_code_and_message(server: LiveServer, client: Any) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as anonymous:
        assert_gptbots_error(await anonymous.post(INVOKE, json={"input": {}}), 401, "unauthorized")
        assert_gptbots_error(await anonymous.post(QUERY, json={"workflowRunId": "x"}), 401, "unauthorized")
    await _recipe(client, "echo")
    cases: list[tuple[str, Any, int, str]] = [
        (INVOKE, b"{not json", 422, "validation_error"),
        (INVOKE, {"workflowId": "echo"}, 422, "validation_error"),  # no input
        (INVOKE, {"workflowId": "echo", "input": {"text": "a"}, "isAsync": "soon"}, 422, "validation_error"),
        (INVOKE, {"workflowId": "echo", "input": {"text": "a"}, "surprise": 1}, 422, "validation_error"),
        (INVOKE, {"workflowId": "echo", "input": {"text": "a"}, "webhook": [{"url": "https://x.test"}] * 6}, 422, None),
        (INVOKE, {"workflowId": "echo", "input": {"text": "a"}, "webhook": [{"url": "gopher://x"}]}, 422, None),
        (INVOKE, {"workflowId": "echo", "input": {"text": 2**70}}, 422, "validation_error"),
        (QUERY, {}, 422, "validation_error"),
        (QUERY, {"workflowRunId": "a\u0000b"}, 404, "not_found"),
    ]
    for path, body, status, code in cases:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()  # orjson refuses 2**70
        response = await client.post(path, content=content, headers={"Content-Type": "application/json"})
        assert_gptbots_error(response, status, code)
    assert_gptbots_error(await client.get(INVOKE), 405, "method_not_allowed")
    assert_gptbots_error(await client.post("/v1/workflow/nowhere", json={}), 404, "not_found")
    assert (await client.get("/api/v1/jobs")).json()["total"] == 0
    # Native paths keep the native shape.
    native = (await client.get("/api/v1/jobs/none")).json()
    assert set(native) == {"error"}


async def test_a_body_over_the_limit_is_413_in_the_gptbots_shape(make_settings: Any) -> None:
    async with LiveServer(make_settings(limits={"max_body_bytes": 1024})) as server:
        async with await server.authed_client() as client:
            big = {"workflowId": "echo", "input": {"text": "x" * 4096}}
            assert_gptbots_error(await client.post(INVOKE, json=big), 413, "payload_too_large")
