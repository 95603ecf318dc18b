"""`/api/v1/models*` on a real server (SQLite and PostgreSQL): Omni's wire shapes, branches, checksums, who may
change models, and Omni's error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema
import pytest
from tests.api.omni_support import SPEC
from tests.conftest import LiveServer

from conveyor.analytics.seed import DEMO_MODEL, demo_database_path

pytestmark = pytest.mark.timeout(90)

SMALL_VIEW = "table: orders\ndimensions:\n  order_id: {type: number}\nmeasures:\n  order_count: {aggregate: count}\n"
UNKNOWN = "8d0f7a3e-2a7c-4c3e-9f1e-1c2b3a4d5e6f"


def assert_shape(body: Any, schema_name: str) -> None:
    """`body` validates against the named schema of Omni's OpenAPI document, `$ref`s resolved."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": SPEC["components"]}
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER).validate(
        body
    )


def assert_omni_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"detail", "status"} and body["status"] == status, body
    assert isinstance(body["detail"], str) and body["detail"]
    return str(body["detail"])


@pytest.fixture
async def live(make_settings: Any) -> AsyncIterator[LiveServer]:
    async with LiveServer(make_settings()) as server:  # seeds the demo model
        yield server


@pytest.fixture
async def admin(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with await live.authed_client() as client:
        yield client


async def _demo(client: httpx.AsyncClient) -> dict[str, Any]:
    listing = (await client.get("/api/v1/models", params={"name": DEMO_MODEL})).json()
    (record,) = listing["records"]
    return dict(record)


async def test_list_models_in_omnis_shape_without_the_connection_target(
    live: LiveServer, admin: httpx.AsyncClient
) -> None:
    response = await admin.get("/api/v1/models", params={"include": "activeBranches"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert_shape(body, "ModelsListResponse")
    (record,) = body["records"]
    assert record["name"] == DEMO_MODEL and record["modelKind"] == "SHARED" and record["branches"] == []
    assert record["createdAt"].endswith("Z") and record["deletedAt"] is None
    assert body["pageInfo"] == {"hasNextPage": False, "nextCursor": None, "pageSize": 20, "totalRecords": 1}
    target = str(demo_database_path(live.settings.data_dir))
    assert target not in response.text and "demo.duckdb" not in response.text


async def test_create_models_and_branches_and_page_through_them(admin: httpx.AsyncClient) -> None:
    demo = await _demo(admin)
    made = await admin.post("/api/v1/models", json={"connectionId": demo["connectionId"], "modelName": "second"})
    assert made.status_code == 200, made.text
    created = made.json()
    assert created["success"] is True and created["model"]["modelKind"] == "SHARED"
    assert created["model"]["name"] == "second"
    branch = await admin.post(
        "/api/v1/models",
        json={"connectionId": demo["connectionId"], "modelKind": "BRANCH", "baseModelId": demo["id"],
              "modelName": "feature/x"},
    )  # fmt: skip
    assert branch.status_code == 200, branch.text
    assert branch.json()["model"]["modelKind"] == "BRANCH"
    assert_omni_error(
        await admin.post("/api/v1/models", json={"connectionId": demo["connectionId"], "modelName": "second"}), 409
    )

    first = (await admin.get("/api/v1/models", params={"pageSize": 2, "sortField": "name"})).json()
    assert [r["name"] for r in first["records"]] == [DEMO_MODEL, "feature/x"]
    assert first["pageInfo"]["hasNextPage"] and first["pageInfo"]["totalRecords"] == 3
    rest = (await admin.get("/api/v1/models", params={"pageSize": 2, "sortField": "name",
                                                      "cursor": first["pageInfo"]["nextCursor"]})).json()  # fmt: skip
    assert [r["name"] for r in rest["records"]] == ["second"] and rest["pageInfo"]["nextCursor"] is None
    branches = (await admin.get("/api/v1/models", params={"baseModelId": demo["id"]})).json()["records"]
    assert [(r["name"], r["baseModelId"]) for r in branches] == [("feature/x", demo["id"])]
    with_branches = await admin.get("/api/v1/models", params={"modelId": demo["id"], "include": "activeBranches"})
    assert with_branches.json()["records"][0]["branches"] == [{"id": branches[0]["id"], "name": "feature/x"}]


async def test_topics_in_omnis_shape(admin: httpx.AsyncClient) -> None:
    demo = await _demo(admin)
    listing = await admin.get(f"/api/v1/models/{demo['id']}/topic")
    assert listing.status_code == 200, listing.text
    assert_shape(listing.json(), "ModelsListTopicsResponse")
    names = [t["name"] for t in listing.json()["topics"]]
    assert {"sales", "customers"} <= set(names)
    topic = await admin.get(f"/api/v1/models/{demo['id']}/topic/sales")
    assert topic.status_code == 200, topic.text
    assert_shape(topic.json(), "ModelsGetTopicResponse")
    detail = topic.json()["topic"]
    assert detail["base_view_name"] == "orders" and detail["views"][0]["name"] == "orders"
    assert {r["join_to_view"] for r in detail["relationships"]} <= {v["name"] for v in detail["views"]}
    assert detail["ai_context"] and detail["sample_questions"]
    assert_omni_error(await admin.get(f"/api/v1/models/{demo['id']}/topic/nope"), 404)
    assert_omni_error(await admin.get(f"/api/v1/models/{UNKNOWN}/topic"), 404)
    assert "uuid" in assert_omni_error(await admin.get("/api/v1/models/not-a-uuid/topic"), 400).lower()
    assert_omni_error(await admin.get(f"/api/v1/models/{demo['id']}/topic", params={"branch_id": "x"}), 400)
    assert_omni_error(await admin.get(f"/api/v1/models/{demo['id']}/topic", params={"branch_id": UNKNOWN}), 404)


async def test_yaml_round_trip_with_checksums_and_branches(admin: httpx.AsyncClient) -> None:
    demo = await _demo(admin)
    url = f"/api/v1/models/{demo['id']}/yaml"
    got = await admin.get(url, params={"includeChecksums": "true"})
    assert got.status_code == 200, got.text
    assert_shape(got.json(), "ModelYamlResponse")
    files, sums, version = got.json()["files"], got.json()["checksums"], got.json()["version"]
    assert {"orders.view", "sales.topic"} <= set(files) and set(sums) == set(files)
    assert "checksums" not in (await admin.get(url)).json()
    one = (await admin.get(url, params={"fileName": "orders.view"})).json()
    assert one["files"] == {"orders.view": files["orders.view"]}
    assert_omni_error(await admin.get(url, params={"fileName": "nope.view"}), 404)

    edited = files["orders.view"] + "# edited\n"
    wrote = await admin.post(url, json={"fileName": "orders.view", "yaml": edited,
                                        "previousChecksum": sums["orders.view"]})  # fmt: skip
    assert wrote.status_code == 200, wrote.text
    assert_shape(wrote.json(), "ModelYamlResponse")
    assert wrote.json()["version"] == version + 1 and wrote.json()["files"]["orders.view"] == edited
    stale = await admin.post(
        url, json={"fileName": "orders.view", "yaml": edited, "previousChecksum": sums["orders.view"]}
    )
    assert_omni_error(stale, 409)

    made = await admin.post("/api/v1/models", json={"connectionId": demo["connectionId"], "modelKind": "BRANCH",
                                                     "baseModelId": demo["id"], "modelName": "wip"})  # fmt: skip
    branch_id = made.json()["model"]["id"]
    into_branch = await admin.post(url, json={"fileName": "extra.view", "yaml": SMALL_VIEW, "branchId": branch_id})
    assert into_branch.status_code == 200, into_branch.text
    assert "extra.view" in (await admin.get(url, params={"branchId": branch_id})).json()["files"]
    assert "extra.view" not in (await admin.get(url)).json()["files"]
    hidden = await admin.post(url, json={"fileName": "customers.topic", "yaml": "", "branchId": branch_id})
    assert hidden.status_code == 200 and "customers.topic" not in hidden.json()["files"]
    branch_topics = (await admin.get(f"/api/v1/models/{demo['id']}/topic", params={"branch_id": branch_id})).json()
    assert "customers" not in [t["name"] for t in branch_topics["topics"]]

    merged = await admin.post(f"/api/v1/models/{demo['id']}/branch/wip/merge", json={"delete_branch": True})
    assert merged.status_code == 200, merged.text
    assert_shape(merged.json(), "ModelsMergeBranchResponse")
    after = (await admin.get(url)).json()
    assert "extra.view" in after["files"] and "customers.topic" not in after["files"]
    assert after["version"] == version + 2
    assert_omni_error(await admin.get(url, params={"branchId": branch_id}), 404)
    assert_omni_error(await admin.post(f"/api/v1/models/{demo['id']}/branch/wip/merge"), 404)


async def test_delete_a_branch_with_a_slash_in_its_name(admin: httpx.AsyncClient) -> None:
    demo = await _demo(admin)
    body = {
        "connectionId": demo["connectionId"],
        "modelKind": "BRANCH",
        "baseModelId": demo["id"],
        "modelName": "feature/new",
    }
    made = await admin.post("/api/v1/models", json=body)
    assert made.status_code == 200, made.text
    deleted = await admin.delete(f"/api/v1/models/{demo['id']}/branch/feature/new")
    assert deleted.status_code == 200, deleted.text
    assert_shape(deleted.json(), "SuccessResponse")
    assert_omni_error(await admin.delete(f"/api/v1/models/{demo['id']}/branch/feature/new"), 404)
    assert_omni_error(await admin.delete(f"/api/v1/models/{UNKNOWN}/branch/feature/new"), 404)


async def test_validate_lists_structure_and_database_problems(admin: httpx.AsyncClient) -> None:
    demo = await _demo(admin)
    url = f"/api/v1/models/{demo['id']}/validate"
    clean = await admin.get(url)
    assert clean.status_code == 200, clean.text
    assert_shape(clean.json(), "ModelsValidateResponse")
    assert clean.json() == {"issues": [], "valid": True}
    made = await admin.post("/api/v1/models", json={"connectionId": demo["connectionId"], "modelKind": "BRANCH",
                                                     "baseModelId": demo["id"], "modelName": "broken"})  # fmt: skip
    branch_id = made.json()["model"]["id"]
    yaml_url = f"/api/v1/models/{demo['id']}/yaml"
    for name, text in (("ghost.view", "table: no_such_table\n"), ("odd.view", "dimensions:\n  x: {type: nope}\n")):
        assert (
            await admin.post(yaml_url, json={"fileName": name, "yaml": text, "branchId": branch_id})
        ).status_code == 200
    broken = await admin.get(url, params={"branchId": branch_id})
    assert_shape(broken.json(), "ModelsValidateResponse")
    assert broken.json()["valid"] is False
    assert {i["view"] for i in broken.json()["issues"]} == {"ghost", "odd"}
    assert len((await admin.get(url, params={"branchId": branch_id, "limit": 1})).json()["issues"]) == 1
    assert (await admin.get(url)).json()["valid"] is True  # the model itself is untouched


async def test_reading_needs_a_token_and_changing_needs_an_admin(live: LiveServer, admin: httpx.AsyncClient) -> None:
    demo = await _demo(admin)
    anonymous = httpx.AsyncClient(base_url=live.url, timeout=30)
    async with anonymous, await live.authed_client(await live.token("reader")) as reader:
        assert_omni_error(await anonymous.get("/api/v1/models"), 401)
        assert_omni_error(await anonymous.get(f"/api/v1/models/{demo['id']}/topic"), 401)
        assert (await reader.get("/api/v1/models")).status_code == 200
        assert (await reader.get(f"/api/v1/models/{demo['id']}/topic/sales")).status_code == 200
        await _refused_writes(reader, demo)

    auth = live.runtime.auth
    member = await auth.create_user("member", org="acme")
    org_key = (await auth.keys.create(member, "org", "omni")).key
    async with await live.authed_client(org_key) as org:
        assert (await org.get("/api/v1/models")).status_code == 200
        await _refused_writes(org, demo)
    admin_row = await auth.get_user(live.settings.auth.admin_name)
    exec_token = await auth.issue_token(admin_row, [_scope("exec", "Workflow")], 60_000)
    async with await live.authed_client(exec_token.token) as narrow:  # an admin's exec token is not enough
        await _refused_writes(narrow, demo)


def _scope(action: str, subject: str) -> Any:
    from conveyor.auth.tokens import make_scope

    return make_scope(action, subject)


async def _refused_writes(client: httpx.AsyncClient, demo: dict[str, Any]) -> None:
    model = demo["id"]
    writes = [
        client.post("/api/v1/models", json={"connectionId": demo["connectionId"], "modelName": "x"}),
        client.post(f"/api/v1/models/{model}/yaml", json={"fileName": "x.view", "yaml": SMALL_VIEW}),
        client.delete(f"/api/v1/models/{model}/branch/b"),
        client.post(f"/api/v1/models/{model}/branch/b/merge"),
    ]
    for write in writes:
        assert_omni_error(await write, 403)


@pytest.mark.parametrize(
    "body",
    [
        {"yaml": "a: 1"},  # no fileName
        {"fileName": "x.view"},  # no yaml
        {"fileName": "x.view", "yaml": "a: 1", "surprise": 1},  # Omni's body takes no other fields
        {"fileName": "x.yaml", "yaml": "a: 1"},  # not a model file name
        {"fileName": "x.view", "yaml": "a: [1"},  # not YAML
        {"fileName": "x.view", "yaml": "a: 1", "branchId": "nope"},
        {"fileName": "x.view", "yaml": "a: 1", "mode": "staged"},
    ],
)
async def test_bad_yaml_writes_are_400(admin: httpx.AsyncClient, body: dict[str, Any]) -> None:
    demo = await _demo(admin)
    assert_omni_error(await admin.post(f"/api/v1/models/{demo['id']}/yaml", json=body), 400)


@pytest.mark.parametrize(
    "body",
    [
        {"modelName": "x"},  # no connectionId
        {"connectionId": "not-a-uuid", "modelName": "x"},
        {"connectionId": "CONNECTION", "modelKind": "SCHEMA", "modelName": "x"},
        {"connectionId": "CONNECTION"},  # no name
        {"connectionId": "CONNECTION", "modelKind": "BRANCH", "modelName": "b"},  # no base model
        {"connectionId": "CONNECTION", "modelKind": "BRANCH", "baseModelId": "BASE", "modelName": "../bad\n"},
    ],
)
async def test_bad_model_creations_are_400(admin: httpx.AsyncClient, body: dict[str, Any]) -> None:
    demo = await _demo(admin)
    filled = {k: v.replace("CONNECTION", demo["connectionId"]).replace("BASE", demo["id"]) for k, v in body.items()}
    assert_omni_error(await admin.post("/api/v1/models", json=filled), 400)


async def test_unknown_connection_and_base_model_are_404(admin: httpx.AsyncClient) -> None:
    demo = await _demo(admin)
    assert_omni_error(await admin.post("/api/v1/models", json={"connectionId": UNKNOWN, "modelName": "x"}), 404)
    body = {"connectionId": demo["connectionId"], "modelKind": "BRANCH", "baseModelId": UNKNOWN, "modelName": "b"}
    assert_omni_error(await admin.post("/api/v1/models", json=body), 404)


async def test_every_error_on_these_paths_has_omnis_shape(make_settings: Any) -> None:
    settings = make_settings(limits={"max_body_bytes": 4096}, seed_demo=False)
    async with LiveServer(settings) as server, await server.authed_client() as client:
        assert_omni_error(await client.get(f"/api/v1/models/{UNKNOWN}/nothing-here"), 404)
        assert_omni_error(await client.put("/api/v1/models"), 405)
        too_big = await client.post(f"/api/v1/models/{UNKNOWN}/yaml", json={"fileName": "a.view", "yaml": "x" * 8000})
        assert_omni_error(too_big, 413)
        assert_omni_error(await client.get("/api/v1/models", params={"pageSize": 0}), 400)
        assert_omni_error(await client.get("/api/v1/models", params={"sortField": "nope"}), 400)
        assert_omni_error(await client.get("/api/v1/models", params={"cursor": "x"}), 400)
        assert_omni_error(await client.get("/api/v1/models", params={"modelId": "x"}), 400)
        assert (await client.get("/api/v1/models")).json()["records"] == []  # nothing seeded


async def test_access_grants_are_refused_not_ignored(admin: httpx.AsyncClient) -> None:
    demo = await _demo(admin)
    body = {"connectionId": demo["connectionId"], "modelName": "granted",
            "accessGrants": [{"userId": UNKNOWN, "accessLevel": "VIEWER"}]}  # fmt: skip
    answer = await admin.post("/api/v1/models", json=body)
    assert_omni_error(answer, 400)
    assert "accessGrants is not supported" in answer.json()["detail"]
    names = [m["name"] for m in (await admin.get("/api/v1/models")).json()["records"]]
    assert "granted" not in names  # nothing was made
