"""Recipe validation: every problem reported by node, and the compiled graph's order."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.blocks import default_registry
from conveyor.errors import RecipeInvalidError
from conveyor.recipes.graph import compile_recipe

GREETING: dict[str, Any] = {
    "name": "Greeting",
    "nodes": {
        "start": {"block": "chat_input", "config": {"fields": {"text": {"type": "text", "required": True}}}},
        "greet": {
            "block": "text_template",
            "config": {"template": "Hello, {{ text }}!"},
            "inputs": {"text": "start.text"},
        },
        "out": {"block": "recipe_output", "inputs": {"text": "greet.text"}},
    },
}


def problems(data: Any) -> list[dict[str, Any]]:
    with pytest.raises(RecipeInvalidError) as caught:
        compile_recipe(data, default_registry())
    details: list[dict[str, Any]] = caught.value.details
    return details


def test_greeting_compiles_in_dependency_order() -> None:
    graph = compile_recipe(GREETING, default_registry())
    assert graph.order == ["start", "greet", "out"]
    assert graph.start == "start" and graph.output == "out"
    assert set(graph.contract) == {"text"} and graph.contract["text"].required


def test_four_problems_are_all_named() -> None:
    recipe = {
        "name": "Broken",
        "nodes": {
            "start": {
                "block": "chat_input",
                "config": {"fields": {"text": {"type": "text"}, "images": {"type": "images"}}},
            },
            "a": {"block": "text_template", "config": {"template": "{{ x }}"}, "inputs": {"x": "b.text"}},
            "b": {"block": "text_template", "config": {"template": "{{ y }}"}, "inputs": {"y": "a.text"}},
            "mystery": {"block": "no_such_block", "inputs": {"x": "start.text"}},
            "replace": {
                "block": "text_replace",
                "config": {"find": "a", "replace": "b"},
                "inputs": {"text": "start.images"},
            },
            "split": {"block": "text_splitter"},
            "out": {"block": "recipe_output", "inputs": {"text": "a.text"}},
        },
    }
    found = {(p["node"], p["code"]) for p in problems(recipe)}
    assert ("mystery", "unknown_block") in found
    assert ("replace", "type_mismatch") in found
    assert ("split", "missing_input") in found
    assert any(code == "cycle" and node in ("a", "b") for node, code in found)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r["nodes"].pop("start"), (None, "missing_start")),
        (lambda r: r["nodes"].pop("out"), (None, "missing_output")),
        (lambda r: r["nodes"].__setitem__("start2", dict(r["nodes"]["start"])), ("start2", "duplicate_start")),
        (lambda r: r["nodes"].__setitem__("out2", dict(r["nodes"]["out"])), ("out2", "duplicate_output")),
        (lambda r: r["nodes"]["greet"]["inputs"].__setitem__("text", "nowhere.text"), ("greet", "unknown_node")),
        (lambda r: r["nodes"]["greet"]["inputs"].__setitem__("text", "start.nothing"), ("greet", "unknown_port")),
        (lambda r: r["nodes"]["greet"]["inputs"].__setitem__("text", "start"), ("greet", "invalid_reference")),
        (lambda r: r["nodes"]["greet"]["config"].__setitem__("bogus", 1), ("greet", "invalid_config")),
        (lambda r: r["nodes"]["out"]["inputs"].__setitem__("images", "greet.text"), ("out", "type_mismatch")),
    ],
)
def test_each_problem_names_its_node(change: Any, expected: tuple[str | None, str]) -> None:
    import copy

    recipe = copy.deepcopy(GREETING)
    change(recipe)
    assert expected in {(p["node"], p["code"]) for p in problems(recipe)}


def test_document_shape_errors_name_the_node() -> None:
    recipe = {"name": "x", "nodes": {"start": {"block": "chat_input", "unknown_key": 1}}}
    assert ("start", "invalid_recipe") in {(p["node"], p["code"]) for p in problems(recipe)}


def test_too_many_nodes() -> None:
    nodes = {f"n{i}": {"block": "input_text", "config": {"text": "x"}} for i in range(11)}
    with pytest.raises(RecipeInvalidError) as caught:
        compile_recipe({"name": "big", "nodes": nodes}, default_registry(), max_nodes=10)
    assert caught.value.details[0]["code"] == "too_many_nodes"


@st.composite
def random_graphs(draw: st.DrawFn) -> dict[str, list[str]]:
    count = draw(st.integers(min_value=1, max_value=8))
    names = [f"n{i}" for i in range(count)]
    return {name: draw(st.lists(st.sampled_from(names), max_size=3, unique=True)) for name in names}


def _has_cycle(edges: dict[str, list[str]]) -> bool:
    state: dict[str, int] = {}

    def visit(node: str) -> bool:
        if state.get(node) == 1:
            return True
        if state.get(node) == 2:
            return False
        state[node] = 1
        if any(visit(dep) for dep in edges[node]):
            return True
        state[node] = 2
        return False

    return any(visit(node) for node in edges)


@settings(max_examples=150, deadline=None)
@given(random_graphs())
def test_acyclic_iff_topological_order_exists(edges: dict[str, list[str]]) -> None:
    """Property: a recipe is refused for a cycle exactly when its graph has one; else the order respects edges."""
    nodes: dict[str, Any] = {
        "start": {"block": "chat_input", "config": {"fields": {"text": {"type": "text"}}}},
        "out": {"block": "recipe_output"},
    }
    for name, deps in edges.items():
        nodes[name] = {
            "block": "json_packer",
            "inputs": {f"in_{dep}": f"{dep}.json" for dep in deps},
        }
    recipe = {"name": "random", "nodes": nodes}
    if _has_cycle(edges):
        assert "cycle" in {p["code"] for p in problems(recipe)}
    else:
        graph = compile_recipe(recipe, default_registry())
        position = {node: i for i, node in enumerate(graph.order)}
        for name, deps in edges.items():
            assert all(position[dep] < position[name] for dep in deps)
