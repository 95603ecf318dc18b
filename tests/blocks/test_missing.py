"""Tests for `conveyor.blocks.missing`: the placeholder for a block Conveyor lacks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import ValidationError

from conveyor.blocks.base import BlockContext, BlockError, PortType
from conveyor.blocks.missing import MissingBlock

Ctx = Callable[..., BlockContext]


def test_ports_follow_the_wiring_and_the_configured_outputs() -> None:
    config = MissingBlock.Config(block="openai.simpleChatGPT", outputs=["text", "usage"])
    inputs, outputs = MissingBlock().ports(config, ["prompt", "instruction"])
    assert set(inputs) == {"prompt", "instruction"} and set(outputs) == {"text", "usage"}
    assert all(port.type == PortType.ANY and not port.required for port in [*inputs.values(), *outputs.values()])


async def test_running_it_fails_naming_the_block_and_is_not_retried(make_ctx: Ctx) -> None:
    config = MissingBlock.Config(block="openai.simpleChatGPT", reason="no language models yet")
    with pytest.raises(BlockError, match=r"'openai.simpleChatGPT' is not available in Conveyor: no language") as info:
        await MissingBlock().run(make_ctx(), config, {"prompt": "hi"})
    assert info.value.retryable is False


@pytest.mark.parametrize(
    "config",
    [{}, {"block": ""}, {"block": "x", "outputs": ["a", "a"]}, {"block": "x", "outputs": [""]}, {"block": "x", "y": 1}],
)
def test_config_refuses_bad_values(config: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        MissingBlock.Config.model_validate(config)
