"""Blocks marked `instant` run without a per-node timeout, which is sound only if their `run` never awaits."""

from __future__ import annotations

import ast
import inspect
import textwrap

from conveyor.blocks import default_registry


def _awaits(function: object) -> list[str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))  # type: ignore[arg-type]
    waits = (ast.Await, ast.AsyncFor, ast.AsyncWith)
    return [type(node).__name__ for node in ast.walk(tree) if isinstance(node, waits)]


def test_instant_blocks_never_await() -> None:
    registry = default_registry()
    instant = [registry.get(name) for name in registry.names() if getattr(registry.get(name), "instant", False)]
    assert {"chat_input", "recipe_output", "text_template"} <= {block.name for block in instant if block}
    for block in instant:
        assert _awaits(type(block).run) == [], f"{block.name} is marked instant but its run awaits"


def test_blocks_that_wait_are_not_instant() -> None:
    registry = default_registry()
    for name in ("delay", "http_request", "run_recipe"):
        block = registry.get(name)
        assert block is not None and not getattr(block, "instant", False)
        assert _awaits(type(block).run), f"{name} should await something"
