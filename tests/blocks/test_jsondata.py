"""Tests for `conveyor.blocks.jsondata`: JSONata, the JSON packer and the JSON unpacker."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from conveyor.blocks.base import BlockContext, BlockInputError, PortType
from conveyor.blocks.jsondata import Jsonata, JsonPacker, JsonUnpacker

Ctx = Callable[..., BlockContext]

ORDER = {"order": {"items": [{"sku": "a", "price": 2, "qty": 3}, {"sku": "b", "price": 0.5, "qty": 2}]}}


async def evaluate(
    make_ctx: Ctx, expression: str, document: Any = None, block: Jsonata | None = None, **config: Any
) -> Any:
    block = block or Jsonata()
    cfg = Jsonata.Config(expression=expression, **config)
    return (await block.run(make_ctx(), cfg, {"json": document}))["result"]


# --- jsonata ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "document", "expected"),
    [
        ("order.items.sku", ORDER, ["a", "b"]),
        ("$sum(order.items.(price * qty))", ORDER, 7),
        ("order.items[price > 1].sku", ORDER, "a"),
        ("order.items{sku: qty}", ORDER, {"a": 3, "b": 2}),
        ("[order.items.sku]", ORDER, ["a", "b"]),
        ("nothing.here", ORDER, None),
        ("[1..3]", None, [1, 2, 3]),
        ("$uppercase($)", "abc", "ABC"),
        ("$count($)", [1, 2, 3], 3),
        ("{'doubled': $.($ * 2)}", [1, 2], {"doubled": [2, 4]}),
        ("$eval('1 + 2')", None, 3),
    ],
)
async def test_jsonata_evaluates(make_ctx: Ctx, expression: str, document: Any, expected: Any) -> None:
    assert await evaluate(make_ctx, expression, document) == expected


async def test_jsonata_result_is_plain_json(make_ctx: Ctx) -> None:
    result = await evaluate(make_ctx, "order.items.sku", ORDER)
    assert type(result) is list


@pytest.mark.parametrize(
    ("expression", "config", "message"),
    [
        ("(", {}, "does not parse"),
        ("function($x) { $x }", {}, "returned a function"),
        ("1 + 'a'", {}, "T2002"),
        ("[1..2000000]", {}, "more than 1,000,000 items"),
        ("$pad('', 999999999)", {}, r"\$pad result longer than"),
        ("$reduce([1..40], function($a, $b) { $a & $a }, 'xxxxxxxxxx')", {}, "string longer than"),
        ("$reduce([1..40], function($a, $b) { $append($a, $a) }, [1])", {}, "more than 1,000,000 items"),
        ("$replace('aaaaaaaaaaaaaaaaaaaaaaaaa', 'a', $pad('', 1000000, 'b'))", {}, r"\$replace result longer than"),
        ("($f := function($x) { $f($x) }; $f(1))", {"timeout_ms": 100}, "D1012"),
        ("($f := function($x) { $x > 0 ? 1 + $f($x - 1) : 0 }; $f(100000))", {"max_depth": 50}, "D1011"),
    ],
)
async def test_jsonata_failures_are_input_errors(
    make_ctx: Ctx, expression: str, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(BlockInputError, match=message) as caught:
        await evaluate(make_ctx, expression, **config)
    assert caught.value.retryable is False


async def test_jsonata_compiles_each_expression_once(make_ctx: Ctx) -> None:
    block = Jsonata()
    compiled = block.compile("a")
    assert await evaluate(make_ctx, "a", {"a": 1}, block) == 1
    assert block.compile("a") is compiled


async def test_jsonata_cached_expression_outlives_its_timeout(make_ctx: Ctx) -> None:
    # jsonata-python starts a timeout's clock when the expression is built, which would fail cached ones later.
    block = Jsonata()
    assert await evaluate(make_ctx, "$sum([1..10])", None, block, timeout_ms=200) == 55
    time.sleep(0.3)
    assert await evaluate(make_ctx, "$sum([1..10])", None, block, timeout_ms=200) == 55


async def test_jsonata_clock_is_the_running_expressions(make_ctx: Ctx) -> None:
    # jsonata-python reads $millis() from the expression built last on the thread, not the one running.
    block = Jsonata()
    await evaluate(make_ctx, "$millis()", None, block)
    block.compile("$other")
    time.sleep(0.05)
    before = int(time.time() * 1000)
    assert await evaluate(make_ctx, "$millis()", None, block) >= before - 1


def test_jsonata_ports() -> None:
    inputs, outputs = Jsonata().ports(Jsonata.Config(expression="a"), ["json"])
    assert inputs["json"].type == PortType.JSON and not inputs["json"].required
    assert outputs["result"].type == PortType.JSON


@pytest.mark.parametrize(
    "config",
    [
        {"expression": ""},
        {"expression": "a", "timeout_ms": 0},
        {"expression": "a", "timeout_ms": 5001},
        {"expression": "a", "timeout_ms": 10_000},
        {"expression": "a", "max_depth": 0},
        {"expression": "a", "bindings": {}},
        {},
    ],
)
def test_jsonata_config_refuses_bad_values(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Jsonata.Config(**config)


# --- json_packer and json_unpacker ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ({"a": 1, "b": "two", "c": [3]}, {"a": 1, "b": "two", "c": [3]}),
        ({"a": None, "b": False}, {"b": False}),
        ({}, {}),
    ],
)
async def test_json_packer(make_ctx: Ctx, inputs: dict[str, Any], expected: dict[str, Any]) -> None:
    block = JsonPacker()
    ports_in, ports_out = block.ports(JsonPacker.Config(), list(inputs))
    assert list(ports_in) == list(inputs)
    assert all(port.type == PortType.ANY for port in ports_in.values())
    assert ports_out["json"].type == PortType.JSON
    assert await block.run(make_ctx(), JsonPacker.Config(), inputs) == {"json": expected}


@pytest.mark.parametrize(
    ("keys", "document", "expected"),
    [
        (["a", "b"], {"a": 1, "b": {"c": 2}, "z": 0}, {"a": 1, "b": {"c": 2}}),
        (["missing"], {"a": 1}, {"missing": None}),
        ([], {"a": 1}, {}),
        (["with space"], {"with space": "ok"}, {"with space": "ok"}),
    ],
)
async def test_json_unpacker(make_ctx: Ctx, keys: list[str], document: Any, expected: dict[str, Any]) -> None:
    block = JsonUnpacker()
    config = JsonUnpacker.Config(keys=keys)
    ports_in, ports_out = block.ports(config, ["json"])
    assert ports_in["json"].required
    assert list(ports_out) == keys
    assert await block.run(make_ctx(), config, {"json": document}) == expected


@pytest.mark.parametrize("document", [[{"a": 1}], "{}", 3, None])
async def test_json_unpacker_needs_an_object(make_ctx: Ctx, document: Any) -> None:
    with pytest.raises(BlockInputError, match="needs a JSON object"):
        await JsonUnpacker().run(make_ctx(), JsonUnpacker.Config(keys=["a"]), {"json": document})


@pytest.mark.parametrize(
    "config",
    [
        {"keys": ["a", "a"]},
        {"keys": [""]},
        {"keys": ["x" * 201]},
        {"keys": [f"k{i}" for i in range(201)]},
        {"keys": "a,b"},
        {"keys": ["a"], "fields_list": "a:text"},
    ],
)
def test_json_unpacker_config_refuses_bad_values(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        JsonUnpacker.Config(**config)


def test_json_packer_config_refuses_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        JsonPacker.Config(fields_list="a:text")  # type: ignore[call-arg]


JSON_VALUES = st.recursive(
    st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10,
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(values=st.dictionaries(st.text(min_size=1, max_size=20), JSON_VALUES, max_size=8))
async def test_json_packer_then_unpacker_round_trips(make_ctx: Ctx, values: dict[str, Any]) -> None:
    ctx = make_ctx()
    packed = await JsonPacker().run(ctx, JsonPacker.Config(), dict(values))
    unpacked = await JsonUnpacker().run(ctx, JsonUnpacker.Config(keys=list(values)), {"json": packed["json"]})
    assert unpacked == values
