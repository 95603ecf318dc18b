"""Tests for `conveyor.blocks.inputs`: number, boolean and text constants with an optional override."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from conveyor.blocks.base import BlockContext, BlockInputError, PortType
from conveyor.blocks.inputs import BooleanInput, InputText, JsonInput, NumberInput
from conveyor.blocks.text import MAX_TEXT_CHARS

Ctx = Callable[..., BlockContext]


@pytest.mark.parametrize(
    ("config", "inputs", "expected"),
    [
        ({"value": 3}, {}, 3),
        ({"value": 2.5}, {"number": None}, 2.5),
        ({}, {}, 0),
        ({"value": 3}, {"number": 7}, 7),
        ({"value": 3}, {"number": -1.25}, -1.25),
        ({}, {"number": " 42 "}, 42),
        ({}, {"number": "1e3"}, 1000.0),
        ({"min": 0, "max": 10, "value": 5}, {"number": 10}, 10),
    ],
)
async def test_number_input(make_ctx: Ctx, config: dict[str, Any], inputs: dict[str, Any], expected: float) -> None:
    block = NumberInput()
    cfg = NumberInput.Config(**config)
    ports_in, ports_out = block.ports(cfg, list(inputs))
    assert ports_in["number"].type == PortType.NUMBER and not ports_in["number"].required
    assert ports_out["number"].type == PortType.NUMBER
    out = await block.run(make_ctx(), cfg, inputs)
    assert out == {"number": expected}
    assert type(out["number"]) is type(expected)


@pytest.mark.parametrize(
    ("config", "given", "message"),
    [
        ({}, "abc", "needs a number"),
        ({}, True, "got a boolean"),
        ({}, float("nan"), "finite number"),
        ({}, float("inf"), "finite number"),
        ({}, "inf", "finite number"),
        ({}, {"n": 1}, "finite number"),
        ({"min": 0, "max": 10, "value": 5}, 11, "above the maximum 10"),
        ({"min": 0, "max": 10, "value": 5}, "-1", "below the minimum 0"),
    ],
)
async def test_number_input_refuses(make_ctx: Ctx, config: dict[str, Any], given: Any, message: str) -> None:
    with pytest.raises(BlockInputError, match=message):
        await NumberInput().run(make_ctx(), NumberInput.Config(**config), {"number": given})


@pytest.mark.parametrize(
    "config",
    [
        {"value": float("nan")},
        {"value": float("inf")},
        {"value": True},
        {"value": "three"},
        {"value": 5, "max": 3},
        {"value": 0, "min": 3},
        {"value": 2, "min": 3, "max": 1},
        {"step": 0},
        {"step": -1},
        {"format": "integer"},
    ],
)
def test_number_input_config_refuses_bad_values(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        NumberInput.Config(**config)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(number=st.integers() | st.floats(allow_nan=False, allow_infinity=False))
async def test_number_input_passes_any_finite_number_through(make_ctx: Ctx, number: float) -> None:
    out = await NumberInput().run(make_ctx(), NumberInput.Config(), {"number": number})
    assert out["number"] == number


@pytest.mark.parametrize(
    ("config", "given", "expected"),
    [
        ({}, None, False),
        ({"value": True}, None, True),
        ({"value": True}, False, False),
        ({}, True, True),
        ({}, 1, True),
        ({}, 0.0, False),
        ({}, " TRUE ", True),
        ({}, "yes", True),
        ({}, "on", True),
        ({}, "Off", False),
        ({}, "0", False),
        ({}, "", False),
    ],
)
async def test_boolean_input(make_ctx: Ctx, config: dict[str, Any], given: Any, expected: bool) -> None:
    block = BooleanInput()
    cfg = BooleanInput.Config(**config)
    ports_in, ports_out = block.ports(cfg, [])
    assert ports_in["boolean"].type == ports_out["boolean"].type == PortType.BOOLEAN
    assert await block.run(make_ctx(), cfg, {"boolean": given}) == {"boolean": expected}


@pytest.mark.parametrize("given", ["maybe", 2, [True], {"value": True}])
async def test_boolean_input_refuses(make_ctx: Ctx, given: Any) -> None:
    with pytest.raises(BlockInputError, match="needs true or false"):
        await BooleanInput().run(make_ctx(), BooleanInput.Config(), {"boolean": given})


@pytest.mark.parametrize("config", [{"value": "maybe"}, {"value": True, "default": False}])
def test_boolean_input_config_refuses_bad_values(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        BooleanInput.Config(**config)


@pytest.mark.parametrize(
    ("config", "given", "expected"),
    [
        ({"text": "hello"}, None, "hello"),
        ({}, None, ""),
        ({"text": "hello"}, "override", "override"),
        ({"text": "hello"}, "", ""),
        ({}, 3, "3"),
        ({}, False, "false"),
        ({}, {"a": [1]}, '{"a": [1]}'),
    ],
)
async def test_input_text(make_ctx: Ctx, config: dict[str, Any], given: Any, expected: str) -> None:
    block = InputText()
    cfg = InputText.Config(**config)
    ports_in, ports_out = block.ports(cfg, [])
    assert ports_in["text"].type == ports_out["text"].type == PortType.TEXT
    assert await block.run(make_ctx(), cfg, {"text": given}) == {"text": expected}


async def test_input_text_bounds_its_input(make_ctx: Ctx) -> None:
    with pytest.raises(BlockInputError, match="longer than"):
        await InputText().run(make_ctx(), InputText.Config(), {"text": "x" * (MAX_TEXT_CHARS + 1)})


@pytest.mark.parametrize("config", [{"text": 3}, {"text": "x" * 1_000_001}, {"value": "x"}])
def test_input_text_config_refuses_bad_values(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        InputText.Config(**config)


@pytest.mark.parametrize(
    ("config", "inputs", "expected"),
    [
        ({}, {}, None),
        ({"json": {"kind": "person"}}, {}, {"kind": "person"}),
        ({"json": [1, 2]}, {"json": None}, [1, 2]),
        ({"json": {"a": 1}}, {"json": {"b": 2}}, {"b": 2}),
        ({"json": {"a": 1}}, {"json": 0}, 0),
        ({}, {"json": "text"}, "text"),
    ],
)
async def test_json_input(make_ctx: Ctx, config: dict[str, Any], inputs: dict[str, Any], expected: Any) -> None:
    block = JsonInput()
    cfg = JsonInput.Config.model_validate(config)
    ports_in, ports_out = block.ports(cfg, list(inputs))
    assert ports_in["json"].type == ports_out["json"].type == PortType.JSON and not ports_in["json"].required
    assert await block.run(make_ctx(), cfg, inputs) == {"json": expected}


def test_json_input_config_is_written_json_and_refuses_other_keys() -> None:
    assert JsonInput.Config.model_validate({"json": {"a": 1}}).model_dump(by_alias=True) == {"json": {"a": 1}}
    assert "json" in JsonInput.Config.model_json_schema()["properties"]
    with pytest.raises(ValidationError):
        JsonInput.Config.model_validate({"value": 1})
