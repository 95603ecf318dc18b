"""The pieces an Omnitool import is made of (`conveyor.recipes.omnitool_nodes`)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from conveyor.recipes.omnitool_nodes import (
    UNNAMED,
    fingerprint,
    helper_id,
    is_empty,
    js_truthy,
    recipe_name,
    sanitize_name,
    short,
)


@pytest.mark.parametrize(
    ("value", "truthy"),
    [
        (False, False),
        (0, False),
        (0.0, False),
        (math.nan, False),
        ("", False),
        (None, False),
        ([], True),
        ({}, True),
        (True, True),
        ("false", True),
        (1, True),
        ("0", True),
    ],
)
def test_js_truthy_follows_javascript(value: Any, truthy: bool) -> None:
    assert js_truthy(value) is truthy


@pytest.mark.parametrize(
    ("value", "empty"), [(None, True), ("", True), ([], True), ({}, True), (0, False), (False, False)]
)
def test_is_empty(value: Any, empty: bool) -> None:
    assert is_empty(value) is empty


def test_names_as_omnitool_and_we_make_them() -> None:
    assert sanitize_name("  First Name ") == "first_name" and sanitize_name("Éte!") == "_te_"
    assert helper_id("7", "Width") == "7-Width" and helper_id("7", "a b/c") == "7-a_b_c"
    assert len(helper_id("7", "x" * 300)) == 100
    assert short("x" * 100).endswith("…") and len(short("x" * 100)) == 60


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"name": " Essay ", "description": "Reviews."}, ("Essay", "Reviews.")),
        ({"name": "n" * 300}, ("n" * 200, "")),
        ({"name": ""}, (UNNAMED, "")),
        ({"name": 5, "description": ["x"]}, (UNNAMED, "")),
        ({}, (UNNAMED, "")),
    ],
)
def test_recipe_name(meta: dict[str, Any], expected: tuple[str, str]) -> None:
    assert recipe_name(meta) == expected


def test_fingerprints_tell_what_a_node_does_and_ignore_its_meta() -> None:
    node = {"block": "jsonata", "config": {"expression": "$[0]"}, "inputs": {"json": "2.chunks"}}
    same = node | {"meta": {"x-omnitool": {"id": 4}}, "enabled": True}  # defaults and meta do not count
    assert fingerprint(node) == fingerprint(same) and len(fingerprint(node)) == 32
    for changed in ({"title": "First"}, {"enabled": False}, {"config": {"expression": "$[1]"}}, {"inputs": {}}):
        assert fingerprint(node | changed) != fingerprint(node), changed
