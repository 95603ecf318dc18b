"""Tests for `conveyor.blocks.control`: the delay block."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from conveyor.blocks.base import BlockContext, PortType
from conveyor.blocks.control import Delay

Ctx = Callable[..., BlockContext]


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ({"value": {"a": [1, 2]}}, {"a": [1, 2]}),
        ({"value": "text"}, "text"),
        ({}, None),
    ],
)
async def test_delay_passes_its_value_through(make_ctx: Ctx, inputs: dict[str, Any], expected: Any) -> None:
    block = Delay()
    config = Delay.Config(seconds=0)
    ports_in, ports_out = block.ports(config, list(inputs))
    assert ports_in["value"].type == ports_out["value"].type == PortType.ANY
    assert not ports_in["value"].required
    assert await block.run(make_ctx(), config, inputs) == {"value": expected}


async def test_delay_waits(make_ctx: Ctx) -> None:
    started = time.monotonic()
    await Delay().run(make_ctx(), Delay.Config(seconds=0.1), {"value": 1})
    assert time.monotonic() - started >= 0.09  # the event loop may wake a clock tick early


async def test_delay_stops_at_once_when_cancelled(make_ctx: Ctx) -> None:
    task = asyncio.create_task(Delay().run(make_ctx(), Delay.Config(seconds=3600), {"value": 1}))
    await asyncio.sleep(0.01)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("config", [{"seconds": -1}, {"seconds": 3601}, {"seconds": "soon"}, {"ms": 10}])
def test_delay_config_refuses_bad_values(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Delay.Config(**config)


def test_delay_config_default_is_one_second() -> None:
    assert Delay.Config().seconds == 1.0
