"""Parsing recipe bodies: only plain JSON data gets through, whatever YAML can express."""

from __future__ import annotations

import pytest

from conveyor.errors import BadRequestError
from conveyor.recipes.model import parse_recipe_text

YAML = "application/yaml"


def test_yaml_and_json_parse_to_plain_data() -> None:
    assert parse_recipe_text("name: a\nnodes: {x: {block: b}}", YAML) == {"name": "a", "nodes": {"x": {"block": "b"}}}
    assert parse_recipe_text(b'{"name": "a"}') == {"name": "a"}


def test_yaml_alias_bomb_is_refused() -> None:
    levels = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    levels += [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]" for i in range(7)]
    with pytest.raises(BadRequestError, match="YAML aliases are not accepted"):
        parse_recipe_text("\n".join(levels), YAML)


def test_a_single_alias_is_refused_too() -> None:
    with pytest.raises(BadRequestError, match="YAML aliases are not accepted"):
        parse_recipe_text("base: &b {block: x}\nother: *b\n", YAML)


def test_an_anchor_without_alias_is_harmless() -> None:
    assert parse_recipe_text("base: &b {block: x}\n", YAML) == {"base": {"block": "x"}}


@pytest.mark.parametrize(
    "text",
    [
        "name: !!binary aGVsbG8=",
        "name: !!set {a, b}",
        "name: !!timestamp 2020-01-01",
        "meta: {1: one}",
        "meta: {n: 123456789012345678901234567890}",
    ],
)
def test_yaml_that_is_not_json_data_is_refused(text: str) -> None:
    with pytest.raises(BadRequestError, match="recipe must be plain JSON data"):
        parse_recipe_text(text, YAML)


def test_yaml_dates_stay_strings() -> None:
    assert parse_recipe_text("a: 2020-01-01\nb: 2020-01-01T10:00:00Z\n", YAML) == {
        "a": "2020-01-01",
        "b": "2020-01-01T10:00:00Z",
    }


@pytest.mark.parametrize(
    ("text", "content_type"),
    [
        ("[" * 50_000, YAML),
        ("- " * 5_000 + "x", YAML),
        ("[" * 50_000, "application/json"),
        ("[" * 50_000, "text/plain"),
        ("[" * 300 + "]" * 300, "application/json"),
        ('{"a":' * 300 + "1" + "}" * 300, "application/json"),
    ],
)
def test_deep_nesting_is_refused(text: str, content_type: str) -> None:
    with pytest.raises(BadRequestError, match="body nests too deeply"):
        parse_recipe_text(text, content_type)


def test_moderate_nesting_is_fine() -> None:
    deep = "[" * 100 + "]" * 100
    assert parse_recipe_text(deep, "application/json") == parse_recipe_text(deep, YAML)
