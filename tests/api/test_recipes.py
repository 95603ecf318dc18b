"""Native recipe routes on a real server (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any

import yaml
from tests.api.shapes import assert_error

GREETING_YAML = """
name: Greeting
nodes:
  start: {block: chat_input, config: {fields: {text: {type: text, required: true}}}}
  greet: {block: text_template, config: {template: "Hello, {{ text }}!"}, inputs: {text: start.text}}
  out:   {block: recipe_output, inputs: {text: greet.text}}
"""


async def test_create_yaml_read_revise_and_list(client: Any) -> None:
    created = await client.post("/api/v1/recipes", content=GREETING_YAML, headers={"Content-Type": "application/yaml"})
    assert created.status_code == 201, created.text
    recipe = created.json()
    assert recipe["name"] == "Greeting" and recipe["revision"] == 1
    read = (await client.get(f"/api/v1/recipes/{recipe['id']}")).json()
    assert read["inputs"]["text"]["type"] == "text" and read["outputs"] == {"text": "text"}
    assert read["recipe"]["nodes"]["greet"]["config"]["template"] == "Hello, {{ text }}!"
    changed = yaml.safe_load(GREETING_YAML)
    changed["nodes"]["greet"]["config"]["template"] = "Hi, {{ text }}."
    revised = await client.put(f"/api/v1/recipes/{recipe['id']}", json=changed)
    assert revised.status_code == 200 and revised.json()["revision"] == 2
    revisions = (await client.get(f"/api/v1/recipes/{recipe['id']}/revisions")).json()
    assert [r["revision"] for r in revisions["items"]] == [2, 1]
    listed = (await client.get("/api/v1/recipes", params={"name": "Greeting"})).json()
    assert recipe["id"] in [item["id"] for item in listed["items"]]


async def test_jobs_pin_the_revision_they_were_submitted_against(client: Any) -> None:
    recipe = (
        await client.post("/api/v1/recipes", content=GREETING_YAML, headers={"Content-Type": "application/yaml"})
    ).json()
    changed = yaml.safe_load(GREETING_YAML)
    changed["nodes"]["greet"]["config"]["template"] = "Bye, {{ text }}."
    await client.put(f"/api/v1/recipes/{recipe['id']}", json=changed)
    old = (
        await client.post("/api/v1/jobs", json={"recipe": recipe["id"], "inputs": {"text": "a"}, "revision": 1})
    ).json()
    new = (await client.post("/api/v1/jobs", json={"recipe": recipe["id"], "inputs": {"text": "a"}})).json()
    assert old["revision"] == 1 and new["revision"] == 2
    from tests.api.test_jobs import wait_result

    assert (await wait_result(client, old["id"]))["outputs"] == {"text": "Hello, a!"}
    assert (await wait_result(client, new["id"]))["outputs"] == {"text": "Bye, a."}


async def test_invalid_recipe_lists_all_four_problems_and_saves_nothing(client: Any) -> None:
    recipe = {
        "name": "Broken",
        "nodes": {
            "start": {
                "block": "chat_input",
                "config": {"fields": {"text": {"type": "text"}, "images": {"type": "images"}}},
            },
            "a": {"block": "text_template", "config": {"template": "{{ x }}"}, "inputs": {"x": "b.text"}},
            "b": {"block": "text_template", "config": {"template": "{{ y }}"}, "inputs": {"y": "a.text"}},
            "mystery": {"block": "no_such_block"},
            "bad_type": {"block": "text_replace", "config": {"find": "a"}, "inputs": {"text": "start.images"}},
            "lonely": {"block": "text_splitter"},
            "out": {"block": "recipe_output", "inputs": {"text": "a.text"}},
        },
    }
    before = (await client.get("/api/v1/recipes")).json()["total"]
    response = await client.post("/api/v1/recipes", json=recipe)
    body = assert_error(response, 422, "recipe_invalid")
    found = {(p["node"], p["code"]) for p in body["error"]["details"]}
    assert {("mystery", "unknown_block"), ("bad_type", "type_mismatch"), ("lonely", "missing_input")} <= found
    assert any(code == "cycle" for _, code in found)
    assert (await client.get("/api/v1/recipes")).json()["total"] == before
    validated = await client.post("/api/v1/recipes/validate", json=recipe)
    assert_error(validated, 422, "recipe_invalid")


async def test_validate_answers_the_contract(client: Any) -> None:
    response = await client.post(
        "/api/v1/recipes/validate", content=GREETING_YAML, headers={"Content-Type": "application/yaml"}
    )
    assert response.status_code == 200
    assert response.json() == {
        "valid": True,
        "name": "Greeting",
        "inputs": {"text": {"type": "text", "required": True, "description": ""}},
        "outputs": {"text": "text"},
    }


async def test_delete_hides_the_recipe_but_keeps_its_jobs(client: Any) -> None:
    recipe = (
        await client.post("/api/v1/recipes", content=GREETING_YAML, headers={"Content-Type": "application/yaml"})
    ).json()
    job = (await client.post("/api/v1/jobs", json={"recipe": recipe["id"], "inputs": {"text": "z"}})).json()
    from tests.api.test_jobs import wait_result

    await wait_result(client, job["id"])
    assert (await client.delete(f"/api/v1/recipes/{recipe['id']}")).status_code == 204
    assert_error(await client.get(f"/api/v1/recipes/{recipe['id']}"), 404, "not_found")
    assert_error(await client.delete(f"/api/v1/recipes/{recipe['id']}"), 404, "not_found")
    assert (await client.get(f"/api/v1/jobs/{job['id']}/result")).json()["outputs"] == {"text": "Hello, z!"}


async def test_demo_recipes_are_seeded(client: Any) -> None:
    names = {item["name"] for item in (await client.get("/api/v1/recipes", params={"limit": 100})).json()["items"]}
    assert {"Greeting", "Image to WebP", "JSON reshape", "Two branches"} <= names


async def test_pagination_walks_every_recipe_once(client: Any) -> None:
    for i in range(5):
        doc = yaml.safe_load(GREETING_YAML) | {"name": f"page-{i}"}
        assert (await client.post("/api/v1/recipes", json=doc)).status_code == 201
    seen: list[str] = []
    cursor = None
    for _ in range(20):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        body = (await client.get("/api/v1/recipes", params=params)).json()
        seen.extend(item["id"] for item in body["items"])
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == body["total"]
    assert_error(await client.get("/api/v1/recipes", params={"cursor": "!!garbage"}), 400, "bad_request")


async def test_yaml_aliases_are_refused(client: Any) -> None:
    bomb = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    bomb += [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]" for i in range(7)]
    response = await client.post(
        "/api/v1/recipes", content="\n".join(bomb), headers={"Content-Type": "application/yaml"}
    )
    assert "aliases" in assert_error(response, 400, "bad_request")["error"]["message"]


async def test_yaml_values_json_cannot_hold_are_refused(client: Any) -> None:
    for extra in ("description: !!binary aGVsbG8=", "meta: {tags: !!set {a, b}}", "meta: {at: !!timestamp 2020-01-01}"):
        response = await client.post(
            "/api/v1/recipes", content=GREETING_YAML + extra, headers={"Content-Type": "application/yaml"}
        )
        assert "plain JSON" in assert_error(response, 400, "bad_request")["error"]["message"], extra


async def test_yaml_dates_are_saved_as_strings(client: Any) -> None:
    response = await client.post(
        "/api/v1/recipes",
        content=GREETING_YAML + "meta: {since: 2020-01-01}",
        headers={"Content-Type": "application/yaml"},
    )
    assert response.status_code == 201, response.text
    read = (await client.get(f"/api/v1/recipes/{response.json()['id']}")).json()
    assert read["recipe"]["meta"] == {"since": "2020-01-01"}


async def test_deeply_nested_bodies_are_refused(client: Any) -> None:
    for content_type in ("application/json", "application/yaml", "text/plain"):
        response = await client.post("/api/v1/recipes", content="[" * 50_000, headers={"Content-Type": content_type})
        assert "nests too deeply" in assert_error(response, 400, "bad_request")["error"]["message"], content_type
    # Deep enough to parse but not to store (orjson writes at most 255 levels): refused before saving.
    nested = '{"name": "Deep", "meta": {"x": ' + "[" * 300 + "]" * 300 + "}}"
    response = await client.post("/api/v1/recipes", content=nested, headers={"Content-Type": "application/json"})
    assert "nests too deeply" in assert_error(response, 400, "bad_request")["error"]["message"]


async def test_concurrent_revisions_each_report_their_own_number(client: Any) -> None:
    recipe = (
        await client.post("/api/v1/recipes", content=GREETING_YAML, headers={"Content-Type": "application/yaml"})
    ).json()
    doc = yaml.safe_load(GREETING_YAML)

    async def revise(i: int) -> Any:
        return await client.put(f"/api/v1/recipes/{recipe['id']}", json=doc | {"description": f"v{i}"})

    responses = await asyncio.gather(*(revise(i) for i in range(30)))
    assert [r.status_code for r in responses] == [200] * 30, [r.text for r in responses if r.status_code != 200]
    assert sorted(r.json()["revision"] for r in responses) == list(range(2, 32))
    revisions = (await client.get(f"/api/v1/recipes/{recipe['id']}/revisions")).json()
    assert [r["revision"] for r in revisions["items"]] == list(range(31, 0, -1))


async def test_concurrent_creates_with_one_id_make_one_recipe(client: Any) -> None:
    doc = yaml.safe_load(GREETING_YAML) | {"id": "only-one"}
    responses = await asyncio.gather(*(client.post("/api/v1/recipes", json=doc) for _ in range(20)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19, [r.text for r in responses if r.status_code not in (201, 409)]
    for response in responses:
        if response.status_code == 409:
            assert "PUT /api/v1/recipes/only-one" in assert_error(response, 409, "conflict")["error"]["message"]
    assert (await client.get("/api/v1/recipes/only-one/revisions")).json()["items"][0]["revision"] == 1
