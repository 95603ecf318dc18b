"""Constant-value blocks: a number, a boolean, a text or a JSON value set in the recipe, which an input of the
same name may override at run time (so a recipe's caller can supply it)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import Field, FiniteFloat, field_validator, model_validator

from conveyor.blocks.base import BlockConfig, BlockContext, BlockInputError, Port, PortType
from conveyor.blocks.text import MAX_TEXT_CHARS, to_text

Number = int | FiniteFloat

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off", ""})


def _as_number(value: Any) -> int | float:
    """A number from a number or its text; `BlockInputError` for anything else."""
    if isinstance(value, bool):
        raise BlockInputError("number_input needs a number, got a boolean")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if text.lstrip("+-").isdigit() and len(text) <= 30 else float(text)
        except ValueError:
            raise BlockInputError(f"number_input needs a number, got {value[:50]!r}") from None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise BlockInputError(f"number_input needs a finite number, got {to_text(value)[:50]!r}")


class NumberInput:
    """A number set in the recipe, optionally overridden by the `number` input.

    Config: `value` (default 0), `min` and `max` (optional bounds, inclusive), `step` (the increment a form
    offers; a hint for the UI, not enforced). Input: `number` (optional; a number or its text). Output:
    `number`. A number outside `min`..`max` fails the node.
    """

    name: ClassVar[str] = "number_input"
    instant: ClassVar[bool] = True

    class Config(BlockConfig):
        value: Number = Field(default=0, description="The number.")
        min: Number | None = Field(default=None, description="Smallest number accepted.")
        max: Number | None = Field(default=None, description="Largest number accepted.")
        step: Number | None = Field(default=None, gt=0, description="Increment offered by forms (a UI hint).")

        @field_validator("value", "min", "max", "step", mode="before")
        @classmethod
        def _not_boolean(cls, value: Any) -> Any:
            if isinstance(value, bool):
                raise ValueError("must be a number, not a boolean")
            return value

        @model_validator(mode="after")
        def _value_in_bounds(self) -> NumberInput.Config:
            if self.min is not None and self.max is not None and self.min > self.max:
                raise ValueError("min must not be greater than max")
            if (self.min is not None and self.value < self.min) or (self.max is not None and self.value > self.max):
                raise ValueError("value must lie between min and max")
            return self

    def ports(self, config: NumberInput.Config, wired: Iterable[str]) -> tuple[dict[str, Port], dict[str, Port]]:
        return {"number": Port(PortType.NUMBER, description="overrides the configured value")}, {
            "number": Port(PortType.NUMBER)
        }

    async def run(self, ctx: BlockContext, config: NumberInput.Config, inputs: dict[str, Any]) -> dict[str, Any]:
        given = inputs.get("number")
        number = config.value if given is None else _as_number(given)
        if config.min is not None and number < config.min:
            raise BlockInputError(f"number_input: {number} is below the minimum {config.min}")
        if config.max is not None and number > config.max:
            raise BlockInputError(f"number_input: {number} is above the maximum {config.max}")
        return {"number": number}


class BooleanInput:
    """A boolean set in the recipe, optionally overridden by the `boolean` input.

    Config: `value` (default false). Input: `boolean` (optional; a boolean, 0 or 1, or the text `true`/`false`,
    `yes`/`no`, `on`/`off`, `1`/`0`, in any case). Output: `boolean`. Anything else fails the node.
    """

    name: ClassVar[str] = "boolean_input"
    instant: ClassVar[bool] = True

    class Config(BlockConfig):
        value: bool = Field(default=False, description="The boolean.")

    def ports(self, config: BooleanInput.Config, wired: Iterable[str]) -> tuple[dict[str, Port], dict[str, Port]]:
        return {"boolean": Port(PortType.BOOLEAN, description="overrides the configured value")}, {
            "boolean": Port(PortType.BOOLEAN)
        }

    async def run(self, ctx: BlockContext, config: BooleanInput.Config, inputs: dict[str, Any]) -> dict[str, Any]:
        given = inputs.get("boolean")
        if given is None:
            return {"boolean": config.value}
        if isinstance(given, bool):
            return {"boolean": given}
        if isinstance(given, int | float) and given in (0, 1):
            return {"boolean": bool(given)}
        if isinstance(given, str):
            word = given.strip().lower()
            if word in _TRUE:
                return {"boolean": True}
            if word in _FALSE:
                return {"boolean": False}
        raise BlockInputError(f"boolean_input needs true or false, got {to_text(given)[:50]!r}")


class InputText:
    """A text set in the recipe, optionally overridden by the `text` input.

    Config: `text` (default empty, up to 1,000,000 characters). Input: `text` (optional; other kinds of value
    are rendered as text: numbers as written, booleans `true`/`false`, lists and objects as JSON). Output:
    `text`. An input given as empty text overrides the configured text; an input with no value does not.
    """

    name: ClassVar[str] = "input_text"
    instant: ClassVar[bool] = True

    class Config(BlockConfig):
        text: str = Field(default="", max_length=1_000_000, description="The text.")

    def ports(self, config: InputText.Config, wired: Iterable[str]) -> tuple[dict[str, Port], dict[str, Port]]:
        return {"text": Port(PortType.TEXT, description="overrides the configured text")}, {"text": Port(PortType.TEXT)}

    async def run(self, ctx: BlockContext, config: InputText.Config, inputs: dict[str, Any]) -> dict[str, Any]:
        given = inputs.get("text")
        if given is None:
            return {"text": config.text}
        text = to_text(given)
        if len(text) > MAX_TEXT_CHARS:
            raise BlockInputError(f"input_text: text is longer than {MAX_TEXT_CHARS} characters")
        return {"text": text}


class JsonInput:
    """A JSON value set in the recipe, optionally overridden by the `json` input (Omnitool's "JSON Input").

    Config: `json` (any JSON value, default null). Input: `json` (optional, any JSON value). Output: `json`,
    the input when it has a value, else the configured value.
    """

    name: ClassVar[str] = "json_input"
    instant: ClassVar[bool] = True

    class Config(BlockConfig):
        json_value: Any = Field(default=None, alias="json", description="The JSON value.")

    def ports(self, config: JsonInput.Config, wired: Iterable[str]) -> tuple[dict[str, Port], dict[str, Port]]:
        return {"json": Port(PortType.JSON, description="overrides the configured value")}, {
            "json": Port(PortType.JSON)
        }

    async def run(self, ctx: BlockContext, config: JsonInput.Config, inputs: dict[str, Any]) -> dict[str, Any]:
        given = inputs.get("json")
        return {"json": config.json_value if given is None else given}
