"""Writing recipes as Omnitool JSON (`conveyor.recipes.omnitool_export`): unchanged nodes as read, the rest from
their blocks, and every node without an Omnitool form reported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conveyor.blocks import default_registry
from conveyor.engine.runner import Engine
from conveyor.errors import RecipeInvalidError
from conveyor.recipes.graph import compile_recipe
from conveyor.recipes.omnitool import OmnitoolExportError, export_omnitool, import_omnitool
from conveyor.settings import LimitsSettings

RECIPES = Path(__file__).resolve().parent / "omnitool"


def imported(name: str) -> dict[str, Any]:
    doc = json.loads((RECIPES / f"{name}.json").read_text(encoding="utf-8"))
    return import_omnitool(doc, default_registry(), allow_missing=True)


async def run(doc: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    registry = default_registry()
    engine = Engine(files=None, http=None, limits=LimitsSettings(block_timeout_s=5))  # type: ignore[arg-type]
    return await engine.run(compile_recipe(doc, registry), inputs, job_id="export-test")


def links(doc: dict[str, Any]) -> set[tuple[int, str, int, str]]:
    """Connections as listed at their input ends, checked to be listed the same at their output ends."""
    nodes = doc["rete"]["nodes"]
    by_input = {
        (c["node"], c["output"], n["id"], port)
        for n in nodes.values()
        for port, entry in n["inputs"].items()
        for c in entry["connections"]
    }
    by_output = {
        (n["id"], port, c["node"], c["input"])
        for n in nodes.values()
        for port, entry in n["outputs"].items()
        for c in entry["connections"]
    }
    assert by_input == by_output
    return by_input


def test_unchanged_nodes_are_written_as_they_were_read() -> None:
    original = json.loads((RECIPES / "greeting.json").read_text(encoding="utf-8"))
    exported = export_omnitool(imported("greeting"))
    assert exported["rete"] == original["rete"]
    assert {k: exported[k] for k in ("id", "meta", "api", "ui", "blockIds", "_flags")} == {
        k: original[k] for k in ("id", "meta", "api", "ui", "blockIds", "_flags")
    }


def test_a_changed_node_is_written_from_its_configuration() -> None:
    doc = imported("branches")
    doc["nodes"]["4"]["config"]["expression"] = "$[1]"
    doc["nodes"]["2"]["config"]["chunk_size"] = 2
    doc["nodes"]["5"]["enabled"] = False
    exported = export_omnitool(doc)
    nodes = exported["rete"]["nodes"]
    assert nodes["4"]["name"] == "omnitool.jsonata" and nodes["4"]["data"]["transform"] == "$[1]"
    assert nodes["4"]["position"] == [100.0, -50.0]
    assert nodes["2"]["data"]["chunkSize"] == 2 and nodes["5"]["data"]["xOmniEnabled"] is False
    assert links(exported) == links(export_omnitool(imported("branches")))
    again = import_omnitool(exported, default_registry())
    assert again["nodes"]["4"]["config"]["expression"] == "$[1]" and again["nodes"]["5"]["enabled"] is False
    assert again["nodes"]["6"]["inputs"] == doc["nodes"]["6"]["inputs"]


def test_a_changed_constant_goes_back_into_its_nodes_data() -> None:
    doc = imported("greeting")
    doc["nodes"]["7-topic"]["config"]["text"] = "exports"
    exported = export_omnitool(doc)
    assert exported["rete"]["nodes"]["7"]["data"]["topic"] == "exports"
    assert "7-topic" not in exported["rete"]["nodes"]
    assert import_omnitool(exported, default_registry())["nodes"]["7-topic"]["config"] == {"text": "exports"}


def test_a_removed_node_and_its_connections_are_gone() -> None:
    doc = imported("greeting")
    del doc["nodes"]["100"]
    exported = export_omnitool(doc)
    assert "100" not in exported["rete"]["nodes"]
    assert all(100 not in (a, b) for a, _, b, _ in links(exported))
    assert [c["node"] for c in exported["rete"]["nodes"]["7"]["outputs"]["text"]["connections"]] == [9]


def test_a_renamed_recipe_is_renamed_in_meta() -> None:
    doc = imported("greeting") | {"name": "Hello Card", "description": "New words."}
    meta = export_omnitool(doc)["meta"]
    assert (meta["name"], meta["description"]) == ("Hello Card", "New words.")
    assert meta["tags"] == ["#text", "#beginner"]


async def test_a_native_recipe_is_written_from_its_blocks_and_imports_back() -> None:
    native = {
        "id": "native-card",
        "name": "Native card",
        "nodes": {
            "start": {"block": "chat_input", "config": {"fields": {"text": {"type": "text", "default": "you"}}}},
            "greet": {
                "block": "multi_text_replace",
                "config": {"template": "Hi {INPUT:Name}!"},
                "inputs": {"name": "start.text"},
            },
            "3": {"block": "jsonata", "config": {"expression": "$uppercase($)"}, "inputs": {"json": "greet.text"}},
            "out": {"block": "recipe_output", "inputs": {"text": "greet.text", "objects": "3.result"}},
        },
    }
    exported = export_omnitool(native)
    nodes = exported["rete"]["nodes"]
    assert exported["id"] == "native-card" and exported["meta"]["name"] == "Native card"
    assert exported["blockIds"] == sorted({node["name"] for node in nodes.values()})
    by_name = {node["name"]: node for node in nodes.values()}
    assert set(by_name) == {
        "omnitool.chat_input",
        "omnitool.multi_text_replace",
        "omnitool.jsonata",
        "omnitool.recipe_output",
    }
    assert nodes["3"]["name"] == "omnitool.jsonata"  # a numeric native id is kept as the Omnitool id
    assert by_name["omnitool.multi_text_replace"]["data"]["source"] == "Hi {INPUT:Name}!"
    assert by_name["omnitool.chat_input"]["data"]["text"] == "you"
    jsonata_id, output_id = nodes["3"]["id"], by_name["omnitool.recipe_output"]["id"]
    assert (jsonata_id, "object", output_id, "objects") in links(exported)
    back = import_omnitool(exported, default_registry())
    assert (
        await run(back, {"text": "Ada"})
        == await run(native, {"text": "Ada"})
        == {
            "text": "Hi Ada!",
            "objects": "HI ADA!",
        }
    )


def test_nodes_without_an_omnitool_form_are_all_listed() -> None:
    native = {
        "name": "Templates",
        "nodes": {
            "start": {"block": "chat_input", "config": {"fields": {"topic": {"type": "text"}}}},
            "t": {"block": "text_template", "config": {"template": "{{ topic }}"}, "inputs": {"topic": "start.topic"}},
            "h": {"block": "http_request", "config": {"url": "https://example.org"}},
            "d": {"block": "write_document", "config": {"mime": "text/html"}, "inputs": {"text": "t.text"}},
            "out": {"block": "recipe_output", "inputs": {"text": "t.text"}},
        },
    }
    with pytest.raises(OmnitoolExportError) as info:
        export_omnitool(native)
    assert info.value.status == 422 and info.value.code == "omnitool_unexportable"
    found = {(d["node"], d["name"]) for d in info.value.details}
    assert {("start", "chat_input"), ("t", "text_template"), ("h", "http_request"), ("d", "write_document")} <= found


def test_a_changed_helper_that_makes_an_output_cannot_be_written_back() -> None:
    doc = imported("branches")
    doc["nodes"]["3-text"]["config"]["template"] = "{{ value }} chunks"
    with pytest.raises(OmnitoolExportError) as info:
        export_omnitool(doc)
    assert [(d["node"], d["name"]) for d in info.value.details] == [("3-text", "text_template")]


def test_placeholders_of_missing_blocks_are_written_back_as_the_original_block() -> None:
    doc = imported("unknown")
    doc["nodes"]["3"]["enabled"] = True  # changed: written from the placeholder, keeping the stored data
    exported = export_omnitool(doc)
    node = exported["rete"]["nodes"]["3"]
    assert node["name"] == "omni-core-replicate:run.stability-ai/sdxl" and node["data"]["xOmniEnabled"] is True
    assert node["data"]["seed"] == 0 and node["inputs"]["seed"]["connections"][0]["node"] == 2


def test_a_document_that_is_not_a_recipe_is_refused() -> None:
    with pytest.raises(RecipeInvalidError):
        export_omnitool({"nodes": "none"})


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"find": "World", "replace": "there", "count": 1}, "World"),
        ({"find": "o", "replace": "0", "regex": True}, "/o/g"),
        ({"find": "(?m)^x", "replace": "-", "regex": True, "ignore_case": True}, "/^x/gim"),
        ({"find": "o", "replace": "0", "regex": True, "count": 1, "ignore_case": True}, "/o/i"),
        ({"find": "World", "replace": "there"}, None),  # every occurrence of a text: Omnitool replaces the first
        ({"find": "o", "replace": "0", "regex": True, "count": 1}, None),  # Omnitool reads no flags as `g`
        ({"find": "a/b", "replace": "c", "regex": True}, None),
        ({"find": "x", "replace": " padded ", "count": 1}, None),
    ],
)
def test_text_replace_is_written_back_when_omnitool_can_say_it(config: dict[str, Any], match: str | None) -> None:
    native = {
        "name": "Replace",
        "nodes": {
            "start": {"block": "chat_input"},
            "r": {"block": "text_replace", "config": config, "inputs": {"text": "start.text"}},
            "out": {"block": "recipe_output", "inputs": {"text": "r.text"}},
        },
    }
    if match is None:
        with pytest.raises(OmnitoolExportError) as info:
            export_omnitool(native)
        assert [d["node"] for d in info.value.details] == ["r"]
        return
    exported = export_omnitool(native)
    [node] = [n for n in exported["rete"]["nodes"].values() if n["name"] == "omnitool.text_replace"]
    assert node["data"]["match"] == match and node["data"]["replace"] == config["replace"]
    back = import_omnitool(exported, default_registry())
    [again] = [n for n in back["nodes"].values() if n["block"] == "text_replace"]
    assert again["config"] == config


# ---------------------------------------------------------------------------------------------- language models

ASK_TEXT = {"start": {"block": "chat_input", "config": {"fields": {"text": {"type": "text"}}}}}


def chat_recipe(config: dict[str, Any], inputs: dict[str, str] | None = None, json_out: bool = False) -> dict[str, Any]:
    """chat_input.text → an llm_chat node `ask` (prompt `{{ prompt }}` unless set) → recipe_output."""
    outputs = {"text": "ask.text"} | ({"objects": "ask.json"} if json_out else {})
    return {
        "name": "Ask",
        "nodes": ASK_TEXT
        | {
            "ask": {"block": "llm_chat", "config": config, "inputs": inputs or {"prompt": "start.text"}},
            "out": {"block": "recipe_output", "inputs": outputs},
        },
    }


def chat_node(exported: dict[str, Any]) -> dict[str, Any]:
    [node] = [
        n for n in exported["rete"]["nodes"].values() if n["name"] != "omnitool.chat_input" and "Chat" in n["name"]
    ]
    return node


def test_llm_chat_without_json_is_written_as_simple_chat_gpt_and_imports_back() -> None:
    native = chat_recipe({"system": "Answer briefly.", "model": "gpt-4o", "temperature": 0.4})
    exported = export_omnitool(native)
    node = chat_node(exported)
    assert node["name"] == "openai.simpleChatGPT"
    assert node["data"] == {"instruction": "Answer briefly.", "prompt": "", "model": "gpt-4o", "temperature": 0.4}
    assert set(node["inputs"]) == {"instruction", "prompt", "model", "temperature"} and set(node["outputs"]) == {"text"}
    start = next(n["id"] for n in exported["rete"]["nodes"].values() if n["name"] == "omnitool.chat_input")
    assert node["inputs"]["prompt"]["connections"] == [{"node": start, "output": "text", "data": {}}]
    back = import_omnitool(exported, default_registry())
    [ask] = [spec for spec in back["nodes"].values() if spec["block"] == "llm_chat"]
    assert ask["config"] == {
        "system": "{{ instruction | default('') }}",
        "prompt": "{{ prompt | default('') }}",
        "model": "gpt-4o",
        "temperature": 0.4,
    }
    helper = back["nodes"][ask["inputs"]["instruction"].split(".")[0]]
    assert helper["config"] == {"text": "Answer briefly."}
    assert export_omnitool(back)["rete"] == exported["rete"]  # unchanged since the import: written as read


def test_json_mode_and_a_token_limit_need_advanced_chat_gpt() -> None:
    native = chat_recipe(
        {"prompt": "{{ question }}", "json_schema": {"type": "object"}}, {"question": "start.text"}, True
    )
    node = chat_node(export_omnitool(native))
    assert node["name"] == "openai.advancedChatGPT"
    assert node["data"] == {"instruction": "", "prompt": "", "json_mode": True}
    assert node["inputs"]["prompt"]["connections"][0]["output"] == "text"
    assert {port for port, entry in node["outputs"].items() if entry["connections"]} == {"answer_text", "answer_json"}
    back = import_omnitool(export_omnitool(native), default_registry())
    [ask] = [spec for spec in back["nodes"].values() if spec["block"] == "llm_chat"]
    assert ask["config"]["json_schema"] == {"type": "object"}
    assert ask["inputs"] == {"prompt": "1.text"}  # no instruction: no system message
    limited = chat_node(export_omnitool(chat_recipe({"system": "x", "max_tokens": 64})))
    assert limited["name"] == "openai.advancedChatGPT" and limited["data"]["max_tokens"] == 64
    assert limited["data"]["json_mode"] is False


@pytest.mark.parametrize(
    ("config", "inputs", "says"),
    [
        ({"provider": "local"}, None, "local provider"),
        ({"json_schema": {"type": "object", "required": ["a"]}}, None, "JSON schema"),
        ({"prompt": "Q: {{ prompt }}"}, None, "neither plain text nor one variable"),
        ({"system": "{{ prompt }}"}, None, "both the system message and the prompt"),
    ],
)
def test_llm_chat_config_without_an_omnitool_form_is_an_export_problem(
    config: dict[str, Any], inputs: dict[str, str] | None, says: str
) -> None:
    with pytest.raises(OmnitoolExportError) as info:
        export_omnitool(chat_recipe(config, inputs))
    [problem] = info.value.details
    assert (problem["node"], problem["name"], problem["code"]) == ("ask", "llm_chat", "no_omnitool_form")
    assert says in problem["message"]


def test_the_openai_provider_is_written_as_omnitools_openai_block() -> None:
    node = chat_node(export_omnitool(chat_recipe({"provider": "openai", "system": "{{ prompt }}", "prompt": ""})))
    assert node["name"] == "openai.simpleChatGPT" and node["data"] == {"instruction": "", "prompt": ""}
    assert [c["output"] for c in node["inputs"]["instruction"]["connections"]] == ["text"]


def test_changed_imported_chat_nodes_keep_their_block_while_it_fits() -> None:
    doc = imported("llm")
    doc["nodes"]["7"]["config"]["model"] = "gpt-4o"
    del doc["nodes"]["7"]["config"]["temperature"]  # a value the import kept in data is gone too
    doc["nodes"]["8"]["config"]["temperature"] = 0.9
    doc["nodes"]["8-Instruction"]["config"]["text"] = "Summarise in one line."
    nodes = export_omnitool(doc)["rete"]["nodes"]
    assert nodes["7"]["name"] == "openai.simpleChatGPT"
    assert nodes["7"]["data"] == {
        "instruction": "Answer briefly.",
        "model": "gpt-4o",
        "prompt": "",
        "xOmniEnabled": True,
    }
    assert nodes["8"]["name"] == "omnitool.large_language_model"
    assert nodes["8"]["data"] == {
        "Criteria": "creative",
        "Instruction": "Summarise in one line.",
        "Prompt": "",
        "xOmniEnabled": True,
    }
    assert nodes["8"]["inputs"]["Prompt"]["connections"] == [{"node": 7, "output": "text", "data": {}}]
    assert nodes["100"]["inputs"]["text"]["connections"] == [{"node": 8, "output": "Reply", "data": {}}]
    doc["nodes"]["8"]["config"]["model"] = "gpt-4o"  # large_language_model has no model: an OpenAI block now
    node = export_omnitool(doc)["rete"]["nodes"]["8"]
    assert node["name"] == "openai.simpleChatGPT" and node["data"]["instruction"] == "Summarise in one line."
    assert "Instruction" not in node["data"] and node["data"]["temperature"] == 0.9


async def test_an_exported_llm_chat_asks_the_model_as_the_native_node_did() -> None:
    """Native → Omnitool → native: the same request reaches the (scripted) model, and the same outputs come out."""
    from tests.llm.scripted_openai import ScriptedOpenAI, completion

    from conveyor.llm import LanguageModels
    from conveyor.net import GuardedClient
    from conveyor.settings import LlmSettings, NetSettings

    native = chat_recipe(
        {"system": "Reply in JSON.", "prompt": "{{ q }}", "model": "gpt-4o", "temperature": 0.3, "max_tokens": 80}
        | {"json_schema": {"type": "object"}},
        {"q": "start.text"},
        json_out=True,
    )
    back = import_omnitool(export_omnitool(native), default_registry())
    registry = default_registry()
    async with ScriptedOpenAI() as scripted, GuardedClient(NetSettings(allow_cidrs=["127.0.0.0/8"])) as http:
        scripted.script(completion('{"a": 1}'), completion('{"a": 1}'))
        llm = LanguageModels(LlmSettings(provider="openai", base_url=scripted.base_url, model="m"), http)
        engine = Engine(files=None, http=http, limits=LimitsSettings(block_timeout_s=5), llm=llm)  # type: ignore[arg-type]
        first = await engine.run(compile_recipe(native, registry), {"text": "One?"}, job_id="native")
        second = await engine.run(compile_recipe(back, registry), {"text": "One?"}, job_id="back")
        native_body, back_body = scripted.bodies()
    assert first == second == {"text": '{"a": 1}', "objects": {"a": 1}}
    assert native_body == back_body
    assert native_body["messages"] == [
        {"role": "system", "content": "Reply in JSON."},
        {"role": "user", "content": "One?"},
    ]
    assert (native_body["model"], native_body["temperature"], native_body["max_tokens"]) == ("gpt-4o", 0.3, 80)
