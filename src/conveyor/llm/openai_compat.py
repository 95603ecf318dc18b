"""A chat model behind any OpenAI-compatible `/chat/completions` API (OpenAI, vLLM, Ollama, llama.cpp's server).

Every request goes through the guarded client, so the address rules of `net` apply to `base_url` too. A call is
retried on 429, 500, 502, 503 and 504 answers and on failed connections, with exponential backoff and jitter,
waiting at least what `Retry-After` asks (up to a bound). Structured output asks for `response_format:
json_schema` (or puts the schema in a system message for servers without it), then parses and validates the
answer anyway, sending it back with the problem for a corrected one at most `max_repairs` times.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, Mapping
from contextlib import AsyncExitStack, aclosing
from dataclasses import replace
from typing import Any, cast

import orjson
from pydantic import SecretStr

from conveyor.errors import ModelError, OutboundFailedError
from conveyor.llm.base import (
    ChatMessage,
    ChatRequest,
    ChatResult,
    ChatStream,
    Usage,
    chat_with_repairs,
    check_schema,
    structured_problem,
)
from conveyor.net import GuardedClient, NetStream, retry_after_s
from conveyor.settings import LlmSettings

log = logging.getLogger("conveyor.llm")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
ERROR_BODY_BYTES = 64 * 1024
MAX_BACKOFF_S = 30.0
SCHEMA_NAME = "result"
Prices = Mapping[str, tuple[float, float]]


class OpenAICompatModel:
    """A `ChatModel` over an OpenAI-compatible HTTP API (see the module docstring)."""

    def __init__(
        self,
        http: GuardedClient,
        base_url: str,
        api_key: SecretStr | None,
        default_model: str,
        *,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        max_repairs: int = 2,
        prices: Prices | None = None,
        native_schema: bool = True,
        max_response_bytes: int = 8 * 1024 * 1024,
        backoff_s: float = 0.5,
        max_retry_after_s: float = 60.0,
    ) -> None:
        self.http = http
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.default_model = default_model
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_repairs = max_repairs
        self.prices: Prices = prices or {}
        self.native_schema = native_schema
        self.max_response_bytes = max_response_bytes
        self.backoff_s = backoff_s
        self.max_retry_after_s = max_retry_after_s
        self._secret = api_key.get_secret_value() if api_key is not None else ""
        self._headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self._secret:
            self._headers["Authorization"] = f"Bearer {self._secret}"

    @classmethod
    def from_settings(cls, http: GuardedClient, settings: LlmSettings) -> OpenAICompatModel:
        """The provider `llm` settings describe."""
        return cls(
            http,
            settings.base_url,
            settings.api_key,
            settings.model,
            timeout_s=settings.timeout_s,
            max_retries=settings.max_retries,
            max_repairs=settings.max_repairs,
            prices=settings.prices,
        )

    async def chat(self, request: ChatRequest) -> ChatResult:
        """Asks for a whole answer; with a schema, repairs invalid output up to `max_repairs` times."""
        return await chat_with_repairs(self._complete, request, self.max_repairs)

    def stream(self, request: ChatRequest) -> ChatStream:
        """Streams the answer's text deltas; a schema'd answer is validated at the end (no repairs mid-stream)."""
        return ChatStream(self._stream(request))

    async def _complete(self, request: ChatRequest) -> ChatResult:
        """One answer from one call (retried on transient failures)."""
        async with AsyncExitStack() as stack:
            response = await self._open(stack, self._body(request, stream=False))
            content = await self._read(response, self.max_response_bytes)
        try:
            answer = orjson.loads(content)
            choice = answer["choices"][0]
            text, refusal = choice["message"].get("content"), choice["message"].get("refusal")
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise ModelError(f"{self._where()}: the answer is not a chat completion") from None
        if not isinstance(text, str):
            raise ModelError(f"{self._where()}: no text in the answer" + (f" (refused: {refusal})" if refusal else ""))
        model = answer.get("model") or request.model or self.default_model
        return ChatResult(text, choice.get("finish_reason"), self._usage(answer.get("usage"), request, model), model)

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[str | ChatResult, None]:
        if request.json_schema is not None:
            check_schema(request.json_schema)
        parts: list[str] = []
        finish: str | None = None
        raw_usage: Any = None
        model = ""
        done = False
        async with AsyncExitStack() as stack:
            response = await self._open(stack, self._body(request, stream=True))
            events = await stack.enter_async_context(aclosing(self._events(response)))
            async for event in events:
                if event == "[DONE]":
                    done = True
                    break
                chunk = _json_event(event, self._where())
                model = chunk.get("model") or model
                raw_usage = chunk.get("usage") or raw_usage
                deltas, finish = _chunk_choices(chunk, finish, self._where())
                for delta in deltas:
                    parts.append(delta)
                    yield delta
        if not done and finish is None:
            raise ModelError(f"{self._where()}: the stream ended before the answer did")
        text = "".join(parts)
        model = model or request.model or self.default_model
        result = ChatResult(text, finish, self._usage(raw_usage, request, model), model)
        if request.json_schema is not None:
            value, problem = structured_problem(text, request.json_schema)
            if problem is not None:
                raise ModelError(problem, details={"problem": problem})
            result = replace(result, parsed=value)
        yield result

    async def _events(self, response: NetStream) -> AsyncGenerator[str, None]:
        """The `data` of each Server-Sent Event, within the size limit (the deadline bounds the time)."""
        pending: list[bytes] = []
        data: list[str] = []
        total = 0
        async with aclosing(_chunks(response)) as body:
            async for chunk in body:
                total += len(chunk)
                if total > self.max_response_bytes:
                    raise ModelError(f"{self._where()}: the answer is over {self.max_response_bytes} bytes")
                pending.append(chunk)
                if b"\n" not in chunk:
                    continue  # joined once a line ends, so a long line costs linear time, not quadratic
                *lines, rest = b"".join(pending).split(b"\n")
                pending = [rest]
                for line in lines:
                    text = line.rstrip(b"\r").decode("utf-8", "replace")
                    if text:
                        # `data:` lines make the event; comments (`: ping`) and other fields are not ours.
                        if text.startswith("data:"):
                            data.append(text[5:].removeprefix(" "))
                    elif data:
                        yield "\n".join(data)
                        data = []
        rest = b"".join(pending)
        if rest.startswith(b"data:"):
            data.append(rest[5:].decode("utf-8", "replace").strip())
        if data:
            yield "\n".join(data)

    def _body(self, request: ChatRequest, *, stream: bool) -> bytes:
        messages = list(request.messages)
        body: dict[str, Any] = {"model": request.model or self.default_model}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.stop:
            body["stop"] = list(request.stop)
        if request.json_schema is not None:
            if self.native_schema:
                schema = {"name": SCHEMA_NAME, "schema": dict(request.json_schema), "strict": True}
                body["response_format"] = {"type": "json_schema", "json_schema": schema}
            else:
                messages.insert(0, ChatMessage("system", _schema_prompt(request.json_schema)))
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body["messages"] = [{"role": m.role, "content": m.content} for m in messages]
        return orjson.dumps(body)

    async def _open(self, stack: AsyncExitStack, body: bytes) -> NetStream:
        """POSTs `body` until a 200 answer, retrying transient failures; the answer stays open on `stack`."""
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            try:
                async with AsyncExitStack() as attempt_stack:
                    response = await attempt_stack.enter_async_context(
                        self.http.stream(
                            "POST", self.url, headers=self._headers, content=body, timeout_s=self.timeout_s
                        )
                    )
                    if response.status_code == 200:
                        await stack.enter_async_context(attempt_stack.pop_all())
                        return response
                    problem = await self._status_problem(response)
                    if response.status_code not in RETRY_STATUSES:
                        raise ModelError(problem, details={"status": response.status_code, "attempts": attempt + 1})
                    retry_after = retry_after_s(response.headers)
                    details: dict[str, Any] = {"status": response.status_code}
            except OutboundFailedError as exc:
                problem = self._scrub(exc.message)
                details = {}
            if attempt == self.max_retries:
                raise ModelError(
                    f"{problem} (after {attempt + 1} attempts)", details={**details, "attempts": attempt + 1}
                )
            delay = self._delay(attempt, retry_after)
            log.warning("llm: attempt %d failed (%s); retrying in %.1f s", attempt + 1, problem, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter (so many callers do not retry in step), at least `Retry-After`."""
        delay = min(MAX_BACKOFF_S, self.backoff_s * 2.0**attempt) * random.uniform(0.8, 1.2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after_s))
        return delay

    async def _read(self, response: NetStream, limit: int, *, truncate: bool = False) -> bytes:
        """The body within `limit` bytes: past it `ModelError` (a model answer is small), or its start if `truncate`."""
        chunks: list[bytes] = []
        total = 0
        async with aclosing(_chunks(response)) as body:
            async for chunk in body:
                total += len(chunk)
                if total > limit:
                    if truncate:
                        chunks.append(chunk[: limit - total])
                        break
                    raise ModelError(f"{self._where()}: the answer is over {limit} bytes")
                chunks.append(chunk)
        return b"".join(chunks)

    async def _status_problem(self, response: NetStream) -> str:
        """`<host>: HTTP 401: <the provider's message>`, with the API key scrubbed from what it says."""
        # An error page (a proxy's HTML) may be large: its start is enough to say what went wrong.
        content = await self._read(response, ERROR_BODY_BYTES, truncate=True)
        try:
            error = orjson.loads(content).get("error")
            message = str(error.get("message", "")) if isinstance(error, dict) else str(error or "")
        except (orjson.JSONDecodeError, AttributeError):
            message = content.decode("utf-8", "replace")
        # Scrubbed before it is cut, so a cut cannot leave part of the key behind.
        message = self._scrub(" ".join(message.split()))[:500]
        return f"{self._where()}: HTTP {response.status_code}" + (f": {message}" if message else "")

    def _usage(self, raw: Any, request: ChatRequest, model: str) -> Usage:
        """Counts from the answer's `usage` (0 and `reported=False` when missing) and their cost from `prices`."""
        if not isinstance(raw, dict):
            return Usage(reported=False)
        prompt = _count(raw.get("prompt_tokens"))
        completion = _count(raw.get("completion_tokens"))
        # The answer may name a dated variant (`gpt-4o-2024-08-06`): the name asked for is priced first.
        price = self.prices.get(request.model or self.default_model) or self.prices.get(model) or (0.0, 0.0)
        return Usage(prompt, completion, (prompt * price[0] + completion * price[1]) / 1_000_000)

    def _scrub(self, text: str) -> str:
        # A provider may quote the key it was sent ("Incorrect API key provided: sk-…"): never pass it on.
        return text.replace(self._secret, "***") if self._secret else text

    def _where(self) -> str:
        return self.url.split("://", 1)[-1].split("/", 1)[0]


def _chunks(response: NetStream) -> AsyncGenerator[bytes, None]:
    # `aiter_bytes` is an async generator typed as an iterator: callers close it, so stopping early leaves nothing.
    return cast(AsyncGenerator[bytes, None], response.aiter_bytes())


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _json_event(event: str, where: str) -> dict[str, Any]:
    """One streamed chunk; an `error` object in the stream is the provider failing mid-answer."""
    try:
        chunk = orjson.loads(event)
    except orjson.JSONDecodeError:
        raise ModelError(f"{where}: a streamed chunk is not JSON") from None
    if not isinstance(chunk, dict):
        raise ModelError(f"{where}: a streamed chunk is not a JSON object")
    if chunk.get("error"):
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise ModelError(f"{where}: the model failed mid-answer: {str(message)[:500]}")
    return chunk


def _chunk_choices(chunk: dict[str, Any], finish: str | None, where: str) -> tuple[list[str], str | None]:
    """The text deltas of one streamed chunk and the finish reason so far."""
    deltas: list[str] = []
    try:
        for choice in chunk.get("choices") or ():
            finish = choice.get("finish_reason") or finish
            delta = (choice.get("delta") or {}).get("content")
            if isinstance(delta, str) and delta:
                deltas.append(delta)
    except (AttributeError, TypeError):
        raise ModelError(f"{where}: a streamed chunk is not a chat completion chunk") from None
    return deltas, finish


def _schema_prompt(schema: Mapping[str, Any]) -> str:
    return "Answer with only a JSON value matching this JSON Schema:\n" + orjson.dumps(schema).decode()
