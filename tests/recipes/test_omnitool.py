"""Importing Omnitool recipe JSON (`conveyor.recipes.omnitool`): recipe files shaped like Omnitool's templates,
run on the real engine and through a real server (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
from tests.api.shapes import assert_error
from tests.api.test_jobs import wait_result

from conveyor.blocks import default_registry
from conveyor.blocks.base import BlockRegistry
from conveyor.engine.runner import Engine
from conveyor.recipes.graph import compile_recipe
from conveyor.recipes.omnitool import (
    OmnitoolImportError,
    export_omnitool,
    import_omnitool,
    is_omnitool_recipe,
    read_omnitool,
)
from conveyor.settings import LimitsSettings

RECIPES = Path(__file__).resolve().parent / "omnitool"
GREETING_ID = "6f1c2a4e-0b7d-4a51-9d3e-2c8f00a1b001"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RECIPES / f"{name}.json").read_text(encoding="utf-8"))
    return data


@pytest.fixture
def registry() -> BlockRegistry:
    return default_registry()


async def run(doc: dict[str, Any], registry: BlockRegistry, inputs: dict[str, Any]) -> dict[str, Any]:
    """Runs an imported recipe on the real engine (no files or outbound HTTP: the recipes here need none)."""
    engine = Engine(files=None, http=None, limits=LimitsSettings(block_timeout_s=5))  # type: ignore[arg-type]
    return await engine.run(compile_recipe(doc, registry), inputs, job_id="omnitool-test")


def wiring(doc: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (node_id, port, ref) for node_id, spec in doc["nodes"].items() for port, ref in spec.get("inputs", {}).items()
    }


def omnitool_connections(doc: dict[str, Any]) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """Every connection of an Omnitool recipe as listed at its input end, and as listed at its output end."""
    nodes = doc["rete"]["nodes"]
    by_input = {
        (c["node"], c["output"], node["id"], port)
        for node in nodes.values()
        for port, entry in node["inputs"].items()
        for c in entry["connections"]
    }
    by_output = {
        (node["id"], port, c["node"], c["input"])
        for node in nodes.values()
        for port, entry in node["outputs"].items()
        for c in entry["connections"]
    }
    return by_input, by_output


# ------------------------------------------------------------------------------------------------------ detection


def test_omnitool_documents_are_told_apart_from_native_ones() -> None:
    for path in RECIPES.glob("*.json"):
        assert is_omnitool_recipe(json.loads(path.read_text(encoding="utf-8"))), path.name
    native = {"name": "Greeting", "nodes": {"start": {"block": "chat_input"}}}
    others: list[Any] = [native, [], None, "rete", {"meta": {}}]
    for other in others:
        assert not is_omnitool_recipe(other)


# -------------------------------------------------------------------------------------------------------- import


def test_import_keeps_the_recipe_id_name_meta_and_each_node(registry: BlockRegistry) -> None:
    original = load("greeting")
    doc = import_omnitool(original, registry)
    assert doc["id"] == GREETING_ID and doc["name"] == "Greeting Card"
    assert doc["description"] == "Greets whoever is named, with the topic of the day."
    kept = doc["meta"]["x-omnitool"]
    assert kept["meta"] == original["meta"] and kept["rete"] == {"id": "mercs@0.1.1"}
    assert kept["extra"]["_flags"] == ["owner"] and kept["extra"]["api"] == {"fields": {}}
    template = doc["nodes"]["7"]
    assert template["block"] == "multi_text_replace" and template["title"] == "Greeting template"
    assert template["config"] == {"template": "Hello, {INPUT:Name}! Today: {input:Topic}."}
    assert template["inputs"] == {"name": "1.text", "topic": "7-topic.text"}
    node = template["meta"]["x-omnitool"]
    raw = original["rete"]["nodes"]["7"]
    assert (node["id"], node["name"], node["data"], node["position"]) == (7, raw["name"], raw["data"], raw["position"])
    assert node["inputs"]["name"] == [{"node": 1, "output": "text", "data": {}}]
    assert node["outputs"]["text"] == [
        {"node": 9, "input": "text", "data": {}},
        {"node": 100, "input": "text", "data": {}},
    ]
    # Omnitool's unconnected `topic` value lives in data; a constant node now feeds it.
    assert doc["nodes"]["7-topic"]["block"] == "input_text"
    assert doc["nodes"]["7-topic"]["config"] == {"text": "jsonata"}
    assert doc["nodes"]["7-topic"]["meta"]["x-omnitool"]["helper"] == {"of": 7, "input": "topic"}
    assert doc["nodes"]["1"]["config"]["fields"]["text"]["default"] == "Ada"
    assert doc["nodes"]["2686"]["block"] == "recipe_metadata"
    assert doc["nodes"]["2686"]["config"]["tags"] == ["#text", "#beginner"]
    assert doc["nodes"]["100"]["block"] == "chat_output" and doc["nodes"]["100"]["inputs"] == {"text": "7.text"}


@pytest.mark.parametrize(
    ("name", "allow_missing", "inputs", "outputs"),
    [
        ("greeting", False, {"text": "Bob"}, {"text": "Hello, Bob! Today: jsonata."}),
        ("greeting", False, {}, {"text": "Hello, Ada! Today: jsonata."}),
        (
            "branches",
            False,
            {"text": "abcdefghij"},
            {"text": "3", "objects": {"count": "3", "first": "abcd", "masked": "*bcd*fgh*j"}},
        ),
        ("disabled", False, {"text": "hi"}, {"objects": "Shout: hi"}),
        ("unknown", True, {"text": "a,b"}, {"text": "Prompt: a,b"}),
    ],
)
async def test_imported_recipes_run_on_the_engine(
    registry: BlockRegistry, name: str, allow_missing: bool, inputs: dict[str, Any], outputs: dict[str, Any]
) -> None:
    doc = import_omnitool(load(name), registry, allow_missing=allow_missing)
    assert await run(doc, registry, inputs) == outputs


def test_omnitool_disabled_nodes_are_imported_disabled(registry: BlockRegistry) -> None:
    imported = read_omnitool(load("disabled"), registry)
    doc = imported.doc
    assert doc["nodes"]["3"]["block"] == "text_replace" and doc["nodes"]["3"]["enabled"] is False
    # A disabled node of an unknown block never runs in Omnitool either: a placeholder and a warning, not an error.
    # A disabled language-model node is imported disabled, its data-held instruction's helper too.
    assert doc["nodes"]["5"]["block"] == "llm_chat" and doc["nodes"]["5"]["enabled"] is False
    assert doc["nodes"]["5-instruction"]["enabled"] is False
    assert imported.warnings == []


def test_unknown_blocks_and_unmappable_data_are_all_listed(registry: BlockRegistry) -> None:
    with pytest.raises(OmnitoolImportError) as info:
        import_omnitool(load("unknown"), registry)
    error = info.value
    assert error.status == 422 and error.code == "omnitool_invalid"
    assert "3 problems" in error.message and "allow_missing" in error.message
    found = {(d["node"], d["name"], d["code"]) for d in error.details}
    assert found == {
        ("2", "omnitool.number_input", "unsupported_data"),
        ("3", "omni-core-replicate:run.stability-ai/sdxl", "unknown_block"),
        ("4", "omnitool.text_splitter", "unsupported_data"),
    }
    messages = {d["node"]: d["message"] for d in error.details}
    assert "timestamp" in messages["2"] and "delimiter" in messages["4"]


async def test_language_model_blocks_run_on_the_configured_model(registry: BlockRegistry) -> None:
    """openai.simpleChatGPT and omnitool.large_language_model become llm_chat nodes: instruction as the system
    message, prompt as the user message, Omnitool's model and temperature kept."""
    from tests.llm.scripted_openai import ScriptedOpenAI, completion

    from conveyor.llm import LanguageModels
    from conveyor.net import GuardedClient
    from conveyor.settings import LlmSettings, NetSettings

    doc = import_omnitool(load("llm"), registry)
    assert (doc["nodes"]["7"]["block"], doc["nodes"]["8"]["block"]) == ("llm_chat", "llm_chat")
    async with ScriptedOpenAI() as scripted, GuardedClient(NetSettings(allow_cidrs=["127.0.0.0/8"])) as http:
        scripted.script(completion("Light scatters."), completion("Scattering."))
        llm = LanguageModels(LlmSettings(provider="openai", base_url=scripted.base_url, model="default-model"), http)
        engine = Engine(files=None, http=http, limits=LimitsSettings(block_timeout_s=5), llm=llm)  # type: ignore[arg-type]
        outputs = await engine.run(compile_recipe(doc, registry), {"text": "why?"}, job_id="omnitool-llm")
        first, second = scripted.bodies()
    assert outputs == {"text": "Scattering.", "objects": "Q: why?"}
    assert first["messages"] == [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "why?"}]
    assert (first["model"], first["temperature"]) == ("gpt-3.5-turbo", 0.7)
    assert second["messages"] == [
        {"role": "system", "content": "Summarise."},
        {"role": "user", "content": "Light scatters."},
    ]
    assert second["model"] == "default-model" and "temperature" not in second


def test_allow_missing_imports_them_disabled_and_warns(registry: BlockRegistry) -> None:
    imported = read_omnitool(load("unknown"), registry, allow_missing=True)
    nodes = imported.doc["nodes"]
    for node_id, name in (("2", "omnitool.number_input"), ("3", "omni-core-replicate:run.stability-ai/sdxl")):
        assert nodes[node_id]["block"] == "missing_block" and nodes[node_id]["enabled"] is False
        assert nodes[node_id]["config"]["block"] == name
    assert nodes["3"]["inputs"] == {"prompt": "7.text", "seed": "2.number"}
    assert nodes["3"]["config"]["outputs"] == ["images"]
    assert nodes["6"]["inputs"]["images"] == "3.images"
    assert {w["node"] for w in imported.warnings} == {"2", "3", "4"}


def test_a_recipe_without_recipe_output_returns_what_chat_output_shows(registry: BlockRegistry) -> None:
    imported = read_omnitool(load("llm"), registry, allow_missing=True)
    output = imported.doc["nodes"]["output"]
    assert output["block"] == "recipe_output" and output["inputs"] == {"text": "100.text", "objects": "100.object"}
    assert any(w["code"] == "added_node" and w["node"] is None for w in imported.warnings)


async def test_without_recipe_output_every_chat_output_is_returned(registry: BlockRegistry) -> None:
    doc = load("greeting")
    nodes = doc["rete"]["nodes"]
    del nodes["9"]  # the Recipe Output; node 7's text now feeds two chat messages
    second = json.loads(json.dumps(nodes["100"]))
    second["id"] = 101
    nodes["101"] = second
    nodes["7"]["outputs"]["text"]["connections"] = [
        {"node": 100, "input": "text", "data": {}},
        {"node": 101, "input": "text", "data": {}},
    ]
    imported = read_omnitool(doc, registry)
    output = imported.doc["nodes"]["output"]
    assert output["inputs"] == {"text": "100.text", "text_101": "101.text"}
    outputs = await run(imported.doc, registry, {"text": "Ada"})
    assert set(outputs) == {"text", "text_101"} and outputs["text"] == outputs["text_101"]


def test_a_recipe_without_chat_input_gets_a_start_node(registry: BlockRegistry) -> None:
    recipe = load("documents")
    del recipe["rete"]["nodes"]["1"]
    node = recipe["rete"]["nodes"]["2"]
    node["inputs"]["text"]["connections"] = []
    node["data"]["text"] = '{"name": "Ada", "age": 36}'
    imported = read_omnitool(recipe, registry)
    assert imported.doc["nodes"]["start"]["block"] == "chat_input"
    assert imported.doc["nodes"]["2"]["inputs"] == {"text": "2-text.text"}  # the data value, as a constant


def test_import_export_import_is_the_identity(registry: BlockRegistry) -> None:
    for path in sorted(RECIPES.glob("*.json")):
        original = json.loads(path.read_text(encoding="utf-8"))
        first = import_omnitool(original, registry, allow_missing=True)
        exported = export_omnitool(first)
        second = import_omnitool(exported, registry, allow_missing=True)
        assert second == first, path.name
        assert exported["id"] == original["id"] and exported["meta"] == original["meta"], path.name
        assert exported["rete"]["nodes"].keys() == original["rete"]["nodes"].keys(), path.name
        for key, node in original["rete"]["nodes"].items():
            again = exported["rete"]["nodes"][key]
            assert (again["id"], again["name"], again["data"]) == (node["id"], node["name"], node["data"]), key
            assert again["position"] == node["position"] and again["inputs"] == node["inputs"], key
            assert again["outputs"] == node["outputs"], (path.name, key)
        assert omnitool_connections(exported) == omnitool_connections(original), path.name


# ------------------------------------------------------------------------------------------------ malformed input


def _connected_to_missing_node() -> dict[str, Any]:
    recipe = load("greeting")
    recipe["rete"]["nodes"]["9"]["inputs"]["text"]["connections"].append({"node": 404, "output": "text", "data": {}})
    return recipe


def _connected_to_a_port_that_is_not_there() -> dict[str, Any]:
    recipe = load("greeting")
    recipe["rete"]["nodes"]["7"]["inputs"]["name"]["connections"] = [{"node": 1, "output": "txt", "data": {}}]
    return recipe


def _id_not_its_key() -> dict[str, Any]:
    recipe = load("greeting")
    recipe["rete"]["nodes"]["7"]["id"] = 8
    return recipe


def _bad_connection() -> dict[str, Any]:
    recipe = load("greeting")
    recipe["rete"]["nodes"]["7"]["inputs"]["name"]["connections"] = ["1.text"]
    return recipe


def _bad_recipe_id() -> dict[str, Any]:
    return load("greeting") | {"id": "not a valid id!"}


MALFORMED: list[tuple[Any, str]] = [
    ([], "not list"),
    ("text", "not str"),
    (None, "not null"),
    ({"id": "x", "meta": {"name": "No graph"}}, "`rete` is missing"),
    ({"rete": {"id": "mercs@0.1.1"}}, "`rete.nodes` is missing"),
    ({"rete": {"nodes": []}}, "`rete.nodes` is missing or not an object"),
    ({"rete": {"nodes": {"1": "chat_input"}}}, "node '1' is not an object"),
    (_connected_to_missing_node(), "input 'text' is connected to node 404, which the recipe does not have"),
    (_connected_to_a_port_that_is_not_there(), "output 'txt' of node 1 (omnitool.chat_input), which has no such"),
    (_id_not_its_key(), "node '7' must have `id` 7"),
    (_bad_connection(), "input 'name' has a connection that is not {node, output}"),
    (_bad_recipe_id(), "recipe id 'not a valid id!' is not 1-64 letters"),
]


@pytest.mark.parametrize(("doc", "message"), MALFORMED)
def test_malformed_documents_are_refused_with_a_clear_message(registry: BlockRegistry, doc: Any, message: str) -> None:
    with pytest.raises(OmnitoolImportError) as info:
        import_omnitool(doc, registry, allow_missing=True)  # allow_missing never excuses a malformed document
    assert info.value.status == 422
    assert any(message in detail["message"] for detail in info.value.details), info.value.details


def test_too_many_nodes_is_refused_before_any_work(registry: BlockRegistry) -> None:
    recipe = load("branches")
    with pytest.raises(OmnitoolImportError) as info:
        import_omnitool(recipe, registry, max_nodes=3)
    assert [d["code"] for d in info.value.details] == ["too_many_nodes"]


def test_type_problems_of_the_mapped_recipe_name_the_omnitool_node(registry: BlockRegistry) -> None:
    recipe = load("images")
    node = recipe["rete"]["nodes"]["2"]  # prepare_image's Source fed by text instead of images
    node["inputs"]["Source"]["connections"] = [{"node": 1, "output": "text", "data": {}}]
    chat = recipe["rete"]["nodes"]["1"]
    chat["outputs"]["images"]["connections"] = []
    chat["outputs"]["text"]["connections"] = [{"node": 2, "input": "Source", "data": {}}]
    with pytest.raises(OmnitoolImportError) as info:
        import_omnitool(recipe, registry)
    assert [(d["node"], d["name"], d["code"]) for d in info.value.details] == [
        ("2", "omnitool.prepare_image", "type_mismatch")
    ]


# ------------------------------------------------------------------------------------------- through a real server


async def import_over_http(client: Any, name: str, **params: Any) -> Any:
    return await client.post("/api/v1/recipes/import", json=load(name), params=params)


async def run_job(client: Any, recipe: str, inputs: dict[str, Any]) -> dict[str, Any]:
    job = await client.post("/api/v1/jobs", json={"recipe": recipe, "inputs": inputs})
    assert job.status_code in (201, 202), job.text
    result = await wait_result(client, job.json()["id"])
    assert result["state"] == "succeeded", result
    outputs: dict[str, Any] = result["outputs"]
    return outputs


async def test_import_over_http_then_run_a_job(client: Any) -> None:
    response = await import_over_http(client, "greeting")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"] == GREETING_ID and body["name"] == "Greeting Card" and body["revision"] == 1
    assert body["warnings"] == []
    assert await run_job(client, GREETING_ID, {"text": "Grace"}) == {"text": "Hello, Grace! Today: jsonata."}
    again = await import_over_http(client, "greeting")
    assert "PUT /api/v1/recipes/" in assert_error(again, 409, "conflict")["error"]["message"]
    sub = await import_over_http(client, "subrecipe")
    assert sub.status_code == 201, sub.text
    assert await run_job(client, sub.json()["id"], {"text": "Bob"}) == {"text": "Hello, Bob! Today: jsonata."}


async def test_unknown_blocks_over_http_422_then_allow_missing(client: Any) -> None:
    before = (await client.get("/api/v1/recipes")).json()["total"]
    refused = assert_error(await import_over_http(client, "unknown"), 422, "omnitool_invalid")
    assert {(d["node"], d["name"]) for d in refused["error"]["details"]} == {
        ("2", "omnitool.number_input"),
        ("3", "omni-core-replicate:run.stability-ai/sdxl"),
        ("4", "omnitool.text_splitter"),
    }
    assert (await client.get("/api/v1/recipes")).json()["total"] == before
    for name in ("allowMissing", "allow_missing"):
        params = {name: "true"}
        recipe = load("unknown") | {"id": f"poster-{name}"}
        response = await client.post("/api/v1/recipes/import", json=recipe, params=params)
        assert response.status_code == 201, response.text
        assert {w["node"] for w in response.json()["warnings"]} == {"2", "3", "4"}
        assert await run_job(client, response.json()["id"], {"text": "x,y"}) == {"text": "Prompt: x,y"}


@pytest.mark.parametrize(("doc", "message"), MALFORMED[:8])
async def test_malformed_documents_over_http_store_nothing(client: Any, doc: Any, message: str) -> None:
    before = (await client.get("/api/v1/recipes")).json()["total"]
    response = await client.post(
        "/api/v1/recipes/import",
        content=json.dumps(doc),
        params={"allowMissing": "true"},
        headers={"Content-Type": "application/json"},
    )
    body = assert_error(response, 422, "omnitool_invalid")
    assert any(message in detail["message"] for detail in body["error"]["details"])
    assert (await client.get("/api/v1/recipes")).json()["total"] == before


async def test_documents_recipe_runs_end_to_end_with_files(client: Any) -> None:
    response = await import_over_http(client, "documents")
    assert response.status_code == 201, response.text
    outputs = await run_job(client, response.json()["id"], {"text": '{"name": "Ada", "age": 36}'})
    assert outputs["text"] == "Ada is 36 years old."
    assert outputs["objects"] == {"kind": {"kind": "person"}, "score": 3, "ok": True}
    [document] = outputs["documents"]
    assert document["name"] == "Person_card.txt" and document["mime"] == "text/plain"
    content = await client.get(f"/api/v1/files/{document['fid']}")
    assert content.status_code == 200 and content.text == "Ada is 36 years old."


async def test_images_recipe_runs_end_to_end(client: Any) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), "blue").save(buffer, format="PNG")
    picture = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    response = await import_over_http(client, "images")
    assert response.status_code == 201, response.text
    outputs = await run_job(client, response.json()["id"], {"images": [picture]})
    assert outputs["objects"] == {"width": 150, "height": 150}
    [thumbnail] = outputs["images"]
    assert thumbnail["mime"] == "image/jpeg"
    content = await client.get(f"/api/v1/files/{thumbnail['fid']}")
    with Image.open(io.BytesIO(content.content)) as image:
        assert image.size == (150, 150)


async def test_export_over_http_in_both_formats(client: Any) -> None:
    original = load("branches")
    assert (await client.post("/api/v1/recipes/import", json=original)).status_code == 201
    exported = await client.get(f"/api/v1/recipes/{original['id']}/export", params={"format": "omnitool"})
    assert exported.status_code == 200, exported.text
    omnitool = exported.json()
    assert omnitool["id"] == original["id"] and omnitool["meta"] == original["meta"]
    assert omnitool["rete"] == original["rete"]  # stored and read back, every node is still the one imported
    native = (await client.get(f"/api/v1/recipes/{original['id']}/export")).json()
    assert native["id"] == original["id"] and native["nodes"]["3-text"]["block"] == "text_template"
    assert native == (await client.get(f"/api/v1/recipes/{original['id']}/export", params={"format": "native"})).json()
    # The Omnitool export imports again as the same recipe (under another id here, the first one being taken).
    copied = copy.deepcopy(omnitool) | {"id": "branches-copy"}
    again = await client.post("/api/v1/recipes/import", json=copied)
    assert again.status_code == 201, again.text
    native_copy = (await client.get("/api/v1/recipes/branches-copy/export")).json()
    assert wiring(native_copy) == wiring(native) and native_copy["nodes"] == native["nodes"]
    assert_error(await client.get("/api/v1/recipes/greeting/export", params={"format": "omnitool"}), 422)
    assert_error(await client.get(f"/api/v1/recipes/{original['id']}/export", params={"format": "xml"}), 422)
    assert_error(await client.get("/api/v1/recipes/nope/export"), 404, "not_found")
