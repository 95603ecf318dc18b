"""API keys on a real server: shown once, hashed at rest, checksum refusal, the three kinds, revocation, limits."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import Any

import httpx
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
SLOW = {
    "name": "Slow",
    "nodes": {
        "start": {"block": "chat_input", "config": {"fields": {"text": {"type": "text", "required": True}}}},
        "wait": {"block": "delay", "config": {"seconds": 30}, "inputs": {"value": "start.text"}},
        "out": {"block": "recipe_output", "inputs": {"text": "wait.value"}},
    },
}


async def _recipe(client: Any, recipe_id: str, body: dict[str, Any] = ECHO) -> str:
    response = await client.post("/api/v1/recipes", json={**body, "id": recipe_id})
    assert response.status_code == 201, response.text
    return recipe_id


async def _key(client: Any, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/keys", json={"name": "test", **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _keyed(server: Any, key: str, *, bare: bool = False) -> httpx.AsyncClient:
    header = key if bare else f"Bearer {key}"
    return httpx.AsyncClient(base_url=server.url, headers={"Authorization": header}, timeout=30.0)


async def _user(server: Any, name: str, org: str | None = None) -> str:
    """A user (in `org`), and a `manage all` JWT of theirs."""
    await server.runtime.auth.create_user(name, org=org)
    return str(await server.token(name))


def _one_char_off(key: str) -> str:
    position = len(key) - 10
    return key[:position] + ("A" if key[position] != "A" else "B") + key[position + 1 :]


async def test_the_key_is_shown_once_and_stored_only_hashed(
    server: Any, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await _key(client, kind="personal", name="ci")
    key, secret = created["key"], created["webhookSecret"]
    assert key.startswith("cvy_pat_") and secret.startswith("whsec_")
    assert created["prefix"] == key[:14] and created["kind"] == "personal" and created["name"] == "ci"
    assert created["createdAt"] and created["recipe"] is None
    async with _keyed(server, key) as keyed:
        assert (await keyed.get("/api/v1/auth/me")).json()["name"] == server.settings.auth.admin_name
    listed = (await client.get("/api/v1/keys")).json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == created["id"]
    assert key not in str(listed) and secret not in str(listed)
    assert set(listed["items"][0]) >= {"id", "kind", "name", "prefix", "createdAt", "lastUsedAt", "revokedAt"}
    assert "key" not in listed["items"][0] and "webhookSecret" not in listed["items"][0]
    assert listed["items"][0]["lastUsedAt"] is not None  # the request above was recorded
    rows = await server.runtime.db.fetch_all("SELECT * FROM api_keys")
    assert rows[0]["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in str(rows) and key[14:] not in str(rows)
    assert key not in caplog.text
    if server.runtime.db.dialect == "sqlite":
        await server.runtime.db.fetch_all("PRAGMA wal_checkpoint")
        data = Path(server.settings.data_dir)
        for path in data.glob("conveyor.db*"):
            assert key.encode() not in path.read_bytes(), path


async def test_bare_and_bearer_headers_both_work_and_jwts_still_do(server: Any, client: Any) -> None:
    key = (await _key(client, kind="personal"))["key"]
    for bare in (False, True):
        async with _keyed(server, key, bare=bare) as keyed:
            me = await keyed.get("/api/v1/auth/me")
            assert me.status_code == 200, me.text
            assert me.json()["scopes"] == [{"action": "manage", "subject": "all", "conditions": {}}]
    assert (await client.get("/api/v1/auth/me")).status_code == 200


async def test_a_one_character_change_is_refused_before_the_database_is_asked(server: Any, client: Any) -> None:
    created = await _key(client, kind="personal")
    mistyped = _one_char_off(created["key"])
    async with _keyed(server, mistyped) as keyed:
        assert "checksum" in assert_error(await keyed.get("/api/v1/auth/me"), 401, "unauthorized")["error"]["message"]
    # Even when the database holds the mistyped key's hash, the checksum refuses it: no look-up decided that.
    await server.runtime.db.execute(
        "UPDATE api_keys SET key_hash = $2 WHERE id = $1", created["id"], hashlib.sha256(mistyped.encode()).hexdigest()
    )
    async with _keyed(server, mistyped) as keyed:
        assert_error(await keyed.get("/api/v1/auth/me"), 401, "unauthorized")
    async with _keyed(server, "cvy_pat_short") as keyed:
        assert_error(await keyed.get("/api/v1/auth/me"), 401, "unauthorized")


async def test_an_org_key_acts_for_users_of_its_organization_only(server: Any) -> None:
    alice = await _user(server, "alice", org="acme")
    await _user(server, "bob", org="acme")
    await _user(server, "carol", org="globex")
    bob_id = (await server.runtime.auth.get_user("bob"))["id"]
    async with await server.authed_client(alice) as as_alice:
        await _recipe(as_alice, "echo-acme")
        created = await _key(as_alice, kind="org")
    assert created["key"].startswith("cvy_org_") and created["orgId"]
    async with _keyed(server, created["key"]) as keyed:
        me = (await keyed.get("/api/v1/auth/me")).json()
        assert me["name"] == "alice"
        as_bob = (await keyed.get("/api/v1/auth/me", params={"userId": bob_id})).json()
        assert as_bob["name"] == "bob" and as_bob["isAdmin"] is False
        by_name = (await keyed.get("/api/v1/auth/me", params={"userId": "bob"})).json()
        assert by_name["userId"] == bob_id
        # The key acting for bob runs what bob sees: alice's own recipe is not among it.
        job = await keyed.post("/api/v1/jobs", params={"userId": bob_id}, json={"recipe": "echo-acme", "inputs": {}})
        assert_error(job, 404, "not_found")
        for outsider in ("carol", "nobody-at-all"):
            refused = await keyed.get("/api/v1/jobs", params={"userId": outsider})
            body = assert_error(refused, 403, "forbidden")
            assert "not in this key's organization" in body["error"]["message"]
        # An org key may not manage keys: it runs recipes for its users.
        assert_error(await keyed.post("/api/v1/keys", json={"kind": "personal", "name": "x"}), 403, "forbidden")


async def test_jobs_submitted_with_an_org_key_for_a_user_land_on_that_user(server: Any, client: Any) -> None:
    alice = await _user(server, "alice", org="acme")
    bob = await _user(server, "bob", org="acme")
    bob_id = (await server.runtime.auth.get_user("bob"))["id"]
    async with await server.authed_client(bob) as as_bob:
        await _recipe(as_bob, "bobs-echo")
        async with await server.authed_client(alice) as as_alice:
            key = (await _key(as_alice, kind="org"))["key"]
        async with _keyed(server, key) as keyed:
            submitted = await keyed.post(
                "/api/v1/jobs", params={"userId": bob_id}, json={"recipe": "bobs-echo", "inputs": {"text": "hi"}}
            )
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["id"]
            # alice (the key's creator) does not see bob's recipe, so the key acting as her cannot run it.
            assert_error(
                await keyed.post("/api/v1/jobs", json={"recipe": "bobs-echo", "inputs": {"text": "hi"}}),
                404,
                "not_found",
            )
        result = await wait_result(as_bob, job_id)
        assert result["outputs"] == {"text": "hi"}
        row = await server.runtime.db.fetch_one("SELECT user_id, api_key_id FROM jobs WHERE id = $1", job_id)
        assert row["user_id"] == bob_id and row["api_key_id"]


async def test_an_org_key_needs_an_organization(client: Any) -> None:
    assert_error(await client.post("/api/v1/keys", json={"kind": "org", "name": "x"}), 422, "validation_error")


async def test_personal_and_recipe_keys_and_tokens_refuse_another_user_id(server: Any, client: Any) -> None:
    """Only org keys act for others; any credential may name its own user (Omni's clients always send userId)."""
    await _recipe(client, "echo")
    await _user(server, "dave")
    dave_id = (await server.runtime.auth.get_user("dave"))["id"]
    admin = await server.runtime.auth.get_user("admin")
    for body in ({"kind": "personal"}, {"kind": "recipe", "recipe": "echo"}):
        key = (await _key(client, **body))["key"]
        async with _keyed(server, key) as keyed:
            assert_error(await keyed.get("/api/v1/jobs", params={"userId": dave_id}), 403, "forbidden")
            for own in (admin["id"], admin["name"]):
                assert (await keyed.get("/api/v1/jobs", params={"userId": own})).status_code == 200
    assert_error(await client.get("/api/v1/jobs", params={"userId": dave_id}), 403, "forbidden")  # a JWT
    assert (await client.get("/api/v1/jobs", params={"userId": admin["id"]})).status_code == 200


async def test_a_recipe_key_runs_its_recipe_and_no_other(server: Any, client: Any) -> None:
    a, b = await _recipe(client, "recipe-a"), await _recipe(client, "recipe-b")
    created = await _key(client, kind="recipe", recipe=a)
    assert created["recipe"] == a and created["key"].startswith("cvy_rcp_")
    async with _keyed(server, created["key"]) as keyed:
        ok = await keyed.post("/api/v1/jobs", json={"recipe": a, "inputs": {"text": "hi"}})
        assert ok.status_code == 202, ok.text
        assert (await wait_result(keyed, ok.json()["id"]))["outputs"] == {"text": "hi"}
        assert_error(await keyed.post("/api/v1/jobs", json={"recipe": b, "inputs": {"text": "hi"}}), 403, "forbidden")
        assert_error(await keyed.put(f"/api/v1/recipes/{a}", json=ECHO), 403, "forbidden")
        assert_error(await keyed.get("/api/v1/keys"), 403, "forbidden")
        assert_error(await keyed.post("/api/v1/auth/token", json={}), 403, "forbidden")


async def test_a_recipe_key_needs_a_recipe_its_user_sees(server: Any, client: Any) -> None:
    await _recipe(client, "admins-own")
    erin = await _user(server, "erin")
    async with await server.authed_client(erin) as as_erin:
        assert_error(await as_erin.post("/api/v1/keys", json={"kind": "recipe", "name": "x"}), 422)
        missing = await as_erin.post("/api/v1/keys", json={"kind": "recipe", "name": "x", "recipe": "admins-own"})
        assert_error(missing, 404, "not_found")
        assert_error(
            await as_erin.post("/api/v1/keys", json={"kind": "personal", "name": "x", "recipe": "admins-own"}), 422
        )


async def test_creating_keys_needs_an_unlimited_manage_all_token(server: Any, client: Any) -> None:
    exec_token = await server.token(action="exec", subject="Workflow")
    async with await server.authed_client(exec_token) as narrow:
        assert_error(await narrow.post("/api/v1/keys", json={"kind": "personal", "name": "x"}), 403, "forbidden")
    pat = (await _key(client, kind="personal"))["key"]
    async with _keyed(server, pat) as keyed:
        made = await keyed.post("/api/v1/keys", json={"kind": "personal", "name": "from a PAT"})
        assert made.status_code == 201, made.text
    bad = await client.post("/api/v1/keys", json={"kind": "root", "name": "x"})
    assert_error(bad, 422, "validation_error")


async def test_revocation_acts_at_once_and_only_the_owner_may_revoke(server: Any, client: Any) -> None:
    created = await _key(client, kind="personal")
    frank = await _user(server, "frank")
    async with _keyed(server, created["key"]) as keyed:
        for _ in range(3):  # warm the authentication cache
            assert (await keyed.get("/api/v1/jobs")).status_code == 200
        async with await server.authed_client(frank) as as_frank:
            assert_error(await as_frank.delete(f"/api/v1/keys/{created['id']}"), 404, "not_found")
            assert (await as_frank.get("/api/v1/keys")).json()["items"] == []
        assert (await keyed.get("/api/v1/jobs")).status_code == 200
        assert (await client.delete(f"/api/v1/keys/{created['id']}")).status_code == 204
        assert_error(await keyed.get("/api/v1/jobs"), 401, "unauthorized")
    listed = (await client.get("/api/v1/keys")).json()["items"]
    assert listed[0]["revokedAt"] is not None
    assert_error(await client.delete("/api/v1/keys/no-such-key"), 404, "not_found")


async def test_revocation_by_another_process_acts_at_once(server: Any, client: Any, make_settings: Any) -> None:
    """The database changed under the server (as the CLI or another server does): its cache must not hide it."""
    from conveyor.runtime import open_runtime

    created = await _key(client, kind="personal")
    async with _keyed(server, created["key"]) as keyed:
        assert (await keyed.get("/api/v1/jobs")).status_code == 200
        async with open_runtime(make_settings(), run_executor=False) as other:
            await other.auth.keys.revoke(created["id"], user_id=None)
        assert_error(await keyed.get("/api/v1/jobs"), 401, "unauthorized")


async def test_the_rate_limit_answers_429_with_retry_after_and_spares_other_keys(server: Any, client: Any) -> None:
    limited = (await _key(client, kind="personal", rateLimitPerMin=3))["key"]
    other = (await _key(client, kind="personal"))["key"]
    async with _keyed(server, limited) as keyed, _keyed(server, other) as unlimited:
        for _ in range(3):
            assert (await keyed.get("/api/v1/jobs")).status_code == 200
        refused = await keyed.get("/api/v1/jobs")
        assert_error(refused, 429, "rate_limited")
        assert 1 <= int(refused.headers["retry-after"]) <= 20
        for _ in range(5):
            assert (await unlimited.get("/api/v1/jobs")).status_code == 200
        assert (await client.get("/api/v1/jobs")).status_code == 200  # JWTs are not keys' buckets either


async def test_the_concurrent_jobs_cap_answers_429(server: Any, client: Any) -> None:
    await _recipe(client, "slow", SLOW)
    key = (await _key(client, kind="personal", maxConcurrentJobs=1))["key"]
    async with _keyed(server, key) as keyed:
        first = await keyed.post("/api/v1/jobs", json={"recipe": "slow", "inputs": {"text": "a"}})
        assert first.status_code == 202, first.text
        second = await keyed.post("/api/v1/jobs", json={"recipe": "slow", "inputs": {"text": "b"}})
        assert_error(second, 429, "rate_limited")
        assert second.headers["retry-after"] == "1"
        other = await client.post("/api/v1/jobs", json={"recipe": "slow", "inputs": {"text": "c"}})
        assert other.status_code == 202  # the admin's JWT is not held by the key's cap
        for job in (first.json(), other.json()):
            assert (await client.post(f"/api/v1/jobs/{job['id']}/cancel")).status_code in (200, 202)
        for _ in range(200):  # the cancelled job frees its place
            again = await keyed.post("/api/v1/jobs", json={"recipe": "slow", "inputs": {"text": "d"}})
            if again.status_code != 429:
                break
            await asyncio.sleep(0.05)
        assert again.status_code == 202, again.text
        assert (await client.post(f"/api/v1/jobs/{again.json()['id']}/cancel")).status_code in (200, 202)


async def test_concurrent_submits_cannot_pass_the_cap_together(server: Any, client: Any) -> None:
    """The cap is counted in the insert itself: 12 submits at once with room for 3 start exactly 3."""
    await _recipe(client, "slow", SLOW)
    key = (await _key(client, kind="personal", maxConcurrentJobs=3))["key"]
    async with _keyed(server, key) as keyed:
        answers = await asyncio.gather(
            *(keyed.post("/api/v1/jobs", json={"recipe": "slow", "inputs": {"text": str(i)}}) for i in range(12))
        )
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [202] * 3 + [429] * 9, statuses
        for answer in answers:
            if answer.status_code == 202:
                assert (await client.post(f"/api/v1/jobs/{answer.json()['id']}/cancel")).status_code in (200, 202)


async def test_rotating_the_webhook_secret_keeps_the_old_one_signing_for_a_while(server: Any, client: Any) -> None:
    created = await _key(client, kind="personal")
    rotated = await client.post(f"/api/v1/keys/{created['id']}/rotate-webhook-secret")
    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    assert body["webhookSecret"].startswith("whsec_") and body["webhookSecret"] != created["webhookSecret"]
    assert body["previousValidUntil"]
    secrets = await server.runtime.auth.keys.signing_secrets(created["id"])
    assert secrets == [body["webhookSecret"], created["webhookSecret"]]
    listed = (await client.get("/api/v1/keys")).json()
    assert body["webhookSecret"] not in str(listed)
    assert_error(await client.post("/api/v1/keys/nope/rotate-webhook-secret"), 404, "not_found")


async def test_disabling_the_owner_stops_their_keys(server: Any) -> None:
    gina = await _user(server, "gina", org="acme")
    async with await server.authed_client(gina) as as_gina:
        key = (await _key(as_gina, kind="org"))["key"]
    async with _keyed(server, key) as keyed:
        assert (await keyed.get("/api/v1/jobs")).status_code == 200
        await server.runtime.auth.set_disabled("gina", True)
        assert_error(await keyed.get("/api/v1/jobs"), 401, "unauthorized")
