"""Authentication and permissions on the native API: tokens, scopes, recipe limits, revocation, users' walls."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import jwt
import pytest
from tests.api.shapes import assert_error
from tests.api.test_jobs import wait_result

ECHO = {
    "name": "Echo",
    "nodes": {
        "start": {"block": "chat_input", "config": {"fields": {"text": {"type": "text", "required": True}}}},
        "out": {"block": "recipe_output", "inputs": {"text": "start.text"}},
    },
}


async def _recipe(client: Any, recipe_id: str) -> str:
    response = await client.post("/api/v1/recipes", json={**ECHO, "id": recipe_id})
    assert response.status_code == 201, response.text
    return recipe_id


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_every_route_but_health_and_docs_needs_a_token(server: Any) -> None:
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        assert (await anonymous.get("/api/v1/health")).status_code == 200
        assert (await anonymous.get("/openapi.json")).status_code == 200
        for method, path in [
            ("GET", "/api/v1/jobs"),
            ("POST", "/api/v1/jobs"),
            ("GET", "/api/v1/recipes"),
            ("GET", "/api/v1/blocks"),
            ("POST", "/api/v1/files"),
            ("GET", "/api/v1/files/abc"),
            ("GET", "/api/v1/auth/me"),
        ]:
            response = await anonymous.request(method, path)
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].startswith("Bearer")
        bad = await anonymous.get("/api/v1/jobs", headers={"Authorization": "Bearer not.a.jwt"})
        assert_error(bad, 401, "unauthorized")
        basic = await anonymous.get("/api/v1/jobs", headers={"Authorization": "Basic YWRtaW46eA=="})
        assert_error(basic, 401, "unauthorized")


async def test_a_token_limited_to_one_recipe_runs_only_that_one(server: Any, client: Any) -> None:
    a, b = await _recipe(client, "recipe-a"), await _recipe(client, "recipe-b")
    token = await server.token(action="exec", subject="Workflow", recipes=[a])
    async with await server.authed_client(token) as limited:
        ok = await limited.post("/api/v1/jobs", json={"recipe": a, "inputs": {"text": "hi"}})
        assert ok.status_code == 202, ok.text
        assert (await wait_result(limited, ok.json()["id"]))["outputs"] == {"text": "hi"}
        refused = await limited.post("/api/v1/jobs", json={"recipe": b, "inputs": {"text": "hi"}})
        assert_error(refused, 403, "forbidden")
        by_name = await limited.post("/api/v1/jobs", json={"recipe": "Echo", "inputs": {"text": "hi"}})
        assert by_name.status_code in (202, 403)  # the newest "Echo" is recipe-b: refused, never run unchecked
        if by_name.status_code == 202:
            assert by_name.json()["recipe"] == a
        # Managing recipes needs `manage`: an exec token cannot change what it may run.
        assert_error(await limited.put(f"/api/v1/recipes/{a}", json=ECHO), 403, "forbidden")


@pytest.mark.parametrize(("action", "subject"), [("read", "Workflow"), ("exec", "Recipe"), ("execute", "all")])
async def test_other_actions_or_subjects_cannot_run(server: Any, action: str, subject: str) -> None:
    token = await server.token(action=action, subject=subject)
    async with await server.authed_client(token) as caller:
        response = await caller.post("/api/v1/jobs", json={"recipe": "greeting", "inputs": {"text": "x"}})
        assert_error(response, 403, "forbidden")
        assert (await caller.get("/api/v1/jobs")).status_code == 200  # still the user's own list


@pytest.mark.parametrize(("action", "subject"), [("exec", "Workflow"), ("manage", "Workflow"), ("exec", "all")])
async def test_exec_or_manage_on_workflow_or_all_can_run(server: Any, action: str, subject: str) -> None:
    token = await server.token(action=action, subject=subject)
    async with await server.authed_client(token) as caller:
        response = await caller.post("/api/v1/jobs", json={"recipe": "greeting", "inputs": {"text": "x"}})
        assert response.status_code == 202, response.text


async def test_revoked_and_expired_tokens_are_refused(server: Any) -> None:
    token = await server.token(action="exec", subject="Workflow")
    async with await server.authed_client(token) as caller:
        me = (await caller.get("/api/v1/auth/me")).json()
        assert (await caller.delete(f"/api/v1/auth/tokens/{me['tokenId']}")).status_code == 204
        assert_error(await caller.get("/api/v1/jobs"), 401, "unauthorized")
    short = await server.token(action="exec", subject="Workflow", expires_in_ms=1000)
    async with await server.authed_client(short) as caller:
        assert (await caller.get("/api/v1/jobs")).status_code == 200
        await asyncio.sleep(2.05)
        assert_error(await caller.get("/api/v1/jobs"), 401, "unauthorized")


async def test_users_never_see_each_others_jobs_results_or_files(server: Any) -> None:
    alice = await server.authed_client(await server.token("alice", action="exec", subject="Workflow"))
    bob = await server.authed_client(await server.token("bob", action="exec", subject="Workflow"))
    async with alice, bob:
        job = (await alice.post("/api/v1/jobs", json={"recipe": "greeting", "inputs": {"text": "A"}})).json()
        await wait_result(alice, job["id"])
        for path in (
            f"/api/v1/jobs/{job['id']}",
            f"/api/v1/jobs/{job['id']}/result",
            f"/api/v1/jobs/{job['id']}/events",
        ):
            assert_error(await bob.get(path), 404, "not_found")
        assert_error(await bob.post(f"/api/v1/jobs/{job['id']}/cancel"), 404, "not_found")
        assert (await bob.get("/api/v1/jobs")).json()["total"] == 0
        assert (await alice.get("/api/v1/jobs")).json()["total"] == 1
        upload = await alice.post("/api/v1/files", files={"file": ("a.txt", b"alice's", "text/plain")})
        fid = upload.json()["items"][0]["fid"]
        assert (await alice.get(f"/api/v1/files/{fid}")).content == b"alice's"
        assert_error(await bob.get(f"/api/v1/files/{fid}"), 404, "not_found")
        # Bob cannot use Alice's file as a job input either, even in a recipe of his own.
        media = {
            "name": "Doc",
            "nodes": {
                "start": {"block": "chat_input", "config": {"fields": {"doc": {"type": "documents"}}}},
                "out": {"block": "recipe_output", "inputs": {"doc": "start.doc"}},
            },
        }
        async with await server.authed_client(await server.token("bob", action="manage", subject="all")) as bob_admin:
            created = await bob_admin.post("/api/v1/recipes", json={**media, "id": "doc-echo"})
            assert created.status_code == 201, created.text
            assert (await bob_admin.get("/api/v1/recipes/doc-echo")).status_code == 200
        refused = await bob.post("/api/v1/jobs", json={"recipe": "doc-echo", "inputs": {"doc": {"fid": fid}}})
        assert refused.status_code in (404, 422), refused.text
        assert fid in refused.text


async def test_idempotency_keys_are_per_user(server: Any) -> None:
    alice = await server.authed_client(await server.token("alice2", action="exec", subject="Workflow"))
    bob = await server.authed_client(await server.token("bob2", action="exec", subject="Workflow"))
    async with alice, bob:
        body = {"recipe": "greeting", "inputs": {"text": "x"}}
        first = await alice.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
        other = await bob.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
        assert first.status_code == 202 and other.status_code == 202
        assert first.json()["id"] != other.json()["id"]


async def test_recipes_of_a_user_are_theirs_shared_ones_are_everyones(server: Any) -> None:
    alice = await server.authed_client(await server.token("carol", action="manage", subject="all"))
    bob = await server.authed_client(await server.token("dave", action="manage", subject="all"))
    async with alice, bob:
        assert (await alice.post("/api/v1/recipes", json={**ECHO, "id": "carols"})).status_code == 201
        assert_error(await bob.get("/api/v1/recipes/carols"), 404, "not_found")
        assert_error(await bob.post("/api/v1/jobs", json={"recipe": "carols", "inputs": {"text": "x"}}), 404)
        assert_error(await bob.delete("/api/v1/recipes/carols"), 404, "not_found")
        assert "carols" not in {r["id"] for r in (await bob.get("/api/v1/recipes")).json()["items"]}
        assert (await bob.get("/api/v1/recipes/greeting")).status_code == 200  # seeded: shared
        # A sub-recipe is looked up as the job's user: Bob cannot reach Carol's recipe through run_recipe.
        wrapper = {
            "name": "Wrapper",
            "nodes": {
                "start": {"block": "chat_input", "config": {"fields": {"text": {"type": "text"}}}},
                "sub": {"block": "run_recipe", "config": {"recipe": "carols"}, "inputs": {"text": "start.text"}},
                "out": {"block": "recipe_output", "inputs": {"text": "sub.text"}},
            },
        }
        assert (await bob.post("/api/v1/recipes", json={**wrapper, "id": "daves"})).status_code == 201
        job = (await bob.post("/api/v1/jobs", json={"recipe": "daves", "inputs": {"text": "x"}})).json()
        result = await wait_result(bob, job["id"])
        assert result["state"] == "failed" and "not found" in result["error"]["message"]


async def test_tokens_are_issued_to_a_password_or_a_manage_all_token(server: Any, client: Any) -> None:
    await server.runtime.auth.create_user("erin", password="correct horse battery")
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        creds = base64.b64encode(b"erin:correct horse battery").decode()
        issued = await anonymous.post(
            "/api/v1/auth/token",
            json={"action": "exec", "subject": "Workflow", "expiresIn": 60_000, "recipes": ["greeting"]},
            headers={"Authorization": f"Basic {creds}"},
        )
        assert issued.status_code == 201, issued.text
        body = issued.json()
        assert body["scopes"] == [
            {"action": "exec", "subject": "Workflow", "conditions": {"id": {"$in": ["greeting"]}}}
        ]
        assert body["expiresAt"] - 60_000 <= body["expiresAt"]
        wrong = base64.b64encode(b"erin:wrong password").decode()
        refused = await anonymous.post("/api/v1/auth/token", json={}, headers={"Authorization": f"Basic {wrong}"})
        assert_error(refused, 401, "unauthorized")
        # An exec token cannot mint tokens (no widening); the admin's manage-all token can.
        narrow = await anonymous.post("/api/v1/auth/token", json={}, headers=_bearer(body["token"]))
        assert_error(narrow, 403, "forbidden")
    assert (await client.post("/api/v1/auth/token", json={"expiresIn": 1000})).status_code == 201
    too_long = await client.post("/api/v1/auth/token", json={"expiresIn": 10**13})
    assert_error(too_long, 422)


async def test_disabling_a_user_stops_their_tokens_and_others_cannot_revoke_them(server: Any) -> None:
    token = await server.token("frank", action="exec", subject="Workflow")
    async with await server.authed_client(token) as frank:
        token_id = (await frank.get("/api/v1/auth/me")).json()["tokenId"]
        async with await server.authed_client(await server.token("grace", action="manage", subject="all")) as grace:
            assert_error(await grace.delete(f"/api/v1/auth/tokens/{token_id}"), 404, "not_found")
        assert (await frank.get("/api/v1/jobs")).status_code == 200
        await server.runtime.auth.set_disabled("frank", True)
        assert_error(await frank.get("/api/v1/jobs"), 401, "unauthorized")


async def test_a_manage_token_limited_to_recipes_manages_only_those(server: Any, client: Any) -> None:
    token = await server.token("ivy", action="manage", subject="all")
    async with await server.authed_client(token) as ivy:
        for recipe_id in ("ivy-a", "ivy-b"):
            assert (await ivy.post("/api/v1/recipes", json={**ECHO, "id": recipe_id})).status_code == 201
    limited = await server.token("ivy", action="manage", subject="Workflow", recipes=["ivy-a"])
    async with await server.authed_client(limited) as ivy_a:
        assert (await ivy_a.put("/api/v1/recipes/ivy-a", json=ECHO)).status_code == 200
        assert_error(await ivy_a.put("/api/v1/recipes/ivy-b", json=ECHO), 403, "forbidden")
        assert_error(await ivy_a.delete("/api/v1/recipes/ivy-b"), 403, "forbidden")
        assert_error(await ivy_a.post("/api/v1/recipes", json={**ECHO, "id": "ivy-c"}), 403, "forbidden")
        ran = await ivy_a.post("/api/v1/jobs", json={"recipe": "ivy-b", "inputs": {"text": "x"}})
        assert_error(ran, 403, "forbidden")


async def test_admin_powers_need_an_unlimited_manage_all_token(server: Any, client: Any) -> None:
    async with await server.authed_client(await server.token("jack", action="manage", subject="all")) as jack:
        assert (await jack.post("/api/v1/recipes", json={**ECHO, "id": "jacks"})).status_code == 201
    assert (await client.get("/api/v1/recipes/jacks")).status_code == 200  # the admin's manage-all token
    exec_token = await server.token(action="exec", subject="Workflow")  # what an admin hands a client
    async with await server.authed_client(exec_token) as admin_exec:
        assert_error(await admin_exec.get("/api/v1/recipes/jacks"), 404, "not_found")
        assert "jacks" not in {r["id"] for r in (await admin_exec.get("/api/v1/recipes")).json()["items"]}


async def test_a_limited_token_cancels_only_jobs_of_its_recipes_and_revokes_only_itself(server: Any) -> None:
    async with await server.authed_client(await server.token("kim", action="manage", subject="all")) as kim:
        slow = {
            "name": "Slow",
            "nodes": {
                "start": {"block": "chat_input", "config": {"fields": {"text": {"type": "text"}}}},
                "wait": {"block": "delay", "config": {"seconds": 5}, "inputs": {"value": "start.text"}},
                "out": {"block": "recipe_output", "inputs": {"text": "start.text"}},
            },
        }
        created = await kim.post("/api/v1/recipes", json={**slow, "id": "kims-slow"})
        assert created.status_code == 201, created.text
        job = (await kim.post("/api/v1/jobs", json={"recipe": "kims-slow", "inputs": {"text": "x"}})).json()
        other_token = (await kim.get("/api/v1/auth/me")).json()["tokenId"]
        limited = await server.token("kim", action="exec", subject="Workflow", recipes=["greeting"])
        async with await server.authed_client(limited) as kim_greeting:
            assert_error(await kim_greeting.post(f"/api/v1/jobs/{job['id']}/cancel"), 403, "forbidden")
            assert_error(await kim_greeting.delete(f"/api/v1/auth/tokens/{other_token}"), 403, "forbidden")
        assert (await kim.post(f"/api/v1/jobs/{job['id']}/cancel")).status_code in (200, 202)


async def test_a_token_minted_by_a_token_dies_with_it(server: Any) -> None:
    parent = await server.token("lee", action="manage", subject="all", expires_in_ms=60_000)
    async with await server.authed_client(parent) as lee:
        minted = await lee.post("/api/v1/auth/token", json={"action": "exec", "expiresIn": 10**9})
        assert minted.status_code == 201, minted.text
        child = minted.json()
        parent_id = (await lee.get("/api/v1/auth/me")).json()["tokenId"]
        async with await server.authed_client(child["token"]) as lee_child:
            me = await lee_child.get("/api/v1/auth/me")
            assert me.status_code == 200
            parent_exp = jwt.decode(parent, options={"verify_signature": False})["exp"]
            assert child["expiresAt"] <= parent_exp * 1000  # asked for 11 days, lives no longer than its parent
            assert (await lee.delete(f"/api/v1/auth/tokens/{parent_id}")).status_code == 204
            assert_error(await lee_child.get("/api/v1/auth/me"), 401, "unauthorized")
