"""The `run_recipe` block: another recipe run as one node of this one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import Field

from conveyor.blocks.base import BlockConfig, BlockContext, BlockError, Port, Ports, PortType


class RunRecipe:
    """Runs another recipe (its newest revision) inside this job and hands on its outputs.

    Config: `recipe`, the id or name of the recipe to run. Inputs: `inputs` (an object of the sub-recipe's
    inputs) and any other wired port, each passed as the input of that name. Outputs: `outputs` (the
    sub-recipe's output object) and `text` (its `text` output, if any). Nesting is limited by
    `CONVEYOR_LIMITS__MAX_RECIPE_DEPTH`; a recipe that runs itself stops there with an error.
    """

    name: ClassVar[str] = "run_recipe"

    class Config(BlockConfig):
        recipe: str = Field(min_length=1, max_length=200)

    def ports(self, config: Config, wired: Iterable[str]) -> tuple[Ports, Ports]:
        inputs: dict[str, Port] = {"inputs": Port(PortType.JSON)}
        for name in wired:
            inputs.setdefault(name, Port(PortType.ANY))
        return inputs, {"outputs": Port(PortType.JSON), "text": Port(PortType.TEXT)}

    async def run(self, ctx: BlockContext, config: Config, inputs: dict[str, Any]) -> dict[str, Any]:
        if ctx.run_recipe is None:
            raise BlockError("sub-recipes cannot run here", retryable=False)
        given = inputs.pop("inputs", None) or {}
        if not isinstance(given, dict):
            raise BlockError("input 'inputs' must be an object", retryable=False)
        outputs = await ctx.run_recipe(config.recipe, {**given, **inputs}, ctx.depth + 1)
        return {"outputs": outputs, "text": outputs.get("text")}
