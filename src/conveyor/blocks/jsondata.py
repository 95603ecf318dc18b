"""JSON blocks: JSONata queries, and packing inputs into one object or unpacking an object into outputs.

Named `jsondata` rather than `json` so that it can never be mistaken for the standard library's module.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import jsonata as jsonata_lib
from jsonata import JException
from pydantic import Field, field_validator

from conveyor.blocks.base import BlockConfig, BlockContext, BlockInputError, Port, PortType
from conveyor.blocks.sandbox import LruCache, rendered_size
from conveyor.blocks.text import MAX_TEXT_CHARS

MAX_JSONATA_ITEMS = 1_000_000
"""Largest array a JSONata range may make, and most values a JSONata result may hold."""


class _JsonataLimit(Exception):
    """A JSONata expression went past a size limit (raised from inside the evaluator)."""


def _too_long(what: str) -> _JsonataLimit:
    return _JsonataLimit(f"{what} longer than {MAX_TEXT_CHARS:,} characters")


def _check_native_call(name: str, args: list[Any]) -> None:
    """Refuses a call of a JSONata function whose result would be too large, before it runs."""
    if name == "pad" and len(args) > 1 and isinstance(args[1], int | float) and abs(args[1]) > MAX_TEXT_CHARS:
        raise _too_long("$pad result")
    elif name == "join" and args and isinstance(args[0], list):
        separator = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
        size = sum(len(item) for item in args[0] if isinstance(item, str)) + len(separator) * len(args[0])
        if size > MAX_TEXT_CHARS:
            raise _too_long("$join result")
    elif name == "string" and args and rendered_size(args[0], MAX_TEXT_CHARS, indent=2) > MAX_TEXT_CHARS:
        raise _too_long("$string result")
    elif name == "replace" and len(args) > 2 and all(isinstance(arg, str) for arg in args[:3]) and args[1]:
        text, old, new = args[0], args[1], args[2]
        if len(text) + text.count(old) * (len(new) - len(old)) > MAX_TEXT_CHARS:
            raise _too_long("$replace result")


class _BoundedJsonata(jsonata_lib.Jsonata):  # type: ignore[misc]  # jsonata-python has no type hints
    """jsonata-python's evaluator with size limits on ranges, string concatenation and the functions that can
    blow a value up (`$pad`, `$join`, `$string`, `$replace`)."""

    def evaluate_range_expression(self, lhs: Any, rhs: Any) -> Any:
        if isinstance(lhs, int) and isinstance(rhs, int) and rhs - lhs + 1 > MAX_JSONATA_ITEMS:
            raise _JsonataLimit(f"range [{lhs}..{rhs}] has more than {MAX_JSONATA_ITEMS:,} items")
        return super().evaluate_range_expression(lhs, rhs)

    def evaluate_string_concat(self, lhs: Any, rhs: Any) -> str:
        result: str = super().evaluate_string_concat(lhs, rhs)
        if len(result) > MAX_TEXT_CHARS:
            raise _too_long("string")
        return result

    def apply_inner(self, proc: Any, args: Any, input: Any, environment: Any) -> Any:
        if isinstance(proc, jsonata_lib.Jsonata.JNativeFunction) and isinstance(args, list):
            _check_native_call(proc.function_name, args)
        result = super().apply_inner(proc, args, input, environment)
        if isinstance(result, str) and len(result) > MAX_TEXT_CHARS:
            raise _too_long("string")
        if isinstance(result, list) and len(result) > MAX_JSONATA_ITEMS:
            raise _JsonataLimit(f"array has more than {MAX_JSONATA_ITEMS:,} items")
        return result


def _plain_json(value: Any, budget: list[int]) -> Any:
    """JSONata's result as plain JSON values (its sequences are list subclasses), counting values against
    `budget`; a function is not a value."""
    budget[0] -= 1
    if budget[0] < 0:
        raise BlockInputError(f"jsonata: result has more than {MAX_JSONATA_ITEMS:,} values")
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, dict):
        return {str(key): _plain_json(item, budget) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain_json(item, budget) for item in value]
    raise BlockInputError("jsonata: the expression returned a function, not a JSON value")


class Jsonata:
    """Evaluates a JSONata expression (https://jsonata.org) against the input JSON.

    Config: `expression` (compiled once and cached), `timeout_ms` (at most 5000, default 1000), `max_depth`
    (deepest evaluation nesting, default 200). Input: `json` (any JSON value; absent means no input). Output:
    `result` (null when the expression matches nothing).

    Evaluation runs in the node's own process and stops with an error past `timeout_ms` or `max_depth`, checked
    at every step of the expression. Blocks run on the server's event loop, which no other job or request can
    use while an expression evaluates, so `timeout_ms` stays short. Ranges and arrays are limited to 1,000,000
    items, strings to 10,000,000 characters, and the result to 1,000,000 values.
    """

    name: ClassVar[str] = "jsonata"
    instant: ClassVar[bool] = True

    class Config(BlockConfig):
        expression: str = Field(min_length=1, max_length=100_000, description="JSONata expression.")
        timeout_ms: int = Field(default=1000, ge=1, le=5000, description="Longest time one evaluation may take.")
        max_depth: int = Field(default=200, ge=1, le=1000, description="Deepest nesting of evaluation steps.")

    def __init__(self) -> None:
        self._compiled: LruCache[str, _BoundedJsonata] = LruCache()

    def compile(self, expression: str) -> _BoundedJsonata:
        """The parsed expression (cached); `BlockInputError` when it does not parse."""
        compiled = self._compiled.get(expression)
        if compiled is not None:
            return compiled
        try:
            compiled = _BoundedJsonata(expression)
        except JException as exc:
            raise BlockInputError(f"jsonata: expression does not parse: {exc} (at {exc.location})") from exc
        except RecursionError as exc:
            raise BlockInputError("jsonata: expression nests too deeply") from exc
        except Exception as exc:  # jsonata-python's parser fails some malformed input with other errors
            raise BlockInputError(f"jsonata: expression does not parse: {type(exc).__name__}: {exc}") from exc
        return self._compiled.put(expression, compiled)

    def ports(self, config: Jsonata.Config, wired: Iterable[str]) -> tuple[dict[str, Port], dict[str, Port]]:
        return {"json": Port(PortType.JSON, description="input document")}, {"result": Port(PortType.JSON)}

    async def run(self, ctx: BlockContext, config: Jsonata.Config, inputs: dict[str, Any]) -> dict[str, Any]:
        compiled = self.compile(config.expression)
        # A fresh frame per evaluation carries this run's time and depth bounds: jsonata-python starts a
        # bound's clock when it is made, so bounds on the cached expression would expire after its first use.
        bounds = jsonata_lib.Jsonata.Frame(None)
        bounds.set_runtime_bounds(config.timeout_ms, config.max_depth)
        # jsonata-python evaluates with the instance last made on this thread ($now() reads its clock), so
        # point it at ours.
        jsonata_lib.Jsonata.CURRENT.jsonata = compiled
        try:
            result = compiled.evaluate(inputs.get("json"), bounds)
            return {"result": _plain_json(result, [MAX_JSONATA_ITEMS])}
        except JException as exc:
            raise BlockInputError(f"jsonata: {exc.error}: {exc}") from exc
        except _JsonataLimit as exc:
            raise BlockInputError(f"jsonata: {exc}") from exc
        except RecursionError as exc:
            raise BlockInputError("jsonata: evaluation nests too deeply") from exc
        except BlockInputError:
            raise
        except Exception as exc:  # the evaluator fails some expressions with Python errors; they are not transient
            raise BlockInputError(f"jsonata: {type(exc).__name__}: {exc}") from exc


class JsonPacker:
    """Packs the node's inputs into one JSON object, one key per wired input.

    Config: none. Inputs: one `any` input per wired name (the recipe decides the names). Output: `json`, an
    object mapping each input name to its value; an input with no value is left out.
    """

    name: ClassVar[str] = "json_packer"
    instant: ClassVar[bool] = True

    class Config(BlockConfig):
        pass

    def ports(self, config: JsonPacker.Config, wired: Iterable[str]) -> tuple[dict[str, Port], dict[str, Port]]:
        return {name: Port(PortType.ANY) for name in wired}, {"json": Port(PortType.JSON)}

    async def run(self, ctx: BlockContext, config: JsonPacker.Config, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"json": {name: value for name, value in inputs.items() if value is not None}}


class JsonUnpacker:
    """Unpacks chosen keys of a JSON object into separate outputs.

    Config: `keys` (the key names, up to 200, each becoming an `any` output of the same name). Input: `json`
    (an object). Outputs: one per key, holding that key's value, or null when the object has no such key. An
    input that is not an object fails the node.
    """

    name: ClassVar[str] = "json_unpacker"
    instant: ClassVar[bool] = True

    class Config(BlockConfig):
        keys: list[str] = Field(default_factory=list, max_length=200, description="Keys to unpack, one output each.")

        @field_validator("keys")
        @classmethod
        def _distinct_names(cls, keys: list[str]) -> list[str]:
            for key in keys:
                if not key or len(key) > 200:
                    raise ValueError("each key must have 1 to 200 characters")
            if len(set(keys)) != len(keys):
                raise ValueError("keys must be distinct")
            return keys

    def ports(self, config: JsonUnpacker.Config, wired: Iterable[str]) -> tuple[dict[str, Port], dict[str, Port]]:
        return {"json": Port(PortType.JSON, required=True)}, {key: Port(PortType.ANY) for key in config.keys}

    async def run(self, ctx: BlockContext, config: JsonUnpacker.Config, inputs: dict[str, Any]) -> dict[str, Any]:
        document = inputs.get("json")
        if not isinstance(document, dict):
            raise BlockInputError(f"json_unpacker needs a JSON object, got {type(document).__name__}")
        return {key: document.get(key) for key in config.keys}
