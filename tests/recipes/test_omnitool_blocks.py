"""The Omnitool block table (`conveyor.recipes.omnitool_blocks`): each mapping, run on the real engine where it runs."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.blocks import default_registry
from conveyor.engine.runner import Engine
from conveyor.recipes.graph import compile_recipe
from conveyor.recipes.omnitool import OmnitoolImportError, read_omnitool
from conveyor.recipes.omnitool_blocks import js_replacement
from conveyor.settings import LimitsSettings

Link = tuple[int, str, int, str]


def omni(nodes: dict[int, tuple[str, dict[str, Any]]], links: list[Link]) -> dict[str, Any]:
    """A small Omnitool recipe: nodes `{id: (block, data)}`, links `(source, output, target, input)`, each
    listed at both ends as Omnitool writes them."""
    rete: dict[str, Any] = {}
    for node_id, (name, data) in nodes.items():
        inputs: dict[str, Any] = {}
        outputs: dict[str, Any] = {}
        for source, out, target, into in links:
            if target == node_id:
                inputs.setdefault(into, {"connections": []})["connections"].append({"node": source, "output": out})
            if source == node_id:
                outputs.setdefault(out, {"connections": []})["connections"].append({"node": target, "input": into})
        rete[str(node_id)] = {"id": node_id, "name": name, "data": data, "inputs": inputs, "outputs": outputs}
    return {"id": "test-recipe", "meta": {"name": "Test"}, "rete": {"id": "mercs@0.1.1", "nodes": rete}}


def through(block: str, data: dict[str, Any], into: str = "text", out: str = "text") -> dict[str, Any]:
    """chat_input.text → node 2 (`block`, `data`) → recipe_output.text."""
    nodes = {1: ("omnitool.chat_input", {}), 2: (block, data), 3: ("omnitool.recipe_output", {})}
    return omni(nodes, [(1, "text", 2, into), (2, out, 3, "text")])


async def run(doc: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    registry = default_registry()
    imported = read_omnitool(doc, registry)
    engine = Engine(files=None, http=None, limits=LimitsSettings(block_timeout_s=5))  # type: ignore[arg-type]
    return await engine.run(compile_recipe(imported.doc, registry), inputs, job_id="blocks-test")


def problems(doc: dict[str, Any]) -> list[tuple[str | None, str]]:
    with pytest.raises(OmnitoolImportError) as info:
        read_omnitool(doc, default_registry())
    return [(detail["node"], detail["code"]) for detail in info.value.details]


@pytest.mark.parametrize(
    ("template", "groups", "names", "expected"),
    [
        ("$2 at $1", 2, (), "\\g<2> at \\g<1>"),
        ("$$5", 0, (), "$5"),
        ("<$&>", 0, (), "<\\g<0>>"),
        ("a\\b", 0, (), "a\\\\b"),
        ("$12", 1, (), "\\g<1>2"),
        ("$12", 12, (), "\\g<12>"),
        ("$3", 2, (), "$3"),
        ("$0", 2, (), "$0"),
        ("$<who>!", 1, ("who",), "\\g<who>!"),
        ("$<who>", 0, (), "$<who>"),
        ("$`", 0, (), None),
        ("$'", 0, (), None),
    ],
)
def test_javascript_replacements_become_python_ones(
    template: str, groups: int, names: tuple[str, ...], expected: str | None
) -> None:
    assert js_replacement(template, groups, frozenset(names)) == expected


@pytest.mark.parametrize(
    ("match", "replace", "text", "expected"),
    [
        ("World", " there ", "World, World", "there, World"),  # JavaScript replaces the first, trimmed
        ("/o/g", "0", "foo boo", "f00 b00"),
        ("/O/i", "0", "foo boo", "f0o boo"),
        ("/o", "0", "foo", "f00"),  # no closing slash: flags default to g
        ("/(\\w+)@(\\w+)/g", "$2 at $1", "a@b c@d", "b at a d at c"),
        ("/^x/gm", "-", "x1\nx2", "-1\n-2"),
        ("$", "$&$&", "a$b", "a$$b"),
        ("a.b", "!", "axb a.b", "axb !"),  # plain text, not a pattern
        ("", "ignored", "unchanged", "unchanged"),  # Omnitool hands the text on
    ],
)
async def test_text_replace(match: str, replace: str, text: str, expected: str) -> None:
    doc = through("omnitool.text_replace", {"match": match, "replace": replace, "text": ""})
    assert await run(doc, {"text": text}) == {"text": expected}


async def test_text_replace_with_a_connected_replacement_replaces_the_first_match() -> None:
    nodes = {
        1: ("omnitool.chat_input", {}),
        2: ("omnitool.input_text", {"text": '  Earth "1" '}),
        3: ("omnitool.text_replace", {"match": 'Wor"ld', "replace": "", "text": ""}),
        4: ("omnitool.recipe_output", {}),
    }
    doc = omni(nodes, [(1, "text", 3, "text"), (2, "text", 3, "replace"), (3, "text", 4, "text")])
    assert await run(doc, {"text": 'Hello Wor"ld Wor"ld'}) == {"text": 'Hello Earth "1" Wor"ld'}
    doc["rete"]["nodes"]["3"]["data"]["match"] = "/o/g"
    assert problems(doc) == [("3", "unsupported_port")]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"number": "2.5", "number_format": "round"}, 3),
        ({"number": -2.5, "number_format": "round"}, -2),  # Math.round rounds halves up
        ({"number": 2.7, "number_format": "floor"}, 2),
        ({"number": 2.1, "number_format": "ceil"}, 3),
        ({"number": -2.7, "number_format": "integer"}, -2),
        ({"number": "1e3", "number_format": "any"}, 1000),
        ({"number": 1.5, "number_format": "float"}, 1.5),
        ({"number": 7}, 7),
    ],
)
async def test_number_input(data: dict[str, Any], expected: float) -> None:
    nodes = {1: ("omnitool.chat_input", {}), 2: ("omnitool.number_input", data), 3: ("omnitool.recipe_output", {})}
    assert await run(omni(nodes, [(2, "number", 3, "objects")]), {}) == {"objects": expected}


@pytest.mark.parametrize(
    ("data", "wired", "code"),
    [
        ({"number": 1, "number_format": "timestamp"}, False, "unsupported_data"),
        ({"number": 1, "number_format": "random"}, False, "unsupported_data"),
        ({"number": "many"}, False, "unsupported_data"),
        ({"number": 1, "number_format": "round"}, True, "unsupported_data"),  # rounding a connected number
    ],
)
def test_number_input_problems(data: dict[str, Any], wired: bool, code: str) -> None:
    nodes = {1: ("omnitool.chat_input", {}), 2: ("omnitool.number_input", data), 3: ("omnitool.recipe_output", {})}
    links: list[Link] = [(2, "number", 3, "objects")] + ([(1, "text", 2, "number")] if wired else [])
    assert ("2", code) in problems(omni(nodes, links))


async def test_multi_text_replace_names_sockets_as_omnitool_does() -> None:
    source = "{input: Topic } / {INPUT:First Name} / {input:unset} / {IMAGE:0}"
    nodes: dict[int, tuple[str, dict[str, Any]]] = {
        1: ("omnitool.chat_input", {}),
        2: ("omnitool.multi_text_replace", {"source": source, "first_name": "Ada", "unset": ""}),
        3: ("omnitool.recipe_output", {}),
    }
    doc = omni(nodes, [(1, "text", 2, "_topic_"), (2, "text", 3, "text")])
    assert await run(doc, {"text": "maths"}) == {"text": "maths / Ada /  / {IMAGE:0}"}
    nodes[2][1]["replace"] = {"a": "b"}
    assert problems(omni(nodes, [(1, "text", 2, "_topic_"), (2, "text", 3, "text")])) == [("2", "unsupported_data")]


async def test_json_packer_and_unpacker_sanitize_field_names() -> None:
    nodes = {
        1: ("omnitool.chat_input", {}),
        2: ("omnipath.json_unpacker", {"fields_list": "First Name:text, age:text"}),
        3: ("omnipath.json_packer", {"fields_list": "Who:text, years:object, extra:text", "extra": "fixed"}),
        4: ("omnitool.recipe_output", {}),
    }
    links: list[Link] = [(1, "json", 2, "json"), (2, "first_name", 3, "who"), (2, "age", 3, "years")]
    doc = omni(nodes, [*links, (3, "json", 4, "objects")])
    outputs = await run(doc, {"json": {"first_name": "Ada", "age": 36}})
    assert outputs == {"objects": {"who": "Ada", "years": 36, "extra": "fixed"}}


async def test_jsonata_text_output_comes_from_a_helper() -> None:
    nodes = {
        1: ("omnitool.chat_input", {}),
        2: ("omnitool.jsonata", {"transform": "$.items[price > 1].name"}),
        3: ("omnitool.recipe_output", {}),
    }
    doc = omni(nodes, [(1, "json", 2, "object"), (2, "text", 3, "text"), (2, "object", 3, "objects")])
    outputs = await run(doc, {"json": {"items": [{"name": "pen", "price": 2}, {"name": "ink", "price": 3}]}})
    assert outputs == {"text": '["pen", "ink"]', "objects": ["pen", "ink"]}
    nodes[2][1]["transform"] = "  "
    assert problems(omni(nodes, [(1, "json", 2, "object"), (2, "object", 3, "objects")])) == [("2", "unsupported_data")]


def test_write_document_names_the_file_by_omnitools_rule() -> None:
    nodes = {
        1: ("omnitool.chat_input", {}),
        2: ("omnitool.write_document", {"fileName": " Résumé draft #1, final", "textType": "text/markdown"}),
        3: ("omnitool.recipe_output", {}),
    }
    doc = omni(nodes, [(1, "text", 2, "text"), (2, "document", 3, "documents")])
    node = read_omnitool(doc, default_registry()).doc["nodes"]["2"]
    assert node["config"] == {"file_name": "R_sum_draft_1_fin.md", "mime": "text/markdown"}
    nodes[2][1].update(fileName="", textType="text/plain")
    imported = read_omnitool(omni(nodes, [(1, "text", 2, "text")]), default_registry())
    assert imported.doc["nodes"]["2"]["config"] == {"file_name": "document.txt", "mime": "text/plain"}
    assert [w["code"] for w in imported.warnings] == ["approximated"]


def test_run_recipe_outputs_come_from_an_unpacker() -> None:
    nodes = {
        1: ("omnitool.chat_input", {}),
        2: ("omnitool.run_recipe", {"recipes_list": "invalid", "recipe_id": " other-recipe "}),
        3: ("omnitool.recipe_output", {}),
    }
    links: list[Link] = [(1, "text", 2, "text"), (1, "json", 2, "args"), (2, "video", 3, "videos")]
    imported = read_omnitool(omni(nodes, [*links, (2, "text", 3, "text")]), default_registry())
    nodes_out = imported.doc["nodes"]
    assert nodes_out["2"]["config"] == {"recipe": "other-recipe"}
    assert nodes_out["2"]["inputs"] == {"text": "1.text", "inputs": "1.json"}
    assert nodes_out["2-outputs"]["config"] == {"keys": ["videos"]}
    assert nodes_out["3"]["inputs"] == {"videos": "2-outputs.videos", "text": "2.text"}
    nodes[2] = ("omnitool.run_recipe", {"recipes_list": "invalid"})
    assert problems(omni(nodes, [(2, "text", 3, "text")])) == [("2", "unsupported_data")]


def test_prepare_image_targets_and_unknown_targets() -> None:
    nodes = {
        1: ("omnitool.chat_input", {}),
        2: ("omnitool.prepare_image", {"Target": "sdxl"}),
        3: ("omnitool.recipe_output", {}),
    }
    links: list[Link] = [(1, "images", 2, "Source"), (2, "Result", 3, "images"), (2, "Height", 3, "objects")]
    imported = read_omnitool(omni(nodes, links), default_registry())
    assert imported.doc["nodes"]["2"]["config"] == {"width": 1024, "height": 1024, "fit": "contain", "format": "png"}
    assert imported.doc["nodes"]["2-Height"]["config"] == {"value": 1024}
    nodes[2] = ("omnitool.prepare_image", {"Target": "poster"})
    imported = read_omnitool(omni(nodes, links), default_registry())
    assert imported.doc["nodes"]["2"]["config"]["format"] == "jpeg"
    assert [w["code"] for w in imported.warnings] == ["approximated"]
    assert problems(omni(nodes, [*links, (2, "Mask", 3, "files")])) == [("2", "unsupported_port")]


@pytest.mark.parametrize(
    ("nodes", "links", "expected"),
    [
        (  # an input our chat_input cannot take
            {1: ("omnitool.chat_input", {}), 2: ("omnitool.input_text", {}), 3: ("omnitool.recipe_output", {})},
            [(2, "text", 1, "text"), (1, "text", 3, "text")],
            [("1", "unsupported_port")],
        ),
        (  # two connections into one input
            {1: ("omnitool.chat_input", {}), 2: ("omnitool.input_text", {}), 3: ("omnitool.chat_output", {})},
            [(1, "text", 3, "text"), (2, "text", 3, "text")],
            [("3", "multiple_connections")],
        ),
        (  # an output ours does not give
            {1: ("omnitool.chat_input", {}), 2: ("omnitool.image_info", {}), 3: ("omnitool.recipe_output", {})},
            [(1, "images", 2, "image"), (2, "fid", 3, "text")],
            [("2", "unsupported_port")],
        ),
        (  # an output that hands on an input nothing feeds, and that input is required
            {1: ("omnitool.chat_input", {}), 2: ("omnitool.image_info", {}), 3: ("omnitool.recipe_output", {})},
            [(2, "image", 3, "images")],
            [("2", "missing_input"), ("2", "unsupported_port")],
        ),
        (  # a port the block does not have at all
            {1: ("omnitool.chat_input", {}), 2: ("omnitool.text_to_json", {}), 3: ("omnitool.recipe_output", {})},
            [(1, "text", 2, "text"), (1, "json", 2, "schema"), (2, "json", 3, "objects")],
            [("2", "unsupported_port")],
        ),
    ],
)
def test_ports_without_a_counterpart_are_problems(
    nodes: dict[int, tuple[str, dict[str, Any]]], links: list[Link], expected: list[tuple[str, str]]
) -> None:
    assert problems(omni(nodes, links)) == expected


# ---------------------------------------------------------------------------------------------- language models

CHAT = "{{ instruction | default('') }}", "{{ prompt | default('') }}"


@pytest.mark.parametrize(
    ("block", "data", "out", "config"),
    [
        (
            "openai.simpleChatGPT",
            {"instruction": "Be brief.", "model": "gpt-4", "prompt": "", "temperature": 0.5},
            "text",
            {"model": "gpt-4", "temperature": 0.5},
        ),
        (  # Omnitool's "inf" is no limit; a number is ours
            "openai.simpleChatGPT",
            {"instruction": "x", "model": "gpt-3.5-turbo-16k", "max_tokens": "inf", "temperature": 1.1},
            "text",
            {"model": "gpt-3.5-turbo-16k", "temperature": 1.1},
        ),
        (
            "openai.advancedChatGPT",
            {"instruction": "x", "model": "gpt-4", "temperature": 0.3, "top_p": 1, "max_tokens": 300, "function": None},
            "answer_text",
            {"model": "gpt-4", "temperature": 0.3, "max_tokens": 300},
        ),
        (
            "openai.advancedChatGPT",
            {"instruction": "x", "model": "gpt-3.5-turbo-1106", "json_mode": True, "seed": 3},
            "answer_text",
            {"model": "gpt-3.5-turbo-1106", "json_schema": {"type": "object"}},
        ),
        ("omnitool.large_language_model", {"Instruction": "x", "Criteria": "creative"}, "Reply", {"temperature": 0.9}),
        ("omnitool.large_language_model", {"Instruction": "x", "Criteria": "fast"}, "Reply", {}),
    ],
)
def test_chat_blocks_become_llm_chat(block: str, data: dict[str, Any], out: str, config: dict[str, Any]) -> None:
    into = "Prompt" if block == "omnitool.large_language_model" else "prompt"
    imported = read_omnitool(through(block, data, into=into, out=out), default_registry())
    node = imported.doc["nodes"]["2"]
    assert node["block"] == "llm_chat"
    assert node["config"] == {"system": CHAT[0], "prompt": CHAT[1], **config}
    assert node["inputs"] == {
        "prompt": "1.text",
        "instruction": "2-" + ("Instruction" if into == "Prompt" else "instruction") + ".text",
    }
    assert imported.doc["nodes"]["3"]["inputs"] == {"text": "2.text"}
    assert imported.warnings == []


async def test_advanced_chat_gpt_answers_on_the_scripted_model_in_json_mode() -> None:
    from tests.llm.scripted_openai import ScriptedOpenAI, completion

    from conveyor.llm import LanguageModels
    from conveyor.net import GuardedClient
    from conveyor.settings import LlmSettings, NetSettings

    nodes = {
        1: ("omnitool.chat_input", {}),
        2: ("openai.advancedChatGPT", {"instruction": "Reply in JSON.", "json_mode": True, "prompt": ""}),
        3: ("omnitool.recipe_output", {}),
    }
    doc = omni(nodes, [(1, "text", 2, "prompt"), (2, "answer_text", 3, "text"), (2, "answer_json", 3, "objects")])
    registry = default_registry()
    imported = read_omnitool(doc, registry)
    async with ScriptedOpenAI() as scripted, GuardedClient(NetSettings(allow_cidrs=["127.0.0.0/8"])) as http:
        scripted.script(completion('{"koan": "one hand"}'))
        llm = LanguageModels(LlmSettings(provider="openai", base_url=scripted.base_url, model="m"), http)
        engine = Engine(files=None, http=http, limits=LimitsSettings(block_timeout_s=5), llm=llm)  # type: ignore[arg-type]
        outputs = await engine.run(compile_recipe(imported.doc, registry), {"text": "A koan."}, job_id="adv")
        [body] = scripted.bodies()
    assert outputs == {"text": '{"koan": "one hand"}', "objects": {"koan": "one hand"}}
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert body["messages"][0] == {"role": "system", "content": "Reply in JSON."}


@pytest.mark.parametrize(
    ("data", "links", "expected"),
    [
        ({"instruction": "", "prompt": ""}, [(2, "text", 3, "text")], [("2", "missing_input")]),
        (
            {"instruction": "x", "temperature": 7},
            [(1, "text", 2, "prompt"), (2, "text", 3, "text")],
            [("2", "unsupported_data")],
        ),
        ({"instruction": "x"}, [(1, "text", 2, "model"), (2, "text", 3, "text")], [("2", "unsupported_port")]),
        ({"instruction": "x"}, [(1, "text", 2, "prompt"), (2, "_omni_status", 3, "text")], [("2", "unsupported_port")]),
    ],
)
def test_simple_chat_gpt_problems(data: dict[str, Any], links: list[Link], expected: list[tuple[str, str]]) -> None:
    nodes = {1: ("omnitool.chat_input", {}), 2: ("openai.simpleChatGPT", data), 3: ("omnitool.recipe_output", {})}
    assert problems(omni(nodes, links)) == expected


@pytest.mark.parametrize(
    ("data", "out"),
    [({"instruction": "x", "functions": '[{"name": "f"}]'}, "answer_text"), ({"instruction": "x"}, "function_name")],
)
def test_advanced_chat_gpt_function_calls_are_problems(data: dict[str, Any], out: str) -> None:
    doc = through("openai.advancedChatGPT", data, into="prompt", out=out)
    assert problems(doc) == [("2", "unsupported_data" if out == "answer_text" else "unsupported_port")]


def test_a_top_p_other_than_one_is_a_warning() -> None:
    imported = read_omnitool(
        through("openai.advancedChatGPT", {"instruction": "x", "top_p": 0.5}, "prompt", "answer_text"),
        default_registry(),
    )
    assert [(w["node"], w["code"]) for w in imported.warnings] == [("2", "approximated")]
