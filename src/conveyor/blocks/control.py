"""Flow-control blocks: `Delay` waits, then passes its input on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import Field

from conveyor.blocks.base import BlockConfig, BlockContext, Port, PortType


class Delay:
    """Waits, then passes its input through unchanged.

    Config: `seconds` (0 to 3600, default 1). Input: `value` (optional, any). Output: `value` (the input, or
    null when there is none). The wait holds no worker thread, and cancelling the job ends it at once.
    """

    name: ClassVar[str] = "delay"

    class Config(BlockConfig):
        seconds: float = Field(default=1.0, ge=0, le=3600, description="How long to wait.")

    def ports(self, config: Delay.Config, wired: Iterable[str]) -> tuple[dict[str, Port], dict[str, Port]]:
        return {"value": Port(PortType.ANY, description="passed through")}, {"value": Port(PortType.ANY)}

    async def run(self, ctx: BlockContext, config: Delay.Config, inputs: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(config.seconds)
        return {"value": inputs.get("value")}
