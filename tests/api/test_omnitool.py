"""Omnitool's recipe API (`/api/v1/workflow/*`) on a real server, SQLite and PostgreSQL; and Omnitool-style
clients (Node's `examples/api.mjs` logic, a Python client from the document alone) against `conveyor serve`."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from tests.conftest import LiveServer
from tests.processes import ServerProcess

from conveyor.api.omnitool import chat_inputs, omnitool_text, result_object
from conveyor.blocks.io import FieldKind, InputField
from conveyor.errors import InputInvalidError

CLIENTS = Path(__file__).resolve().parent.parent / "clients"
EXEC = "/api/v1/workflow/exec"
JOBS = "/api/v1/workflow/jobs"
RESULTS = "/api/v1/workflow/results"
STOP = "/api/v1/workflow/stop"
WORKFLOWS = "/api/v1/workflow/workflows"

ECHO = {
    "id": "echo",
    "name": "Echo",
    "description": "Hands its Chat Input on as its output.",
    "nodes": {
        "start": {"block": "chat_input"},
        "out": {
            "block": "recipe_output",
            "inputs": {
                "text": "start.text",
                "images": "start.images",
                "documents": "start.documents",
                "objects": "start.json",
            },
        },
    },
}
SLOW = {
    "id": "slow",
    "name": "Slow",
    "nodes": {
        "start": {"block": "chat_input", "config": {"fields": {"text": {"type": "text", "required": True}}}},
        "wait": {"block": "delay", "config": {"seconds": 1.0}, "inputs": {"value": "start.text"}},
        "out": {"block": "recipe_output", "inputs": {"text": "wait.value"}},
    },
}
FAILING = {
    "id": "failing",
    "name": "Failing",
    "nodes": {
        "start": {"block": "chat_input"},
        "parse": {"block": "text_to_json", "inputs": {"text": "start.text"}},
        "out": {"block": "recipe_output", "inputs": {"objects": "parse.json"}},
    },
}


def assert_omni_error(response: httpx.Response, status: int, contains: str = "") -> str:
    """Omnitool's error shape, `{"error": "<message>"}`, with `status`; returns the message."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    assert contains.lower() in body["error"].lower(), body
    return str(body["error"])


async def shared_recipe(server: LiveServer, doc: dict[str, Any]) -> str:
    """A recipe every user sees (no owner), made through the server's own recipe service."""
    row = await server.runtime.recipes.create(doc)
    return str(row["id"])


async def user_client(server: LiveServer, user: str | None = None, **token: Any) -> httpx.AsyncClient:
    token.setdefault("action", "exec")
    token.setdefault("subject", "Workflow")
    client: httpx.AsyncClient = await server.authed_client(await server.token(user, **token))
    return client


async def exec_job(client: httpx.AsyncClient, workflow: str, args: dict[str, Any] | None = None) -> str:
    body: dict[str, Any] = {"workflow": workflow}
    if args is not None:
        body["args"] = args
    response = await client.post(EXEC, json=body)
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["status"] == "JOB_STARTED" and result["sender"] == "omni"
    assert set(result) == {"status", "jobId", "sender"}
    return str(result["jobId"])


async def wait_results(client: httpx.AsyncClient, job_id: str, timeout_s: float = 20.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        response = await client.get(RESULTS, params={"jobId": job_id})
        if response.status_code == 200:
            result: dict[str, Any] = response.json()
            return result
        assert response.status_code == 202, response.text
        assert response.json() == {"jobId": job_id, "state": "running"}
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} gave no result within {timeout_s} s")


async def job_state(client: httpx.AsyncClient, job_id: str) -> str | None:
    jobs = (await client.get(JOBS)).json()["jobs"]
    found = [job["state"] for job in jobs if job["id"] == job_id]
    assert len(found) <= 1, jobs
    return found[0] if found else None


def png_bytes(width: int = 8, height: int = 6) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- exec and results


async def test_exec_runs_the_recipe_and_results_carry_its_output(server: LiveServer) -> None:
    await shared_recipe(server, ECHO)
    async with await user_client(server, "alice") as alice:
        job_id = await exec_job(alice, "echo", {"text": "A horse"})
        result = await wait_results(alice, job_id)
        me = (await alice.get("/api/v1/auth/me")).json()["userId"]
    assert result["text"] == ["A horse"] and result["objects"] == []
    assert result["artifacts"] == {"images": [], "audio": [], "documents": [], "videos": [], "files": []}
    assert result["job"] == {"userId": me, "jobId": job_id, "recipeId": "echo", "success": True, "errors": None}
    assert isinstance(result["created"], int) and result["created"] > 1_700_000_000_000


async def test_exec_finds_a_recipe_by_name_and_ignores_start_node(server: LiveServer) -> None:
    await shared_recipe(server, ECHO)
    async with await user_client(server) as client:
        response = await client.post(EXEC, json={"workflow": "Echo", "args": {"text": "hi"}, "startNode": 3})
        assert response.status_code == 200, response.text
        result = await wait_results(client, response.json()["result"]["jobId"])
    assert result["text"] == ["hi"] and result["job"]["recipeId"] == "echo"


async def test_args_become_chat_input_fields_as_omnitool_reads_them(server: LiveServer) -> None:
    await shared_recipe(server, ECHO)
    png = png_bytes()
    async with await user_client(server) as client:
        # A text list is joined with newlines; text that is JSON becomes `json` too; Omnitool's bookkeeping args
        # are ignored; one image as a data URI stays a list (the field is a list of images).
        job_id = await exec_job(
            client,
            "echo",
            {
                "text": ['{"a": 1,', '"b": [2]}'],
                "images": "data:image/png;base64," + base64.b64encode(png).decode(),
                "botIdentity": "omni",
                "xOmniNickName": "echo",
            },
        )
        result = await wait_results(client, job_id)
        # The text went in joined; the `text` output comes back split into lines, as Omnitool's array socket does.
        assert result["text"] == ['{"a": 1,', '"b": [2]}']
        assert result["objects"] == [{"a": 1, "b": [2]}]
        [image] = result["artifacts"]["images"]
        assert image["mimeType"] == "image/png" and image["size"] == len(png) and image["fileType"] == "image"
        assert image["url"] == f"/fid/{image['fid']}" and image["furl"] == f"fid://{image['fid']}.png"
        assert image["meta"] == {"width": 8, "height": 6, "type": "png"}
        assert image["expires"] == 2**53 - 1
        served = await client.get(image["url"])
        assert served.status_code == 200 and served.content == png

        # A descriptor, its furl (with the extension), its url and bare base64 all name images; `json` is taken
        # as sent, and wins over text.
        job_id = await exec_job(
            client,
            "echo",
            {
                "text": '{"ignored": true}',
                "json": [{"x": 1}],
                "images": [image, image["furl"], image["url"], base64.b64encode(png).decode()],
            },
        )
        result = await wait_results(client, job_id)
    assert result["objects"] == [{"x": 1}]
    images = result["artifacts"]["images"]
    assert [i["fid"] for i in images[:3]] == [image["fid"]] * 3
    assert images[3]["fid"] != image["fid"] and images[3]["size"] == len(png)


async def test_documents_and_objects_go_to_their_lists(server: LiveServer) -> None:
    await shared_recipe(server, ECHO)
    async with await user_client(server) as client:
        doc = "data:text/plain;base64," + base64.b64encode(b"hello document").decode()
        job_id = await exec_job(client, "echo", {"documents": [doc], "json": {"k": "v"}})
        result = await wait_results(client, job_id)
        [document] = result["artifacts"]["documents"]
        assert document["mimeType"] == "text/plain" and document["fileType"] == "document"
        assert document["furl"].endswith(".txt")
        assert result["objects"] == [{"k": "v"}] and result["text"] == []
        assert (await client.get(document["url"])).content == b"hello document"


async def test_exec_errors_are_honest_and_omnitool_shaped(server: LiveServer) -> None:
    await shared_recipe(server, ECHO)
    greeting_only = await server.token("carol", action="exec", subject="Workflow", recipes=["greeting"])
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        assert_omni_error(await anonymous.post(EXEC, json={"workflow": "echo"}), 401)
        bad = {"Authorization": "Bearer not-a-token"}
        assert_omni_error(await anonymous.post(EXEC, json={"workflow": "echo"}, headers=bad), 401)
    async with await server.authed_client(greeting_only) as limited:
        assert_omni_error(await limited.post(EXEC, json={"workflow": "echo", "args": {"nope": 1}}), 403, "echo")
        assert (await limited.post(EXEC, json={"workflow": "greeting", "args": {"text": "x"}})).status_code == 200
    async with await user_client(server, "dave", action="read", subject="Workflow") as reader:
        assert_omni_error(await reader.post(EXEC, json={"workflow": "echo"}), 403)
    async with await user_client(server) as client:
        assert_omni_error(await client.post(EXEC, json={"workflow": "nope"}), 404, "nope")
        message = assert_omni_error(await client.post(EXEC, json={"workflow": "echo", "args": {"txt": "a"}}), 422)
        assert "'txt'" in message
        for body in ({}, {"workflow": 5}, {"workflow": "echo", "args": [1]}, {"workflow": "echo", "arg": {}}):
            assert_omni_error(await client.post(EXEC, json=body), 422)
        assert_omni_error(await client.post(EXEC, content=b"", headers={"Content-Type": "application/json"}), 422)
        assert_omni_error(await client.post(EXEC, content=b"{not json"), 422)
        message = assert_omni_error(await client.post(EXEC, json={"workflow": "echo", "args": {"images": "%%"}}), 422)
        assert "images" in message
        # A required field missing (the greeting's text) is the contract's 422.
        assert_omni_error(await client.post(EXEC, json={"workflow": "greeting", "args": {}}), 422, "text")
        assert (await client.get(JOBS)).json()["jobs"] == []  # no refused exec made a job


async def test_a_full_queue_answers_429_with_retry_after(make_settings: Any) -> None:
    settings = make_settings(limits={"max_pending_jobs": 2}, executor={"concurrency": 1})
    async with LiveServer(settings) as live:
        await shared_recipe(live, SLOW)
        async with await user_client(live) as client:
            codes = []
            for _ in range(6):
                response = await client.post(EXEC, json={"workflow": "slow", "args": {"text": "x"}})
                codes.append(response.status_code)
                if response.status_code == 429:
                    assert_omni_error(response, 429, "queue")
                    assert response.headers["Retry-After"] == "1"
            assert 429 in codes
            await client.post(STOP)


# ---------------------------------------------------------------------------------------------- jobs


async def test_jobs_lists_the_callers_jobs_with_omnitool_states(server: LiveServer) -> None:
    await shared_recipe(server, ECHO)
    await shared_recipe(server, FAILING)
    await shared_recipe(server, SLOW)
    async with await user_client(server, "alice") as alice, await user_client(server, "bob") as bob:
        me = (await alice.get("/api/v1/auth/me")).json()["userId"]
        done = await exec_job(alice, "echo", {"text": "a"})
        failed = await exec_job(alice, "failing", {"text": "not json"})
        stopped = await exec_job(alice, "slow", {"text": "a"})
        running = await exec_job(alice, "slow", {"text": "b"})
        await wait_results(alice, done)
        await wait_results(alice, failed)
        assert (await alice.post(STOP, json={"jobId": stopped})).json() == {}
        await wait_results(alice, stopped)
        bobs = await exec_job(bob, "echo", {"text": "b"})
        # Omnitool's example sends the JSON content type on its GETs too, with no body.
        response = await alice.get(JOBS, headers={"Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        jobs = {job["id"]: job for job in response.json()["jobs"]}
        assert jobs == {
            done: {"id": done, "state": "success", "user": me},
            failed: {"id": failed, "state": "error", "user": me},
            stopped: {"id": stopped, "state": "stopped", "user": me},
            running: {"id": running, "state": "running", "user": me},
        }
        assert [job["id"] for job in (await bob.get(JOBS)).json()["jobs"]] == [bobs]
        await alice.post(STOP)


async def test_jobs_forgets_jobs_finished_over_20_minutes_ago(server: LiveServer) -> None:
    await shared_recipe(server, ECHO)
    async with await user_client(server) as client:
        old = await exec_job(client, "echo", {"text": "old"})
        recent = await exec_job(client, "echo", {"text": "recent"})
        await wait_results(client, old)
        await wait_results(client, recent)
        finished = (await client.get(RESULTS, params={"jobId": old})).json()["created"]
        await server.runtime.db.execute(
            "UPDATE jobs SET finished_at = $1 WHERE id = $2", finished - 20 * 60 * 1000 - 1000, old
        )
        assert [job["id"] for job in (await client.get(JOBS)).json()["jobs"]] == [recent]
        # Forgotten by the list, not by the store: its result stays.
        assert (await client.get(RESULTS, params={"jobId": old})).json()["text"] == ["old"]


async def test_running_is_never_left_before_the_result_is_stored(server: LiveServer) -> None:
    await shared_recipe(server, SLOW)
    async with await user_client(server) as client:
        job_id = await exec_job(client, "slow", {"text": "patience"})
        assert await job_state(client, job_id) == "running"  # from the moment exec answers
        seen_running = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while loop.time() < deadline:
            state = await job_state(client, job_id)
            results = await client.get(RESULTS, params={"jobId": job_id})
            if state == "running":
                seen_running += 1
                if results.status_code == 202:
                    assert results.json()["state"] == "running"
                    await asyncio.sleep(0.03)
                # else it ended between the two reads: the next read of the list must say so
                continue
            # The list says it ended: the result, read after, must be there, complete.
            assert state == "success", state
            assert results.status_code == 200, results.text
            assert results.json()["text"] == ["patience"]
            break
        else:
            raise AssertionError("the slow job did not end")
        assert seen_running >= 5


# ---------------------------------------------------------------------------------------------- results


async def test_results_of_failed_and_stopped_jobs_say_why(server: LiveServer) -> None:
    await shared_recipe(server, FAILING)
    await shared_recipe(server, SLOW)
    async with await user_client(server) as client:
        failed = await wait_results(client, await exec_job(client, "failing", {"text": "not json"}))
        assert failed["job"]["success"] is False and failed["text"] == [] and failed["objects"] == []
        [error] = failed["job"]["errors"]
        assert error["node"] == "parse" and error["block"] == "text_to_json" and error["code"] == "node_failed"
        assert "parse" in error["message"]
        job_id = await exec_job(client, "slow", {"text": "x"})
        await client.post(STOP, json={"jobId": job_id})
        stopped = await wait_results(client, job_id)
        assert stopped["job"]["success"] is False
        assert stopped["job"]["errors"][0]["code"] == "cancelled" and stopped["job"]["errors"][0]["node"] is None


async def test_results_of_unknown_and_other_users_jobs_are_404(server: LiveServer) -> None:
    await shared_recipe(server, ECHO)
    async with await user_client(server, "alice") as alice, await user_client(server, "bob") as bob:
        job_id = await exec_job(alice, "echo", {"text": "mine"})
        await wait_results(alice, job_id)
        for client, ident in ((bob, job_id), (alice, "00000000-0000-0000-0000-000000000000"), (alice, "x\x00y")):
            response = await client.get(RESULTS, params={"jobId": ident})
            assert response.status_code == 404 and response.json() == {"error": "Job not found"}
        assert_omni_error(await alice.get(RESULTS), 422, "jobId")
        assert_omni_error(await alice.get(RESULTS, params={"jobId": ""}), 422)


async def test_results_survive_a_restart(make_settings: Any) -> None:
    settings = make_settings()
    async with LiveServer(settings) as first:
        await shared_recipe(first, ECHO)
        token = await first.token("alice", action="exec", subject="Workflow")
        async with await first.authed_client(token) as client:
            job_id = await exec_job(client, "echo", {"text": "kept"})
            before = await wait_results(client, job_id)
    async with LiveServer(make_settings()) as second, await second.authed_client(token) as client:
        response = await client.get(RESULTS, params={"jobId": job_id})
        assert response.status_code == 200 and response.json() == before
        assert [job["id"] for job in (await client.get(JOBS)).json()["jobs"]] == [job_id]


async def test_an_exported_llm_recipe_runs_in_omnitool_form_and_keeps_usage_native(server_settings: Any) -> None:
    """A native llm_chat recipe exports as Omnitool JSON (`openai.advancedChatGPT`, JSON mode) and imports back;
    run through `/workflow/exec` it asks the (scripted) model what the native node asked. Omnitool's result has no
    place for usage, so none is added to it; the job's summed usage is on the native job."""
    from tests.llm.scripted_openai import MODEL, ScriptedOpenAI, completion

    native = {
        "id": "ask-native",
        "name": "Ask natively",
        "nodes": {
            "start": {"block": "chat_input", "config": {"fields": {"text": {"type": "text"}}}},
            "ask": {
                "block": "llm_chat",
                "config": {"system": "Reply in JSON.", "model": "gpt-4o", "temperature": 0.2}
                | {"json_schema": {"type": "object"}},
                "inputs": {"prompt": "start.text"},
            },
            "out": {"block": "recipe_output", "inputs": {"text": "ask.text", "objects": "ask.json"}},
        },
    }
    async with ScriptedOpenAI() as scripted:
        llm = {"provider": "openai", "base_url": scripted.base_url, "model": MODEL, "prices": {"gpt-4o": [2.0, 10.0]}}
        settings = server_settings(llm=llm, net={"allow_cidrs": ["127.0.0.0/8"]})
        scripted.script(completion('{"colour": "blue"}', usage=(1200, 300), model="gpt-4o"))
        async with LiveServer(settings) as live, await live.authed_client() as admin:
            assert (await admin.post("/api/v1/recipes", json=native)).status_code == 201
            exported = (await admin.get("/api/v1/recipes/ask-native/export", params={"format": "omnitool"})).json()
            [node] = [n for n in exported["rete"]["nodes"].values() if n["name"].startswith("openai.")]
            assert node["name"] == "openai.advancedChatGPT" and node["data"]["json_mode"] is True
            exported["id"] = "ask-omnitool"
            imported = await admin.post("/api/v1/recipes/import", json=exported)
            assert imported.status_code == 201 and imported.json()["warnings"] == [], imported.text
            job_id = await exec_job(admin, "ask-omnitool", {"text": "What colour is the sky?"})
            result = await wait_results(admin, job_id)
            detail = (await admin.get(f"/api/v1/jobs/{job_id}")).json()
        [body] = scripted.bodies()
    assert body["messages"] == [
        {"role": "system", "content": "Reply in JSON."},
        {"role": "user", "content": "What colour is the sky?"},
    ]
    assert (body["model"], body["temperature"]) == ("gpt-4o", 0.2)
    assert set(result) == {"text", "objects", "artifacts", "job", "created"}  # Omnitool's keys, none invented
    assert result["text"] == ['{"colour": "blue"}'] and result["objects"] == [{"colour": "blue"}]
    assert result["job"]["success"] is True
    assert detail["usage"] == {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "total_tokens": 1500,
        "cost": pytest.approx(0.0054),
    }


# ---------------------------------------------------------------------------------------------- stop


async def test_stop_touches_only_the_callers_jobs(server: LiveServer) -> None:
    await shared_recipe(server, SLOW)
    async with await user_client(server, "alice") as alice, await user_client(server, "bob") as bob:
        mine = [await exec_job(alice, "slow", {"text": str(n)}) for n in range(3)]
        bobs = await exec_job(bob, "slow", {"text": "bob"})
        response = await bob.post(STOP, json={"jobId": mine[0]})
        assert response.status_code == 404 and response.json() == {"error": "Job not found"}
        # No body at all, with the JSON content type (as Omnitool's clients send), stops all of the caller's.
        response = await alice.post(STOP, headers={"Content-Type": "application/json"})
        assert response.status_code == 200 and response.json() == {}
        for job_id in mine:
            assert (await wait_results(alice, job_id))["job"]["success"] is False
            assert await job_state(alice, job_id) == "stopped"
        assert await job_state(bob, bobs) == "running"
        result = await wait_results(bob, bobs)
        assert result["job"]["success"] is True and result["text"] == ["bob"]
        # Stopping a finished job changes nothing.
        assert (await bob.post(STOP, json={"jobId": bobs})).json() == {}
        assert await job_state(bob, bobs) == "success"
        assert (await alice.post(STOP, content=b"{}")).json() == {}
        assert_omni_error(await alice.post(STOP, json={"jobId": 5}), 422)


# ---------------------------------------------------------------------------------------------- workflows


async def test_workflows_lists_the_recipes_the_caller_sees(server: LiveServer, client: httpx.AsyncClient) -> None:
    await shared_recipe(server, ECHO)
    admin_owned = dict(ECHO, id="admins-echo", name="Admin's echo")
    assert (await client.post("/api/v1/recipes", json=admin_owned)).status_code == 201
    async with await user_client(server, "alice") as alice:
        listed = (await alice.get(WORKFLOWS, params={"limit": 500})).json()
        assert listed["success"] == "ok" and listed["nextBookmark"] == ""
        by_id = {item["id"]: item for item in listed["workflows"]}
        assert "admins-echo" not in by_id and {"echo", "greeting"} <= set(by_id)
        echo = by_id["echo"]
        assert echo["owner"] == "shared" and echo["meta"]["name"] == "Echo"
        assert echo["meta"]["description"] == ECHO["description"] and echo["meta"]["revision"] == 1
    admin = (await client.get(WORKFLOWS, params={"limit": 500})).json()["workflows"]
    assert any(item["id"] == "admins-echo" and item["owner"] == "You" for item in admin)
    # Pages: the bookmark is the first recipe of the next page.
    everything = [item["id"] for item in admin]
    first = (await client.get(WORKFLOWS, params={"limit": 2})).json()
    assert [item["id"] for item in first["workflows"]] == everything[:2] and first["nextBookmark"] == everything[2]
    second = (await client.get(WORKFLOWS, params={"limit": 2, "bookmark": first["nextBookmark"]})).json()
    assert [item["id"] for item in second["workflows"]] == everything[2:4]
    assert_omni_error(await client.get(WORKFLOWS, params={"limit": 0}), 422)
    assert_omni_error(await client.get(WORKFLOWS, params={"bookmark": "nope"}), 422, "nope")


# ---------------------------------------------------------------------------------------------- tokens


async def test_a_1000_ms_token_is_dead_2_s_later_on_every_route(server: LiveServer) -> None:
    await shared_recipe(server, ECHO)
    token = await server.token("alice", action="exec", subject="Workflow", expires_in_ms=1000)
    async with await server.authed_client(token) as client:
        job_id = await exec_job(client, "echo", {"text": "quick"})
        await asyncio.sleep(2.0)
        calls = [
            client.post(EXEC, json={"workflow": "echo"}),
            client.get(JOBS),
            client.get(RESULTS, params={"jobId": job_id}),
            client.post(STOP, json={"jobId": job_id}),
            client.get(WORKFLOWS),
            client.post("/fid", files={"file": ("a.txt", b"a", "text/plain")}),
        ]
        for call in calls:
            assert_omni_error(await call, 401, "expired")


async def test_unknown_workflow_routes_answer_in_omnitool_shape(server: LiveServer) -> None:
    async with await user_client(server) as client:
        assert_omni_error(await client.get("/api/v1/workflow/nope"), 404)
        assert_omni_error(await client.delete(JOBS), 405)


# ---------------------------------------------------------------------------------------------- pure mappings


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        (["a", "b", None, 3], "a\nb\n\n3"),
        ({"fid": "f", "furl": "fid://f.png"}, "fid://f.png"),
        ({"k": [1]}, '{\n  "k": [\n    1\n  ]\n}'),
        (2.0, "2"),
        (2.5, "2.5"),
        (True, "true"),
        (None, ""),
    ],
)
def test_text_is_written_as_omnitools_text_socket_does(value: Any, text: str) -> None:
    assert omnitool_text(value) == text


def test_chat_inputs_reads_media_json_and_names_unknown_args() -> None:
    contract = {kind.value: InputField(type=kind) for kind in list(FieldKind)[:6]}
    fid = "ab" * 16
    inputs = chat_inputs(
        contract,
        {
            "text": "[1, 2]",
            "images": f"https://a.example/1.png\n fid://{fid}.png \n/fid/{fid}.jpg?exp=1&sig=2",
            "audio": {"fid": fid.upper() + ".mp3", "furl": "x"},
            "video": [None, "", {"url": f"/fid/{fid}"}],
            "documents": "line one\nline two",
        },
    )
    assert inputs == {
        "text": "[1, 2]",
        "json": [1, 2],
        "images": ["https://a.example/1.png", f"fid://{fid}", f"fid://{fid}"],
        "audio": {"fid": fid},
        "video": [{"fid": fid}],
        "documents": "line one\nline two",
    }
    assert chat_inputs(contract, {"text": "not json", "images": [], "json": None}) == {"text": "not json"}
    with pytest.raises(InputInvalidError) as caught:
        chat_inputs(contract, {"text": "a", "colour": 1, "size": 2})
    assert [d["field"] for d in caught.value.details] == ["colour", "size"]
    # A recipe's own field named like Omnitool's bookkeeping is a field like any other.
    assert chat_inputs({"botIdentity": InputField()}, {"botIdentity": "x"}) == {"botIdentity": "x"}


async def test_result_object_sorts_outputs_into_omnitools_lists() -> None:
    def ref(fid: str, mime: str) -> dict[str, Any]:
        return {"fid": fid * 32, "name": f"f.{mime.split('/')[1]}", "mime": mime, "size": 1}

    async def describe(item: Any) -> dict[str, Any]:
        kind = item["mime"].split("/")[0]
        return {"fid": item["fid"], "fileType": kind if kind in ("image", "audio", "video") else "file"}

    result = await result_object(
        {
            "text": ["a", "b"],
            "caption": "c\nstays whole",
            "objects": [{"x": 1}, {"y": 2}],
            "count": 3,
            "files": [ref("a", "image/png")],
            "picture": ref("b", "image/png"),
            "clip": [ref("c", "video/mp4"), ref("d", "video/mp4")],
            "blob": ref("e", "application/zip"),
            "nothing": None,
        },
        describe,
    )
    assert result["text"] == ["a", "b", "c\nstays whole"]
    assert result["objects"] == [{"x": 1}, {"y": 2}, 3]
    assert {key: [d["fid"][0] for d in value] for key, value in result["artifacts"].items()} == {
        "images": ["b"],
        "audio": [],
        "documents": [],
        "videos": ["c", "d"],
        "files": ["a", "e"],
    }


# ---------------------------------------------------------------------------------------------- real clients


@pytest.fixture
def serve_process(tmp_path: Path) -> Any:
    with ServerProcess(tmp_path / "data") as process:
        yield process


def _echo_recipe_and_token(process: ServerProcess) -> str:
    with process.client() as admin:
        created = admin.post("/api/v1/recipes", json=ECHO)
        assert created.status_code == 201, created.text
    return process.token("exec", "Workflow", "3600000")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.mark.timeout(120)
def test_omnitools_api_mjs_logic_runs_a_recipe_with_node(serve_process: ServerProcess) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("`node` is not on PATH: install Node.js (18 or later) to run Omnitool's api.mjs client test")
    token = _echo_recipe_and_token(serve_process)
    env = {
        **os.environ,
        "OMNI_SERVER_URL": serve_process.url,
        "OMNI_TOKEN": token,
        "OMNI_RECIPE_ID": "echo",
        "OMNI_POLL_INTERVAL_MS": "200",
    }
    done = subprocess.run(
        [node, str(CLIENTS / "omnitool_api.mjs")], env=env, capture_output=True, text=True, timeout=90, check=False
    )
    assert done.returncode == 0, done.stderr + done.stdout
    out = _ANSI.sub("", done.stdout)
    assert re.search(r"job start \{\s*result: \{\s*status: 'JOB_STARTED',\s*jobId: '[0-9a-f-]{36}'", out), out
    assert "Job completed." in out
    assert re.search(r"text: \[ 'A horse' \]", out), out
    assert re.search(r"success: true", out) and "recipeId: 'echo'" in out, out


@pytest.mark.timeout(120)
def test_a_python_client_from_the_document_alone_runs_a_recipe(serve_process: ServerProcess) -> None:
    token = _echo_recipe_and_token(serve_process)
    argv = [sys.executable, str(CLIENTS / "omnitool_client.py"), "--url", serve_process.url, "--token", token]
    argv += ["--recipe", "echo", "--text", "A horse", "--poll", "0.1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    start_line, _, results_text = done.stdout.partition("\nresults ")
    start = json.loads(start_line.removeprefix("job start "))
    assert start["result"]["status"] == "JOB_STARTED"
    results = json.loads(results_text)
    assert results["text"] == ["A horse"]
    assert results["job"]["jobId"] == start["result"]["jobId"] and results["job"]["success"] is True
