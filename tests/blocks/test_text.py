"""Tests for `conveyor.blocks.text`: the template block, replace, multi replace, splitter and JSON parsing."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from conveyor.blocks.base import BlockContext, BlockInputError, PortType
from conveyor.blocks.text import (
    MAX_TEXT_CHARS,
    REGEX_TIMEOUT_S,
    MultiTextReplace,
    TextReplace,
    TextSplitter,
    TextTemplate,
    TextToJson,
    split_spans,
)

Ctx = Callable[..., BlockContext]
FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)


async def render(make_ctx: Ctx, template: str, block: TextTemplate | None = None, **inputs: Any) -> str:
    block = block or TextTemplate()
    config = TextTemplate.Config(template=template)
    block.ports(config, inputs)
    out = await block.run(make_ctx(), config, inputs)
    text: str = out["text"]
    return text


# --- text_template ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "inputs", "expected"),
    [
        ("Hello, {{ text }}!", {"text": "world"}, "Hello, world!"),
        ("{{ data }}", {"data": {"a": [1, 2], "b": None}}, '{"a": [1, 2], "b": null}'),
        (
            "{{ flag }}/{{ off }}/{{ nothing }}/{{ n }}",
            {"flag": True, "off": False, "nothing": None, "n": 2.5},
            "true/false//2.5",
        ),
        ("{% for x in items %}{{ x }},{% endfor %}", {"items": [1, 2, 3]}, "1,2,3,"),
        ("{{ items|map(attribute='name')|join(', ') }}", {"items": [{"name": "a"}, {"name": "b"}]}, "a, b"),
        ("{{ missing|default('none') }}", {}, "none"),
        ("{% if maybe is defined %}yes{% else %}no{% endif %}", {}, "no"),
        ("{{ '%s-%s' % (a, b) }} {{ '{}!'.format(a) }}", {"a": "x", "b": "y"}, "x-y x!"),
        ("{{ 'ab'|upper }}{{ 'x'|center(5) }}|", {}, "AB  x  |"),
        ("{{ a ~ b ~ 3 }}", {"a": "x", "b": [1]}, "x[1]3"),
        (
            "{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}",
            {},
            "6",
        ),
        ("{% macro greet(who) %}hi {{ who }}{% endmacro %}{{ greet(name) }}", {"name": "bo"}, "hi bo"),
        ("line\n", {}, "line\n"),
        ("{{ 2 ** 10 }} {{ 'ab' * 2 }} {{ [1] + [2] }}", {}, "1024 abab [1, 2]"),
    ],
)
async def test_template_renders(make_ctx: Ctx, template: str, inputs: dict[str, Any], expected: str) -> None:
    assert await render(make_ctx, template, **inputs) == expected


async def test_template_stops_at_its_configured_deadline(make_ctx: Ctx) -> None:
    template = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    config = TextTemplate.Config(template=template, timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(BlockInputError, match=r"took longer than 0\.2 s"):
        await TextTemplate().run(make_ctx(), config, {})
    assert time.monotonic() - started < 5


def test_template_ports_are_wired_inputs_and_template_variables() -> None:
    block = TextTemplate()
    config = TextTemplate.Config(template="{{ a }}{% for x in items %}{{ x }}{{ range(2) }}{% endfor %}{% set z = 1 %}")
    inputs, outputs = block.ports(config, ["text", "a"])
    assert list(inputs) == ["text", "a", "items"]
    assert all(port.type == PortType.ANY and not port.required for port in inputs.values())
    assert outputs["text"].type == PortType.TEXT


def test_template_ports_of_a_broken_template_are_the_wired_inputs() -> None:
    inputs, _ = TextTemplate().ports(TextTemplate.Config(template="{% if %}"), ["q"])
    assert list(inputs) == ["q"]


async def test_template_is_compiled_once(make_ctx: Ctx) -> None:
    block = TextTemplate()
    first = block.compile("{{ a }}")
    assert block.compile("{{ a }}") is first
    assert await render(make_ctx, "{{ a }}", block, a="x") == "x"
    assert block.compile("{{ a }}") is first


@pytest.mark.parametrize(
    "config",
    [
        {"template": "x", "unknown": 1},
        {"template": "x" * 200_001},
        {"template": "x", "timeout_s": 0},
        {"template": "x", "timeout_s": 5.01},
        {"template": "x", "timeout_s": 60},
    ],
)
def test_template_config_refuses_bad_values(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TextTemplate.Config(**config)


@FIXTURE_OK
@given(value=st.text(max_size=200))
async def test_template_renders_a_variable_unchanged(make_ctx: Ctx, value: str) -> None:
    assert await render(make_ctx, "{{ v }}", v=value) == value


# --- text_replace -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "text", "expected"),
    [
        ({"find": "PRODUCT", "replace": "Conveyor"}, "PRODUCT is awesome, PRODUCT!", "Conveyor is awesome, Conveyor!"),
        ({"find": "a", "replace": "b", "count": 2}, "aaaa", "bbaa"),
        ({"find": "a.c", "replace": "X"}, "abc a.c", "abc X"),
        ({"find": "a.c", "replace": "X", "regex": True}, "abc a.c", "X X"),
        ({"find": r"(\w+)@(\w+)", "replace": r"\2 at \1", "regex": True}, "me@home", "home at me"),
        ({"find": r"(?P<n>\d+)", "replace": r"<\g<n>>", "regex": True, "count": 1}, "1 2", "<1> 2"),
        ({"find": "hello", "replace": r"\1", "ignore_case": True}, "HeLLo you", r"\1 you"),
        ({"find": "x", "replace": "", "regex": False}, "xax", "a"),
        ({"find": "^", "replace": "> ", "regex": True}, "quote", "> quote"),
        ({"find": r"\p{Lu}", "replace": "_", "regex": True}, "aBcD", "a_c_"),
        ({"find": "(a)", "replace": r"\100\1", "regex": True}, "xa", "x@a"),
        ({"find": "(?P<x>a)|(?P<x>b)", "replace": r"[\g<x>]", "regex": True}, "ab", "[a][b]"),
        ({"find": "a+b", "replace": r"\1", "ignore_case": True}, "xA+B", r"x\1"),
    ],
)
async def test_text_replace(make_ctx: Ctx, config: dict[str, Any], text: str, expected: str) -> None:
    block = TextReplace()
    cfg = TextReplace.Config(**config)
    inputs, outputs = block.ports(cfg, ["text"])
    assert inputs["text"].required and outputs["text"].type == PortType.TEXT
    assert await block.run(make_ctx(), cfg, {"text": text}) == {"text": expected}


@FIXTURE_OK
@given(
    text=st.text(alphabet="ab-\n", max_size=50),
    find=st.sampled_from(["(a)(b)?", "(?P<n>b+)", "(-|$)", "(?m)^(.?)"]),
    replace=st.lists(st.sampled_from(["x", r"\1", r"\g<0>", r"\\", r"\n", r"\\1"]), max_size=4).map("".join),
    count=st.integers(min_value=0, max_value=3),
)
async def test_text_replace_with_regex_is_re_sub(make_ctx: Ctx, text: str, find: str, replace: str, count: int) -> None:
    config = TextReplace.Config(find=find, replace=replace, regex=True, count=count)
    out = await TextReplace().run(make_ctx(), config, {"text": text})
    assert out == {"text": re.sub(find, replace, text, count=count)}


async def test_text_replace_builds_results_up_to_the_limit(make_ctx: Ctx) -> None:
    config = TextReplace.Config(find="(a+)", replace=r"\1\g<0>", regex=True)
    out = await TextReplace().run(make_ctx(), config, {"text": "a" * (MAX_TEXT_CHARS // 2)})
    assert len(out["text"]) == MAX_TEXT_CHARS


async def test_text_replace_renders_non_text_input(make_ctx: Ctx) -> None:
    out = await TextReplace().run(make_ctx(), TextReplace.Config(find="1", replace="one"), {"text": 1})
    assert out == {"text": "one"}


@pytest.mark.parametrize(
    "config",
    [
        {"find": "a", "replace": "b" * 100, "regex": False},
        {"find": "a", "replace": "b" * 100, "regex": True},
        {"find": "a", "replace": "b" * 100, "ignore_case": True},
    ],
)
async def test_text_replace_refuses_oversized_results(make_ctx: Ctx, config: dict[str, Any]) -> None:
    with pytest.raises(BlockInputError, match="longer than"):
        await TextReplace().run(make_ctx(), TextReplace.Config(**config), {"text": "a" * 200_000})


async def test_text_replace_stops_a_catastrophic_pattern(make_ctx: Ctx) -> None:
    # Regression: on Python's `re` this backtracks for minutes, holding up the event loop and every request on it.
    config = TextReplace.Config(find="(a|aa)+$", replace="x", regex=True)
    started = time.monotonic()
    with pytest.raises(BlockInputError, match=r"the regular expression took longer than 1 s") as caught:
        await TextReplace().run(make_ctx(), config, {"text": "a" * 40 + "b"})
    assert caught.value.retryable is False
    assert time.monotonic() - started < REGEX_TIMEOUT_S * 5


async def test_text_replace_bounds_matching_across_matches(make_ctx: Ctx) -> None:
    # Each match alone is quick enough; together they are not, and the bound covers the whole pass.
    config = TextReplace.Config(find="(a|aa)+d|c", replace="x", regex=True)
    with pytest.raises(BlockInputError, match="took longer than"):
        await TextReplace().run(make_ctx(), config, {"text": ("a" * 28 + "c") * 40})


async def test_text_replace_needs_text(make_ctx: Ctx) -> None:
    with pytest.raises(BlockInputError, match="needs input 'text'"):
        await TextReplace().run(make_ctx(), TextReplace.Config(find="a"), {})
    with pytest.raises(BlockInputError, match="longer than"):
        await TextReplace().run(make_ctx(), TextReplace.Config(find="a"), {"text": "a" * (MAX_TEXT_CHARS + 1)})


@pytest.mark.parametrize(
    "config",
    [
        {"find": ""},
        {"find": "(", "regex": True},
        {"find": "(a)", "replace": r"\2", "regex": True},
        {"find": "(a)", "replace": r"\g<x>", "regex": True},
        {"find": "(a)", "replace": "\\", "regex": True},
        {"find": "(a)", "replace": r"\q", "regex": True},
        {"find": "a", "count": -1},
        {"find": "a", "flags": "g"},
        {},
    ],
)
def test_text_replace_config_refuses_bad_values(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TextReplace.Config(**config)


# --- multi_text_replace -----------------------------------------------------------------------------------------


def test_multi_text_replace_ports_follow_placeholders() -> None:
    config = MultiTextReplace.Config(template="{INPUT:Variable Name} and {input:topic}, {Input:topic} {INPUT: }")
    inputs, outputs = MultiTextReplace().ports(config, [])
    assert list(inputs) == ["variable_name", "topic"]
    assert all(port.type == PortType.TEXT and not port.required for port in inputs.values())
    assert list(outputs) == ["text"]


@pytest.mark.parametrize(
    ("template", "inputs", "expected"),
    [
        (
            "Write about {INPUT:Topic} in {INPUT:Style}.",
            {"topic": "owls", "style": "verse"},
            "Write about owls in verse.",
        ),
        ("{input:a}{INPUT:a}", {"a": "x"}, "xx"),
        ("[{INPUT:Missing}]", {}, "[]"),
        ("{INPUT:a}", {"a": "{INPUT:b}", "b": "no"}, "{INPUT:b}"),
        ("{INPUT:n} {INPUT:flag} {INPUT:obj}", {"n": 3, "flag": True, "obj": {"k": 1}}, '3 true {"k": 1}'),
        ("no placeholders {here}", {}, "no placeholders {here}"),
    ],
)
async def test_multi_text_replace(make_ctx: Ctx, template: str, inputs: dict[str, Any], expected: str) -> None:
    out = await MultiTextReplace().run(make_ctx(), MultiTextReplace.Config(template=template), inputs)
    assert out == {"text": expected}


async def test_multi_text_replace_bounds_its_output(make_ctx: Ctx) -> None:
    config = MultiTextReplace.Config(template="{INPUT:a}" * 20)
    with pytest.raises(BlockInputError, match="longer than"):
        await MultiTextReplace().run(make_ctx(), config, {"a": "x" * 1_000_000})


def test_multi_text_replace_config_refuses_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        MultiTextReplace.Config(template="x", source="y")  # type: ignore[call-arg]


# --- text_splitter ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "text", "expected"),
    [
        ({"chunk_size": 100}, "short text", ["short text"]),
        ({"chunk_size": 12}, "para one.\n\npara two.\n\npara 3.", ["para one.\n\n", "para two.\n\n", "para 3."]),
        ({"chunk_size": 4}, "abcdefghij", ["abcd", "efgh", "ij"]),
        ({"chunk_size": 11}, "one two three four", ["one two ", "three four"]),
        ({"chunk_size": 10, "chunk_overlap": 4}, "aaa bbb ccc ddd", ["aaa bbb ", "bbb ccc ", "ccc ddd"]),
        ({"chunk_size": 6, "separator": "|"}, "ab|cd|efghijkl", ["ab|cd|", "efghij", "kl"]),
        ({"chunk_size": 5}, "abc" + " " * 12 + "def", ["abc  ", "def"]),
        ({"chunk_size": 5}, "", []),
    ],
)
async def test_text_splitter(make_ctx: Ctx, config: dict[str, Any], text: str, expected: list[str]) -> None:
    block = TextSplitter()
    cfg = TextSplitter.Config(**config)
    _, outputs = block.ports(cfg, ["text"])
    assert outputs["chunks"].type == PortType.JSON and outputs["count"].type == PortType.NUMBER
    assert await block.run(make_ctx(), cfg, {"text": text}) == {"chunks": expected, "count": len(expected)}


async def test_text_splitter_bounds_the_chunk_count(make_ctx: Ctx) -> None:
    with pytest.raises(BlockInputError, match="more than 100000 chunks"):
        await TextSplitter().run(make_ctx(), TextSplitter.Config(chunk_size=1), {"text": "x" * 100_001})


@pytest.mark.parametrize(
    "config",
    [
        {"chunk_size": 0},
        {"chunk_size": 10, "chunk_overlap": 10},
        {"chunk_overlap": -1},
        {"separator": ""},
        {"chunk_size": 10, "delimiter": ","},
    ],
)
def test_text_splitter_config_refuses_bad_values(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TextSplitter.Config(**config)


@given(
    text=st.text(alphabet=st.sampled_from("ab .\n"), max_size=400),
    size=st.integers(min_value=1, max_value=60),
    overlap_share=st.floats(min_value=0, max_value=0.9),
    separator=st.none() | st.sampled_from([" ", "\n", ". ", "b"]),
)
def test_split_spans_cover_the_text_in_order(text: str, size: int, overlap_share: float, separator: str | None) -> None:
    overlap = int(size * overlap_share)
    spans = split_spans(text, size, overlap, (separator,) if separator else ("\n\n", "\n", ". ", " "))
    if not text:
        assert spans == []
        return
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for start, end in spans:
        assert 0 < end - start <= size
    for (start, end), (next_start, next_end) in itertools.pairwise(spans):
        assert start < next_start <= end < next_end
        assert end - next_start <= overlap


@FIXTURE_OK
@given(text=st.text(max_size=300), size=st.integers(min_value=1, max_value=50))
async def test_text_splitter_chunks_are_the_non_blank_spans(make_ctx: Ctx, text: str, size: int) -> None:
    out = await TextSplitter().run(make_ctx(), TextSplitter.Config(chunk_size=size), {"text": text})
    spans = split_spans(text, size, 0, ("\n\n", "\n", ". ", " "))
    assert "".join(text[start:end] for start, end in spans) == text
    assert out["chunks"] == [text[start:end] for start, end in spans if not text[start:end].isspace()]
    assert out["count"] == len(out["chunks"])


# --- text_to_json -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": [1, 2.5, null, true]}', {"a": [1, 2.5, None, True]}),
        ("[]", []),
        (' "text" ', "text"),
        ("42", 42),
    ],
)
async def test_text_to_json(make_ctx: Ctx, text: str, expected: Any) -> None:
    assert await TextToJson().run(make_ctx(), TextToJson.Config(), {"text": text}) == {"json": expected}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{'a': 1}", "invalid JSON: .*line 1 column 2"),
        ('{"a": 1,}', "invalid JSON"),
        ("NaN", "invalid JSON"),
        ("", "invalid JSON"),
        ("[1] [2]", "invalid JSON"),
        ({"a": 1}, "needs text, got dict"),
        (None, "needs text, got NoneType"),
        (" " * (MAX_TEXT_CHARS + 1), "longer than"),
    ],
)
async def test_text_to_json_refuses_what_is_not_json_text(make_ctx: Ctx, value: Any, message: str) -> None:
    with pytest.raises(BlockInputError, match=message):
        await TextToJson().run(make_ctx(), TextToJson.Config(), {"text": value})


def test_text_to_json_ports_and_config() -> None:
    inputs, outputs = TextToJson().ports(TextToJson.Config(), ["text"])
    assert inputs["text"].required and outputs["json"].type == PortType.JSON
    with pytest.raises(ValidationError):
        TextToJson.Config(strict=False)  # type: ignore[call-arg]
