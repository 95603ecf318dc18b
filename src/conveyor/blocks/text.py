"""Text blocks: a Jinja2 template, find and replace, Omnitool's multi text replace, a splitter, JSON parsing.

`TextTemplate` renders recipe-author templates in `TemplateSandbox` (see `conveyor.blocks.sandbox`), which keeps
them from escaping, running too long or growing too large. `TextReplace` runs recipe-author regular expressions on
the `regex` engine, which can stop a match that takes too long.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import orjson
import regex as regex_lib  # type: ignore[import-untyped, unused-ignore]  # typed when types-regex is installed
from pydantic import Field, model_validator

from conveyor.blocks.base import BlockConfig, BlockContext, BlockInputError, Port, PortType
from conveyor.blocks.sandbox import CompiledTemplate, LruCache, TemplateSandbox, replaced_length
from conveyor.blocks.sandbox import to_text as to_text  # re-exported: other blocks render values from here

MAX_TEXT_CHARS = 10_000_000
"""Longest text the text blocks take in or give out (characters)."""

MAX_CHUNKS = 100_000
"""Most chunks `text_splitter` returns."""

REGEX_TIMEOUT_S = 1.0
"""Longest `text_replace` may spend matching a regular expression in one pass over its text (seconds)."""


def _text_input(inputs: Mapping[str, Any], name: str, block: str) -> str:
    """The text on input `name` (rendered when it is another kind of value), bounded by `MAX_TEXT_CHARS`."""
    value = inputs.get(name)
    if value is None:
        raise BlockInputError(f"{block} needs input {name!r}")
    text = to_text(value)
    if len(text) > MAX_TEXT_CHARS:
        raise BlockInputError(f"{block}: input {name!r} is longer than {MAX_TEXT_CHARS} characters")
    return text


class TextTemplate:
    """Renders a Jinja2 template with the node's inputs as variables.

    Config: `template` (Jinja2 text, up to 200,000 characters), `timeout_s` (render deadline, at most 5 s,
    default 5 s; blocks run on the server's event loop, which no other job or request can use while a template
    renders, so the deadline stays short). Inputs: one `any` input per wired name, plus an optional input per
    variable the template uses; each is a template variable. Output: `text`.

    The template runs in a sandbox: private attributes (`''.__class__`) and mutating methods are refused.
    Values render as text: strings as they are, null as empty text, booleans `true`/`false`, lists and objects
    as JSON. A variable that is used but has no value fails the node naming it; use `{{ x | default('') }}` or
    `{% if x is defined %}` for optional ones. The output, and every string or list built on the way, is
    limited to 1,000,000 characters or items. Example: `Hello, {{ text }}!` with text=`world` gives
    `Hello, world!`.
    """

    name: ClassVar[str] = "text_template"
    instant: ClassVar[bool] = True

    class Config(BlockConfig):
        template: str = Field(default="", max_length=200_000, description="Jinja2 template text.")
        timeout_s: float = Field(default=5.0, gt=0, le=5, description="Longest time one render may take.")

    def __init__(self) -> None:
        self._env = TemplateSandbox()
        self._compiled: LruCache[str, CompiledTemplate] = LruCache()

    def compile(self, source: str) -> CompiledTemplate:
        """The compiled template for `source` (cached); `BlockInputError` for a template that does not compile."""
        compiled = self._compiled.get(source)
        if compiled is None:
            compiled = self._compiled.put(source, self._env.prepare(source))
        return compiled

    def ports(self, config: TextTemplate.Config, wired: Iterable[str]) -> tuple[dict[str, Port], dict[str, Port]]:
        inputs = {name: Port(PortType.ANY, description="template variable") for name in wired}
        try:
            variables = self.compile(config.template).variables
        except BlockInputError:
            variables = frozenset()
        for name in sorted(name for name in variables if name not in inputs):
            inputs[name] = Port(PortType.ANY, description="template variable")
        return inputs, {"text": Port(PortType.TEXT)}

    async def run(self, ctx: BlockContext, config: TextTemplate.Config, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"text": self._env.render(self.compile(config.template), inputs, config.timeout_s)}


class TextReplace:
    """Replaces occurrences of a text or regular expression in the input text.

    Config: `find` (text, or a regular expression when `regex` is true), `replace` (the replacement; with
    `regex`, `\\1` and `\\g<name>` insert groups), `regex` (default false), `ignore_case` (default false), `count`
    (most replacements, 0 for all). Input: `text`. Output: `text`. Text in and out is limited to 10,000,000
    characters. Regular expressions run on the `regex` engine (Python's `re` syntax, and more), and matching
    stops with an error after 1 s: blocks run on the server's event loop, so a pattern that backtracks
    catastrophically would otherwise hold up every other job and request.
    """

    name: ClassVar[str] = "text_replace"
    instant: ClassVar[bool] = True

    class Config(BlockConfig):
        find: str = Field(min_length=1, max_length=10_000, description="Text or regular expression to find.")
        replace: str = Field(default="", max_length=1_000_000, description="Replacement text.")
        regex: bool = Field(default=False, description="Treat `find` as a regular expression.")
        ignore_case: bool = Field(default=False, description="Match regardless of case.")
        count: int = Field(default=0, ge=0, le=MAX_TEXT_CHARS, description="Most replacements; 0 replaces all.")

        @model_validator(mode="after")
        def _compiles(self) -> TextReplace.Config:
            if self.regex:
                try:
                    _check_replacement(_compile(self.find, self.ignore_case), self.replace)
                except (regex_lib.error, IndexError) as exc:
                    raise ValueError(f"invalid regular expression or replacement: {exc}") from exc
            return self

    def ports(self, config: TextReplace.Config, wired: Iterable[str]) -> tuple[dict[str, Port], dict[str, Port]]:
        return {"text": Port(PortType.TEXT, required=True)}, {"text": Port(PortType.TEXT)}

    async def run(self, ctx: BlockContext, config: TextReplace.Config, inputs: dict[str, Any]) -> dict[str, Any]:
        text = _text_input(inputs, "text", self.name)
        if not config.regex and not config.ignore_case:
            count = config.count or None
            if replaced_length(text, config.find, config.replace, count) > MAX_TEXT_CHARS:
                raise BlockInputError(f"text_replace: result would be longer than {MAX_TEXT_CHARS} characters")
            return {"text": text.replace(config.find, config.replace, config.count or -1)}
        pattern = _compile(config.find if config.regex else regex_lib.escape(config.find), config.ignore_case)
        # Without `regex` the replacement is literal text: escape what the engine would read as group references.
        template = config.replace if config.regex else config.replace.replace("\\", "\\\\")
        try:
            return {"text": _bounded_sub(pattern, template, text, config.count)}
        except TimeoutError as exc:
            raise BlockInputError(
                f"text_replace: the regular expression took longer than {REGEX_TIMEOUT_S:g} s"
            ) from exc
        except (regex_lib.error, IndexError) as exc:
            raise BlockInputError(f"text_replace: {exc}") from exc


def _compile(find: str, ignore_case: bool) -> regex_lib.Pattern[str]:
    """`find` compiled by the `regex` engine."""
    return regex_lib.compile(find, regex_lib.IGNORECASE if ignore_case else 0)


def _check_replacement(pattern: regex_lib.Pattern[str], template: str) -> None:
    """Raises the engine's error for a replacement `pattern.sub` would refuse.

    `regex` reads a replacement only when it first substitutes, so it is read here against a pattern with the
    same groups that matches empty text.
    """
    names = {index: name for name, index in pattern.groupindex.items()}
    groups = "".join(f"(?P<{names[index]}>)" if index in names else "()" for index in range(1, pattern.groups + 1))
    match = regex_lib.fullmatch(groups, "")
    if match is not None:  # it always matches: every group is empty
        match.expand(template)


# In a replacement template: an escaped backslash, an octal escape, a numbered group reference or a `\g<…>` one.
_TEMPLATE_TOKEN = re.compile(r"\\\\|\\(?:0[0-7]{0,2}|[0-7]{3})|\\(\d{1,2})|\\g<([^>]*)>")


def _bounded_sub(pattern: regex_lib.Pattern[str], template: str, text: str, count: int) -> str:
    """`pattern.sub(template, text, count)`, refused when its result would pass `MAX_TEXT_CHARS`.

    The result's length is measured first, match by match (the template's text, at most, plus the groups it
    references), so a result too long is refused before it is built. Each pass over the text may match for
    `REGEX_TIMEOUT_S`; past it, `TimeoutError`. Both passes do the same matching, so a pattern too slow is
    stopped in the first.
    """
    literal = len(template)
    groups: list[int | str] = []
    for token in _TEMPLATE_TOKEN.finditer(template):
        reference = token.group(1) or token.group(2)
        if reference is not None:
            literal -= len(token.group(0))
            groups.append(int(reference) if reference.isdigit() else reference)
    size = len(text)
    for index, match in enumerate(pattern.finditer(text, timeout=REGEX_TIMEOUT_S), start=1):
        size += literal - (match.end() - match.start()) + sum(len(match.group(group) or "") for group in groups)
        if size > MAX_TEXT_CHARS:
            raise BlockInputError(f"text_replace: result would be longer than {MAX_TEXT_CHARS} characters")
        if index == count:
            break
    result: str = pattern.sub(template, text, count, timeout=REGEX_TIMEOUT_S)
    return result


_PLACEHOLDER = re.compile(r"\{input:([^{}]+)\}", re.IGNORECASE)


def placeholder_port(title: str) -> str:
    """The input name of an `{INPUT:title}` placeholder, as Omnitool names it: lower case, `_` for the rest."""
    return re.sub(r"[^a-z0-9]", "_", title.strip().lower())


class MultiTextReplace:
    """Fills `{INPUT:Name}` placeholders in a template with text inputs (Omnitool's "Text Template").

    Config: `template`, containing placeholders such as `{INPUT:Variable Name}` (the `INPUT` tag in any case).
    Inputs: one optional `text` input per distinct placeholder, named as Omnitool names it: the name in lower
    case with every character other than `a-z` and `0-9` turned into `_` (`{INPUT:Variable Name}` →
    `variable_name`). Output: `text`. A placeholder whose input has no value becomes empty text. Values are
    inserted once, so text inside a value is never taken for a placeholder. Output is limited to 10,000,000
    characters.
    """

    name: ClassVar[str] = "multi_text_replace"
    instant: ClassVar[bool] = True

    class Config(BlockConfig):
        template: str = Field(default="", max_length=1_000_000, description="Text with `{INPUT:Name}` placeholders.")

    def ports(self, config: MultiTextReplace.Config, wired: Iterable[str]) -> tuple[dict[str, Port], dict[str, Port]]:
        names = dict.fromkeys(placeholder_port(m.group(1)) for m in _PLACEHOLDER.finditer(config.template))
        names.pop("", None)
        return {name: Port(PortType.TEXT, description="placeholder value") for name in names}, {
            "text": Port(PortType.TEXT)
        }

    async def run(self, ctx: BlockContext, config: MultiTextReplace.Config, inputs: dict[str, Any]) -> dict[str, Any]:
        size = len(config.template)

        def fill(match: re.Match[str]) -> str:
            nonlocal size
            value = to_text(inputs.get(placeholder_port(match.group(1))))
            size += len(value) - (match.end() - match.start())
            if size > MAX_TEXT_CHARS:
                raise BlockInputError(f"multi_text_replace: result would be longer than {MAX_TEXT_CHARS} characters")
            return value

        return {"text": _PLACEHOLDER.sub(fill, config.template)}


_DEFAULT_SEPARATORS = ("\n\n", "\n", ". ", " ")


def _cut(text: str, start: int, limit: int, floor: int, separators: tuple[str, ...]) -> int:
    """Where a chunk starting at `start` should end: by `limit` and past `floor` (the previous chunk's end),
    after the preferred separator that leaves it at least half full, else after any separator, else at `limit`."""
    half = max(start + (limit - start) // 2, floor)
    for minimum in (half, floor):
        for sep in separators:
            index = text.rfind(sep, start, limit)
            if index >= 0 and index + len(sep) > minimum:
                return index + len(sep)
    return limit


def split_spans(text: str, chunk_size: int, chunk_overlap: int, separators: Iterable[str]) -> list[tuple[int, int]]:
    """The chunks of `text` as `(start, end)` slices, in order, covering it with no gap.

    Each is at most `chunk_size` long, ends past the previous one and after a separator when one fits; each
    after the first starts at most `chunk_overlap` characters before the previous one ends (at a whitespace
    boundary when there is one). `chunk_overlap` must be smaller than `chunk_size`.
    """
    separators = tuple(separators)
    spans: list[tuple[int, int]] = []
    start = end = 0
    length = len(text)
    while start < length:
        limit = start + chunk_size
        end = length if length <= limit else _cut(text, start, limit, max(end, start), separators)
        spans.append((start, end))
        if len(spans) > MAX_CHUNKS:
            raise BlockInputError(f"text_splitter: more than {MAX_CHUNKS} chunks; raise chunk_size")
        if end == length:
            break
        following = end - chunk_overlap
        if following <= start:
            following = end
        elif following < end:
            space = next((i for i in range(following, end) if text[i].isspace()), None)
            if space is not None and space + 1 < end:
                following = space + 1
        start = following
    return spans


class TextSplitter:
    """Splits text into chunks of at most `chunk_size` characters, for embedding or map-reduce prompts.

    Config: `chunk_size` (default 1000), `chunk_overlap` (characters a chunk repeats from the end of the one
    before, default 0, less than `chunk_size`), `separator` (where to prefer cutting; by default paragraph
    breaks, then line breaks, then sentence ends, then spaces). Input: `text`. Outputs: `chunks` (a JSON list of
    strings) and `count`. Chunks are exact slices of the text (nothing trimmed), cut after a separator when
    one leaves the chunk at least half full, else hard at `chunk_size`; chunks of only whitespace are left out.
    At most 100,000 chunks.
    """

    name: ClassVar[str] = "text_splitter"
    instant: ClassVar[bool] = True

    class Config(BlockConfig):
        chunk_size: int = Field(default=1000, ge=1, le=1_000_000, description="Longest chunk, in characters.")
        chunk_overlap: int = Field(default=0, ge=0, le=100_000, description="Characters repeated between chunks.")
        separator: str | None = Field(default=None, min_length=1, max_length=100, description="Preferred cut.")

        @model_validator(mode="after")
        def _overlap_below_size(self) -> TextSplitter.Config:
            if self.chunk_overlap >= self.chunk_size:
                raise ValueError("chunk_overlap must be smaller than chunk_size")
            return self

    def ports(self, config: TextSplitter.Config, wired: Iterable[str]) -> tuple[dict[str, Port], dict[str, Port]]:
        return {"text": Port(PortType.TEXT, required=True)}, {
            "chunks": Port(PortType.JSON, description="list of strings"),
            "count": Port(PortType.NUMBER),
        }

    async def run(self, ctx: BlockContext, config: TextSplitter.Config, inputs: dict[str, Any]) -> dict[str, Any]:
        text = _text_input(inputs, "text", self.name)
        separators = (config.separator,) if config.separator else _DEFAULT_SEPARATORS
        spans = split_spans(text, config.chunk_size, config.chunk_overlap, separators)
        chunks = [text[start:end] for start, end in spans if not text[start:end].isspace()]
        return {"chunks": chunks, "count": len(chunks)}


class TextToJson:
    """Parses the input text as JSON (strict RFC 8259: no comments, trailing commas, `NaN` or single quotes).

    Input: `text` (up to 10,000,000 characters). Output: `json`, the parsed value. Text that is not JSON fails
    the node with the parser's message and position.
    """

    name: ClassVar[str] = "text_to_json"
    instant: ClassVar[bool] = True

    class Config(BlockConfig):
        pass

    def ports(self, config: TextToJson.Config, wired: Iterable[str]) -> tuple[dict[str, Port], dict[str, Port]]:
        return {"text": Port(PortType.TEXT, required=True)}, {"json": Port(PortType.JSON)}

    async def run(self, ctx: BlockContext, config: TextToJson.Config, inputs: dict[str, Any]) -> dict[str, Any]:
        text = inputs.get("text")
        if not isinstance(text, str):
            raise BlockInputError(f"text_to_json needs text, got {type(text).__name__}")
        if len(text) > MAX_TEXT_CHARS:
            raise BlockInputError(f"text_to_json: text is longer than {MAX_TEXT_CHARS} characters")
        try:
            return {"json": orjson.loads(text)}
        except orjson.JSONDecodeError as exc:
            raise BlockInputError(f"text_to_json: invalid JSON: {exc}") from exc
