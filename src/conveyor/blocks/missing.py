"""The `missing_block` placeholder: stands in for a block this server does not have (e.g. from an Omnitool import)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import Field, field_validator

from conveyor.blocks.base import BlockConfig, BlockContext, BlockError, Port, Ports, PortType


class MissingBlock:
    """Keeps the place of a block Conveyor does not have, so a recipe that uses one can still be saved.

    Config: `block` (the missing block's name, e.g. `openai.simpleChatGPT`), `outputs` (the names of its
    outputs that other nodes read, up to 200) and `reason` (why it is missing). Inputs: one `any` input per
    wired name. Outputs: one `any` output per name in `outputs`. Such a node is meant to be disabled (an
    Omnitool import with `allow_missing` makes it so), so nodes fed by it see those inputs as absent; run
    anyway, it fails the job naming the missing block.
    """

    name: ClassVar[str] = "missing_block"
    instant: ClassVar[bool] = True

    class Config(BlockConfig):
        block: str = Field(min_length=1, max_length=200, description="The missing block's name.")
        outputs: list[str] = Field(default_factory=list, max_length=200, description="Output names others read.")
        reason: str = Field(default="", max_length=2000, description="Why the block is missing.")

        @field_validator("outputs")
        @classmethod
        def _distinct_names(cls, outputs: list[str]) -> list[str]:
            if any(not name or len(name) > 200 for name in outputs):
                raise ValueError("each output name must have 1 to 200 characters")
            if len(set(outputs)) != len(outputs):
                raise ValueError("output names must be distinct")
            return outputs

    def ports(self, config: Config, wired: Iterable[str]) -> tuple[Ports, Ports]:
        return {name: Port(PortType.ANY) for name in wired}, {name: Port(PortType.ANY) for name in config.outputs}

    async def run(self, ctx: BlockContext, config: Config, inputs: dict[str, Any]) -> dict[str, Any]:
        reason = f": {config.reason}" if config.reason else ""
        raise BlockError(f"block {config.block!r} is not available in Conveyor{reason}", retryable=False)
