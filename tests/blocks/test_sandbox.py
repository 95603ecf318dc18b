"""Tests for `conveyor.blocks.sandbox`: escapes refused, sizes and time bounded, failures as input errors."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.blocks.base import BlockInputError
from conveyor.blocks.sandbox import (
    MAX_TEMPLATE_CHARS,
    LruCache,
    TemplateSandbox,
    rendered_size,
    replaced_length,
    to_text,
)

DEEP: list[Any] = [list(range(20_000))]
for _ in range(100):
    DEEP = [DEEP, 1]


def render(template: str, timeout_s: float = 5.0, **variables: Any) -> str:
    sandbox = TemplateSandbox()
    return sandbox.render(sandbox.prepare(template), variables, timeout_s)


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "{{ x.__class__.__base__.__subclasses__() }}",
        "{{ x.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ items.append(1) }}",
        "{{ mapping.update({'a': 1}) }}",
    ],
)
def test_sandbox_refuses_escapes(template: str) -> None:
    with pytest.raises(BlockInputError, match="unsafe") as caught:
        render(template, x=1, items=[], mapping={})
    assert caught.value.retryable is False


def test_sandbox_names_the_missing_variable() -> None:
    with pytest.raises(BlockInputError, match="'who' is undefined"):
        render("Hello {{ who }}")


@pytest.mark.parametrize(
    ("template", "variables"),
    [
        ("{{ 'a' * 10**9 }}", {}),
        ("{{ [1] * 10**9 }}", {}),
        ("{{ 'a'|center(10**9) }}", {}),
        ("{{ 'a'.ljust(999999999) }}", {}),
        ("{{ 'a\tb'.expandtabs(999999) }}", {}),
        ("{{ '{:999999999}'.format(1) }}", {}),
        ("{{ '{:{w}}'.format(1, w=999999999) }}", {}),
        ("{{ '%999999999d' % 1 }}", {}),
        ("{{ '%*d' % (999999999, 1) }}", {}),
        ("{{ '%.9999999f'|format(1.5) }}", {}),
        ("{% set ns = namespace(s='aaaaaaaa') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", {}),
        ("{% set ns = namespace(s='aaaaaaaa') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", {}),
        (
            "{% set ns=namespace(l=['x']) %}{% for i in range(30) %}{% set ns.l=[ns.l, ns.l] %}{% endfor %}{{ ns.l }}",
            {},
        ),
        ("{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}", {}),
        ("{% set s %}{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}{% endset %}{{ s|length }}", {}),
        ("{% macro m() %}{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}{% endmacro %}{{ m()|length }}", {}),
        ("{{ (s ~ s ~ s)|length }}", {"s": "a" * 400_000}),
        ("{{ ([s] * 1000)|join(',')|length }}", {"s": "a" * 4000}),
        ("{{ ','.join([s] * 1000)|length }}", {"s": "a" * 4000}),
        ("{{ s|replace('a', 'bbbbbbbbbb')|length }}", {"s": "a" * 400_000}),
        ("{{ s.replace('a', 'bbbbbbbbbb')|length }}", {"s": "a" * 400_000}),
        ("{{ ([s] * 1000)|tojson|length }}", {"s": "a" * 4000}),
        ("{{ s|indent(100000) }}", {"s": "\n" * 100}),
        ("{{ s|wordwrap(1, wrapstring='-' * 100) }}", {"s": "a " * 20_000}),
        ("{{ s }}", {"s": "a" * (MAX_TEMPLATE_CHARS + 1)}),
        ("{{ s.translate({97: 'b' * 1000}) }}", {"s": "a" * 10_000}),
        ("{{ data|tojson(indent=100000) }}", {"data": [[[[1, 2, 3]]]] * 10}),
        ("{{ data|pprint }}", {"data": DEEP}),
    ],
)
def test_sandbox_refuses_oversized_values(template: str, variables: dict[str, Any]) -> None:
    with pytest.raises(BlockInputError, match="too large"):
        render(template, **variables)


def test_sandbox_output_may_reach_the_limit() -> None:
    assert len(render("{{ s }}", s="a" * MAX_TEMPLATE_CHARS)) == MAX_TEMPLATE_CHARS


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
    ],
)
def test_sandbox_stops_at_its_deadline(template: str) -> None:
    started = time.monotonic()
    with pytest.raises(BlockInputError, match=r"took longer than 0\.2 s"):
        render(template, timeout_s=0.2)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursed too deeply"),
        ("{% for x in %}", "does not compile: .* \\(line 1\\)"),
        ("{{ x|nosuchfilter }}", "does not compile: No filter named 'nosuchfilter'"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{% include 'other' %}", "template failed"),
        ("{{ lipsum(5) }}", "'lipsum' is undefined"),
        ("{{ range(10**9) }}", "Range too big"),
        ("{{ 10 ** 100000 }}", "number is too large"),
        ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "nests too deeply"),
    ],
)
def test_sandbox_failures_are_input_errors(template: str, message: str) -> None:
    with pytest.raises(BlockInputError, match=message):
        render(template, x=1)


def test_prepare_finds_the_variables_a_template_reads() -> None:
    compiled = TemplateSandbox().prepare("{{ a }}{% for x in items %}{{ x }}{{ range(2) }}{% endfor %}{% set z = 1 %}")
    assert compiled.variables == {"a", "items"}


def test_lru_cache_is_bounded_and_keeps_recent_entries() -> None:
    cache: LruCache[str, int] = LruCache(maxsize=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert len(cache) == 2
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (1, 3)


@given(value=st.recursive(st.none() | st.booleans() | st.integers() | st.text(), lambda inner: st.lists(inner)))
def test_to_text_of_lists_is_json(value: Any) -> None:
    text = to_text([value])
    assert json.loads(text) == [value]


def test_rendered_size_counts_repeats_and_stops_past_its_limit() -> None:
    repeated = ["a" * 1000] * 1000
    assert rendered_size(repeated, limit=10**9) >= 1_000_000
    assert rendered_size(repeated, limit=5000) < 10_000


@given(
    text=st.text(alphabet="ab", max_size=30),
    old=st.text(alphabet="ab", max_size=3),
    new=st.text(alphabet="abc", max_size=4),
    count=st.none() | st.integers(min_value=-1, max_value=5),
)
def test_replaced_length_is_the_length_of_str_replace(text: str, old: str, new: str, count: int | None) -> None:
    expected = text.replace(old, new) if count is None else text.replace(old, new, count)
    assert replaced_length(text, old, new, count) == len(expected)
