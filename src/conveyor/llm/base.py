"""The language-model interface every provider implements: chat requests, results, usage, streams."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Literal, Protocol

import orjson

from conveyor.errors import ModelError, ValidationError

log = logging.getLogger("conveyor.llm")

Role = Literal["system", "user", "assistant"]

# A problem quoted back to the model or into an error is cut here: jsonschema quotes the whole instance.
MAX_PROBLEM_CHARS = 500


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a conversation."""

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What to ask a model. Empty `model` means the provider's default; `json_schema` asks for structured output."""

    messages: tuple[ChatMessage, ...]
    model: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    json_schema: Mapping[str, Any] | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one answer took and what they cost (USD); `reported` is False when the provider sent no counts."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    reported: bool = True

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cost + other.cost,
            self.reported and other.reported,
        )


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A model's whole answer. `parsed` is the JSON value when the request had a schema (it matches it).

    `usage` sums every call the answer took, repairs of structured output included.
    """

    text: str
    finish_reason: str | None
    usage: Usage
    model: str = ""
    parsed: Any = field(default=None)


class ChatStream:
    """The text deltas of one streamed answer, an async iterator of `str`; `result` holds the whole answer after.

    Use it as `async with model.stream(request) as deltas: async for delta in deltas: ...` so the connection is
    released when the caller stops early. A provider builds it on a generator that yields the deltas and then
    one `ChatResult`.
    """

    def __init__(self, source: AsyncGenerator[str | ChatResult, None]) -> None:
        self._source = source
        self.result: ChatResult | None = None

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> str:
        item = await anext(self._source)
        if isinstance(item, ChatResult):
            self.result = item
            await self._source.aclose()
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        """Stops the answer and releases its connection (nothing happens once it has ended)."""
        await self._source.aclose()

    async def __aenter__(self) -> ChatStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class ChatModel(Protocol):
    """A language model: a whole answer (`chat`) or its text as it comes (`stream`)."""

    async def chat(self, request: ChatRequest) -> ChatResult:
        """Asks once (with retries and structured-output repairs) and returns the whole answer."""
        ...

    def stream(self, request: ChatRequest) -> ChatStream:
        """Asks and yields the answer's text deltas; its `result` (usage included) is set after the last one."""
        ...


CHECKED_SCHEMAS = 256  # schemas known valid, by their canonical JSON: checking one costs ~15 ms, a look-up ~20 µs
_checked: dict[bytes, None] = {}


def check_schema(schema: Mapping[str, Any]) -> None:
    """Checks that `schema` is a valid JSON Schema before any call; `ValidationError` (422) names the problem.

    Valid schemas are remembered (the few most recent), since a pipeline asks with the same schema many times.
    """
    from jsonschema import exceptions, validators

    try:
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:  # an integer beyond 64 bits, a non-string key: not something a schema may hold
        raise ValidationError(f"json_schema is not a valid JSON Schema: {_cut(str(exc))}") from None
    if key in _checked:
        return
    try:
        validators.validator_for(schema).check_schema(schema)
    except exceptions.SchemaError as exc:
        raise ValidationError(f"json_schema is not a valid JSON Schema: {_cut(exc.message)}") from None
    _checked[key] = None
    if len(_checked) > CHECKED_SCHEMAS:
        del _checked[next(iter(_checked))]


async def chat_with_repairs(
    answer: Callable[[ChatRequest], Awaitable[ChatResult]], request: ChatRequest, max_repairs: int
) -> ChatResult:
    """One answer from `answer` (a provider's single call); with a schema, an answer that is not valid JSON or does
    not match is sent back with the problem, at most `max_repairs` times. Usage sums every call."""
    if request.json_schema is not None:
        check_schema(request.json_schema)
    usage = Usage()
    messages = request.messages
    for repair in range(max_repairs + 1):
        result = await answer(replace(request, messages=messages))
        usage += result.usage
        if request.json_schema is None:
            return result
        value, problem = structured_problem(result.text, request.json_schema)
        if problem is None:
            return replace(result, usage=usage, parsed=value)
        if repair == max_repairs:
            raise ModelError(f"{problem} (after {repair} repairs)", details={"repairs": repair, "problem": problem})
        log.info("llm: repairing structured output (%s)", problem)
        retry = f"Your previous answer cannot be used: {problem}. Answer again with only the corrected JSON."
        messages = (*messages, ChatMessage("assistant", result.text), ChatMessage("user", retry))
    raise AssertionError("unreachable: the loop returns or raises")


def structured_problem(text: str, schema: Mapping[str, Any]) -> tuple[Any, str | None]:
    """Parses `text` as JSON and validates it against `schema`: (value, None), or (None, what is wrong)."""
    from jsonschema import exceptions, validators

    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return None, f"the answer is not valid JSON ({exc})"
    error = exceptions.best_match(validators.validator_for(schema)(schema).iter_errors(value))
    if error is None:
        return value, None
    where = "".join(f"[{part!r}]" for part in error.absolute_path) or "the top level"
    return None, _cut(f"the answer does not match the JSON schema at {where}: {error.message}")


def _cut(text: str) -> str:
    return text if len(text) <= MAX_PROBLEM_CHARS else text[: MAX_PROBLEM_CHARS - 1] + "…"
