"""A Jinja2 environment whose templates cannot escape, run too long, or grow past a size.

`TemplateSandbox` renders recipe authors' templates. It is sandboxed (no attribute escapes, no mutation of lists
or dicts) and bounded: every string, list or number a template builds is capped, the output is capped, and
loops, calls and filters stop at a deadline. The bounds live in the environment, its guarded filters and its
code generator. Any failure of a template is a `BlockInputError`, so a block using it fails the node, not the
server. The module also holds the helpers the sandbox shares with other blocks: `to_text`, `rendered_size`,
`replaced_length` and `LruCache`.
"""

from __future__ import annotations

import json
import re
import string
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import update_wrapper
from types import BuiltinMethodType
from typing import Any, Generic, TypeVar

from jinja2 import Environment, StrictUndefined, TemplateError, TemplateSyntaxError, UndefinedError, meta
from jinja2 import nodes as jnodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.environment import Template
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from conveyor.blocks.base import BlockInputError

MAX_TEMPLATE_CHARS = 1_000_000
"""Longest output of a template, and longest string, list or rendered value it may build on the way."""

_MAX_INT_BITS = 65_536  # a template's integers stay below ~20,000 digits
_CACHE_SIZE = 256

K = TypeVar("K")
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """A small least-recently-used map, for compiled templates and expressions kept on a block instance."""

    __slots__ = ("_data", "_maxsize")

    def __init__(self, maxsize: int = _CACHE_SIZE) -> None:
        self._data: OrderedDict[K, V] = OrderedDict()
        self._maxsize = maxsize

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> V:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self._maxsize:
            self._data.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._data)


def to_text(value: Any) -> str:
    """Renders a port value as text: strings as they are, null as empty text, booleans `true`/`false`,
    numbers as written, lists and objects as JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


# (deadline on time.monotonic(), the limit in seconds) of the render running in this context, if any.
_DEADLINE: ContextVar[tuple[float, float] | None] = ContextVar("conveyor_template_deadline", default=None)

_FORMAT_WIDTH = re.compile(r"\d{7,}")  # a width or precision of a million or more
_PRINTF_WIDTH = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(?:\*|\d{7,}|\d*\.(?:\*|\d{7,}))")


def _too_large(what: str) -> BlockInputError:
    return BlockInputError(f"template {what} is too large (limit {MAX_TEMPLATE_CHARS:,} characters or items)")


def _tick() -> None:
    """Stops the running render once its deadline has passed (called in every loop body, call and filter)."""
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline[0]:
        raise BlockInputError(f"template took longer than {deadline[1]:g} s")


def _check_result(value: Any) -> Any:
    if isinstance(value, str | list | tuple | dict) and len(value) > MAX_TEMPLATE_CHARS:
        raise _too_large("value")
    if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
        raise BlockInputError("template number is too large")
    return value


def rendered_size(value: Any, limit: int = MAX_TEMPLATE_CHARS, indent: int = 0) -> int:
    """An estimate of the length of `value` rendered as text, that stops counting once past `limit`.

    Lists may hold the same large string many times over (`[s] * 1000` costs little memory), so their size is
    what rendering them would cost; each node counts at least one, which keeps the walk itself bounded. With
    `indent`, each value is counted on its own line indented by its depth, as pretty-printers write it.
    """
    total = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack and total <= limit:
        item, depth = stack.pop()
        if indent:
            total += indent * depth + 1
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        elif isinstance(item, float):
            total += 25
        elif isinstance(item, dict):
            total += 2 + 4 * len(item)
            if total <= limit:
                stack.extend((child, depth + 1) for child in (*item.keys(), *item.values()))
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + 2 * len(item)
            if total <= limit:
                stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, Namespace):
            total += 16
            stack.append((object.__getattribute__(item, "_Namespace__attrs"), depth))
        else:
            total += 64
    return total


def _render_value(value: Any) -> str:
    """What `{{ value }}` and `~` write: `to_text`, bounded; undefined variables raise, naming themselves."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, Undefined):
        text = str(value)
    else:
        if rendered_size(value) > MAX_TEMPLATE_CHARS:
            raise _too_large("value")
        text = to_text(value)
    if len(text) > MAX_TEMPLATE_CHARS:
        raise _too_large("value")
    return text


def replaced_length(text: str, old: str, new: str, count: int | None) -> int:
    """The length of `text.replace(old, new, count)`, computed without doing it."""
    hits = len(text) + 1 if old == "" else text.count(old)
    if count is not None and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * (len(new) - len(old))


def _check_size_args(args: Iterable[Any], kwargs: Mapping[str, Any]) -> None:
    for arg in (*args, *kwargs.values()):
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_TEMPLATE_CHARS:
            raise _too_large("size argument")


def _check_rendered_args(args: Iterable[Any], kwargs: Mapping[str, Any]) -> None:
    if rendered_size((tuple(args), dict(kwargs))) > MAX_TEMPLATE_CHARS:
        raise _too_large("argument")


def _check_format_string(fmt: str) -> None:
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format raises the same error when called
    for _literal, _field, spec, _conversion in fields:
        if spec and ("{" in spec or _FORMAT_WIDTH.search(spec)):
            raise _too_large("format width")


def _check_printf(fmt: str, args: Any) -> None:
    if _PRINTF_WIDTH.search(fmt):
        raise _too_large("format width")
    if rendered_size(args) > MAX_TEMPLATE_CHARS:
        raise _too_large("argument")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    sequences = (str, list, tuple)
    if operator == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, sequences) and isinstance(times, int) and len(seq) * times > MAX_TEMPLATE_CHARS:
                raise _too_large("repetition")
        if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > _MAX_INT_BITS:
            raise BlockInputError("template number is too large")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            if left.bit_length() * right > _MAX_INT_BITS:
                raise BlockInputError("template number is too large")
    elif operator == "+":
        if isinstance(left, sequences) and isinstance(right, sequences) and len(left) + len(right) > MAX_TEMPLATE_CHARS:
            raise _too_large("value")
    elif operator == "%" and isinstance(left, str):
        _check_printf(left, right)


def _skip_context(args: tuple[Any, ...]) -> int:
    """How many leading arguments of a filter call are Jinja's context, eval context or environment."""
    index = 0
    while index < len(args) and isinstance(args[index], Context | jnodes.EvalContext | Environment):
        index += 1
    return index


def _limit(size: int) -> None:
    if size > MAX_TEMPLATE_CHARS:
        raise _too_large("value")


def _filter_indent(value: Any, rest: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if isinstance(value, str):
        width = (rest or (kwargs.get("width", 4),))[0]
        pad = len(width) if isinstance(width, str) else int(width)
        _limit(len(value) + (value.count("\n") + 1) * pad)
    return value


def _filter_wordwrap(value: Any, rest: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if isinstance(value, str):
        width = max(int((rest or (kwargs.get("width", 79),))[0]), 1)
        wrap = rest[2] if len(rest) > 2 else kwargs.get("wrapstring") or "\n"
        _limit(len(value) + (len(value) // width + value.count("\n") + 1) * len(wrap))
    return value


def _filter_replace(value: Any, rest: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if len(rest) >= 2:
        count = rest[2] if len(rest) > 2 else kwargs.get("count")
        _limit(replaced_length(str(value), str(rest[0]), str(rest[1]), count))
    return value


def _materialise(value: Any) -> Any:
    # Generators (`items|map(...)|join`) are read once here, so they can be measured and still be used.
    return value if isinstance(value, str | dict | list | tuple) else list(value)


def _filter_join(value: Any, rest: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    items = _materialise(value)
    separator = rest[0] if rest else kwargs.get("d", "")
    _limit(rendered_size(items) + len(str(separator)) * len(items))
    return items


def _filter_sum(value: Any, rest: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    items = _materialise(value)
    _limit(sum(len(item) for item in items if isinstance(item, list | tuple | str)))
    return items


def _filter_format(value: Any, rest: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if isinstance(value, str):
        _check_printf(value, (rest, kwargs))
    return value


def _filter_rendering(value: Any, rest: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    _limit(rendered_size(value))
    return value


def _filter_tojson(value: Any, rest: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    indent = rest[0] if rest else kwargs.get("indent")
    _limit(rendered_size(value, indent=indent if isinstance(indent, int) else 0))
    return value


def _filter_pprint(value: Any, rest: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    _limit(rendered_size(value, indent=1))
    return value


def _filter_sizes(value: Any, rest: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    _check_size_args(rest, kwargs)
    return value


_FilterCheck = Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]

# Filters whose result can be much larger than their arguments, and how each is measured before it runs.
_FILTER_CHECKS: dict[str, tuple[_FilterCheck, ...]] = {
    "center": (_filter_sizes,),
    "truncate": (_filter_sizes,),
    "batch": (_filter_sizes,),
    "slice": (_filter_sizes,),
    "indent": (_filter_sizes, _filter_indent),
    "wordwrap": (_filter_sizes, _filter_wordwrap),
    "replace": (_filter_replace,),
    "join": (_filter_join,),
    "sum": (_filter_sum,),
    "format": (_filter_format,),
    "tojson": (_filter_tojson,),
    "pprint": (_filter_pprint,),
    **dict.fromkeys(("string", "xmlattr", "urlencode"), (_filter_rendering,)),
}


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    checks = _FILTER_CHECKS.get(name, ())

    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        first = _skip_context(args)
        if checks and first < len(args):
            value, rest = args[first], args[first + 1 :]
            for check in checks:
                value = check(value, rest, kwargs)
            args = (*args[:first], value, *rest)
        return _check_result(func(*args, **kwargs))

    # Copies `jinja_pass_arg`, which tells Jinja whether to pass the context to the filter.
    return update_wrapper(guarded, func)


def _prepare_str_method(text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuses a call of a `str` method whose result would be too large; returns the arguments to call it with."""
    if name in ("ljust", "rjust", "center", "zfill"):
        _check_size_args(args, kwargs)
    elif name == "expandtabs":
        tabsize = (args or (kwargs.get("tabsize", 8),))[0]
        if isinstance(tabsize, int) and len(text) + text.count("\t") * tabsize > MAX_TEMPLATE_CHARS:
            raise _too_large("value")
    elif name == "replace" and len(args) >= 2:
        count = args[2] if len(args) > 2 else kwargs.get("count")
        if replaced_length(text, str(args[0]), str(args[1]), count) > MAX_TEMPLATE_CHARS:
            raise _too_large("value")
    elif name == "translate" and args and isinstance(args[0], dict):
        longest = max((len(value) for value in args[0].values() if isinstance(value, str)), default=1)
        if len(text) * longest > MAX_TEMPLATE_CHARS:
            raise _too_large("value")
    elif name == "join" and args:
        items = list(args[0])
        if rendered_size(items) + len(text) * len(items) > MAX_TEMPLATE_CHARS:
            raise _too_large("value")
        return (items, *args[1:])
    return args


class _BoundedBuffer(list[str]):
    """The output buffer of a macro, `{% set %}` block or `{% call %}` block, refusing to grow past the limit."""

    __slots__ = ("size",)

    def __init__(self) -> None:
        super().__init__()
        self.size = 0

    def append(self, item: str, /) -> None:
        self.size += len(item)
        if self.size > MAX_TEMPLATE_CHARS:
            raise _too_large("output")
        super().append(item)

    def extend(self, items: Iterable[str], /) -> None:
        items = tuple(items)
        self.size += sum(len(item) for item in items)
        if self.size > MAX_TEMPLATE_CHARS:
            raise _too_large("output")
        super().extend(items)


class _GuardedCodeGenerator(CodeGenerator):
    """Jinja's code generator, plus a deadline check in every block body (so each loop iteration), bounded
    buffers, and `~` going through the environment's bounded concatenation."""

    def blockvisit(self, nodes: Iterable[jnodes.Node], frame: Frame) -> None:
        self.writeline("environment.tick()")
        super().blockvisit(nodes, frame)

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.bounded_buffer()")

    @optimizeconst
    def visit_Concat(self, node: jnodes.Concat, frame: Frame) -> None:
        self.write("environment.concat_values((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    """A template ready to render, and the variables it reads without setting them itself."""

    template: Template
    variables: frozenset[str]


class TemplateSandbox(ImmutableSandboxedEnvironment):
    """A Jinja2 sandbox for untrusted text templates.

    On top of `ImmutableSandboxedEnvironment` (no private attributes, no mutation of lists, dicts and sets):
    undefined variables raise; `*`, `**`, `+` and `%` refuse results past the limits; `str` methods and filters
    that pad, repeat, join or replace are measured before they run; buffers and `~` are bounded; `lipsum` is
    gone; and every loop iteration, call and filter checks the render's deadline.
    """

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        super().__init__(
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            finalize=_render_value,
            auto_reload=False,
            cache_size=0,
        )
        self.globals.pop("lipsum", None)
        self.filters = {name: _guard_filter(name, func) for name, func in self.filters.items()}

    def prepare(self, source: str) -> CompiledTemplate:
        """Compiles `source`; `BlockInputError` for a template that does not compile."""
        try:
            ast = self.parse(source)
            variables = frozenset(meta.find_undeclared_variables(ast)) - self.globals.keys()
            template = self.from_string(ast)
        except TemplateSyntaxError as exc:
            raise BlockInputError(f"template does not compile: {exc.message} (line {exc.lineno})") from exc
        except TemplateError as exc:
            raise BlockInputError(f"template does not compile: {exc.message}") from exc
        except RecursionError as exc:
            raise BlockInputError("template does not compile: it nests too deeply") from exc
        return CompiledTemplate(template, variables)

    def render(self, compiled: CompiledTemplate, variables: dict[str, Any], timeout_s: float) -> str:
        """Renders `compiled` with `variables`, within `timeout_s` seconds and `MAX_TEMPLATE_CHARS` of output.

        Every way a template can fail, from a missing variable to `1 / 0`, is a `BlockInputError`.
        """
        token = _DEADLINE.set((time.monotonic() + timeout_s, timeout_s))
        try:
            template = compiled.template
            pieces: list[str] = []
            size = 0
            for piece in template.root_render_func(template.new_context(variables)):
                size += len(piece)
                if size > MAX_TEMPLATE_CHARS:
                    raise _too_large("output")
                pieces.append(piece)
        except BlockInputError:
            raise
        except UndefinedError as exc:
            raise BlockInputError(f"template variable missing: {exc.message}") from exc
        except TemplateError as exc:
            raise BlockInputError(f"template failed: {exc.message or type(exc).__name__}") from exc
        except RecursionError as exc:
            raise BlockInputError("template recursed too deeply") from exc
        except Exception as exc:  # anything a template does wrong is the template's fault, e.g. 1 / 0
            raise BlockInputError(f"template failed: {type(exc).__name__}: {exc}") from exc
        finally:
            _DEADLINE.reset(token)
        return "".join(pieces)

    @staticmethod
    def tick() -> None:
        _tick()

    @staticmethod
    def bounded_buffer() -> list[str]:
        return _BoundedBuffer()

    @staticmethod
    def concat_values(parts: tuple[Any, ...]) -> str:
        pieces = [_render_value(part) for part in parts]
        if sum(len(piece) for piece in pieces) > MAX_TEMPLATE_CHARS:
            raise _too_large("value")
        return "".join(pieces)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _tick()
        _check_binop(operator, left, right)
        return _check_result(super().call_binop(context, operator, left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        owner = getattr(__obj, "__self__", None)
        if isinstance(__obj, BuiltinMethodType) and isinstance(owner, str):
            args = _prepare_str_method(owner, __obj.__name__, args, kwargs)
        return _check_result(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        if value.__name__ == "format":
            _check_format_string(value.__self__)

        def checked(*args: Any, **kwargs: Any) -> str:
            _check_rendered_args(args, kwargs)
            result: str = _check_result(wrapped(*args, **kwargs))
            return result

        return checked
