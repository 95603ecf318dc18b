"""What an Omnitool import is made of: the node as read (`OmniNode`), what it becomes (`NodeBuilder`), the
problems it reports (`Issue`, `OmnitoolImportError`), and helpers the import and the export share."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from conveyor.errors import RecipeInvalidError, ValidationError

META_KEY = "x-omnitool"
"""The key under `meta` (recipe and node) holding what an Omnitool import read, for the export back."""


class OmnitoolImportError(RecipeInvalidError):
    """An Omnitool recipe cannot be imported; `details` lists every problem by Omnitool node id and block name.

    The API answers 422 with code `omnitool_invalid`; nothing is stored.
    """

    code = "omnitool_invalid"


class OmnitoolExportError(ValidationError):
    """A recipe cannot be written as Omnitool JSON; `details` lists every node that has no Omnitool form.

    The API answers 422 with code `omnitool_unexportable`.
    """

    code = "omnitool_unexportable"


@dataclass(frozen=True, slots=True)
class Issue:
    """A problem or warning about one Omnitool node (`node` None: the recipe as a whole)."""

    node: str | None
    name: str | None
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "name": self.name, "code": self.code, "message": self.message}


@dataclass(slots=True)
class OmniNode:
    """One node of an Omnitool recipe, its shape checked; `wired_in`/`wired_out` count both sides' connections."""

    id: int
    name: str
    data: dict[str, Any]
    position: Any
    inputs: dict[str, list[dict[str, Any]]]
    outputs: dict[str, list[dict[str, Any]]]
    extra: dict[str, Any]
    wired_in: dict[str, int] = field(default_factory=dict)
    wired_out: set[str] = field(default_factory=set)

    @property
    def key(self) -> str:
        return str(self.id)

    @property
    def enabled(self) -> bool:
        """Omnitool skips a node whose `xOmniEnabled` is set and false (JavaScript's truth)."""
        value = self.data.get("xOmniEnabled")
        return value is None or js_truthy(value)


def js_truthy(value: Any) -> bool:
    """JavaScript's truth: only false, 0, NaN, empty text and null are false (empty lists and objects are true)."""
    if isinstance(value, float) and math.isnan(value):
        return False
    return value not in (False, 0, "", None) or isinstance(value, list | dict)


def is_empty(value: Any) -> bool:
    """Whether a data value means "nothing set" (null, empty text, empty list or object)."""
    return value is None or (isinstance(value, str | list | dict) and len(value) == 0)


def short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sanitize_name(name: str) -> str:
    """A dynamic port's name as Omnitool's `sanitizeName` makes it: trimmed, lower case, `_` for the rest."""
    return re.sub(r"[^a-z0-9]", "_", name.strip().lower())


def helper_id(key: str, suffix: str) -> str:
    """A helper node's id: its Omnitool node's id, `-`, and a suffix (never clashing with Omnitool's integer ids)."""
    return f"{key}-{re.sub(r'[^A-Za-z0-9_-]', '_', suffix)}"[:100]


# The constant block a data value becomes, by its JSON kind: (block, config key, output port).
def _constant(value: Any) -> tuple[str, str, str] | None:
    if isinstance(value, bool):
        return "boolean_input", "value", "boolean"
    if isinstance(value, int | float):
        return ("number_input", "value", "number") if math.isfinite(value) else None
    if isinstance(value, str):
        return "input_text", "text", "text"
    if isinstance(value, dict | list):
        return "json_input", "json", "json"
    return None


class NodeBuilder:
    """What one Omnitool node becomes: filled by a `BLOCKS` function, then checked by `finish()`."""

    def __init__(self, node: OmniNode) -> None:
        self.node = node
        self.block: str | None = None
        self.config: dict[str, Any] = {}
        self.inputs: dict[str, str] = {}  # Omnitool input port -> our input port on the main node
        self.outputs: dict[str, tuple[str, str]] = {}  # Omnitool output port -> (node id, port) giving it
        self.aliases: dict[str, str] = {}  # Omnitool output port -> Omnitool input port whose source it hands on
        self.wiring: dict[str, str] = {}  # our input port -> "node.port", for edges from helpers
        self.helpers: dict[str, dict[str, Any]] = {}  # helper node id -> its node spec
        self.problems: list[Issue] = []
        self.warnings: list[Issue] = []
        self.used: set[str] = set()
        self.required: set[str] = set()
        self._reported: set[str] = set()

    # -- reading the node

    def data(self, key: str, default: Any = None) -> Any:
        """The node's data value `key`, marked as read (so no constant helper is made for it)."""
        self.used.add(key)
        return self.node.data.get(key, default)

    def wired(self, port: str) -> bool:
        return port in self.node.wired_in

    # -- declaring ports

    def input(self, port: str, ours: str | None = None, *, required: bool = False) -> None:
        """Omnitool input `port` is our input `ours`; a `required` one needs a connection or a data value."""
        self.inputs[port] = ours or port
        if required:
            self.required.add(port)

    def output(self, port: str, ours: str | None = None) -> None:
        self.outputs[port] = (self.node.key, ours or port)

    def alias(self, port: str, input_port: str) -> None:
        """Omnitool output `port` hands on what reaches `input_port`: readers are wired to that source."""
        self.aliases[port] = input_port

    def refuse(self, port: str, why: str) -> None:
        """Input `port` has no counterpart: a problem when it is connected."""
        if self.wired(port) and port not in self._reported:
            self._reported.add(port)
            self.problem("unsupported_port", f"input {port!r} is connected, but {why}")

    def refuse_output(self, port: str, why: str) -> None:
        """Output `port` has no counterpart: a problem when something reads it."""
        if port in self.node.wired_out and f"out:{port}" not in self._reported:
            self._reported.add(f"out:{port}")
            self.problem("unsupported_port", f"output {port!r} is connected, but {why}")

    def drop(self, port: str) -> None:
        """Input `port` is ignored here, as Omnitool ignores it; its connection is kept for the export only."""
        self._reported.add(port)

    def unsupported(self, key: str, why: str) -> None:
        """Data `key` has no counterpart: a problem when it holds a value Omnitool would use."""
        value = self.data(key)
        if not self.wired(key) and not is_empty(value):
            self.problem("unsupported_data", f"data {key!r} is {short(value)}, but {why}")

    # -- results

    def problem(self, code: str, message: str) -> None:
        self.problems.append(Issue(self.node.key, self.node.name, code, message))

    def warn(self, code: str, message: str) -> None:
        self.warnings.append(Issue(self.node.key, self.node.name, code, message))

    def add_helper(self, suffix: str, block: str, config: dict[str, Any], role: dict[str, Any]) -> str:
        """Adds a helper node; `role` says what it stands for, for the export (`input` or `outputs`)."""
        node_id = helper_id(self.node.key, suffix)
        spec: dict[str, Any] = {"block": block, "meta": {META_KEY: {"helper": {"of": self.node.id, **role}}}}
        if config:
            spec["config"] = config
        if not self.node.enabled:
            spec["enabled"] = False
        self.helpers[node_id] = spec
        return node_id

    def adapter(self, port: str, block: str, config: dict[str, Any], out_port: str, feed: dict[str, str]) -> None:
        """Makes Omnitool output `port` with a helper node of `block` fed by the main node's ports `feed`
        (helper input -> our output) and read at `out_port`."""
        node_id = self.add_helper(port, block, config, {"outputs": {out_port: port}})
        self.helpers[node_id]["inputs"] = {into: f"{self.node.key}.{ours}" for into, ours in feed.items()}
        self.outputs[port] = (node_id, out_port)

    def finish(self) -> None:
        """Adds constant helpers for data-held input values, then reports every port left unmapped."""
        if self.block is None:
            return
        self._add_constants()
        self._check_inputs()
        self._check_outputs()

    def _add_constants(self) -> None:
        for port, ours in self.inputs.items():
            value = self.node.data.get(port)
            if self.wired(port) or port in self.used or is_empty(value):
                continue
            constant = _constant(value)
            if constant is None:
                self.problem("unsupported_data", f"data {port!r} is {short(value)}, which is not a JSON value")
                continue
            block, key, out_port = constant
            node_id = self.add_helper(port, block, {key: value}, {"input": port})
            self.wiring[ours] = f"{node_id}.{out_port}"

    def _check_inputs(self) -> None:
        for port in sorted(self.required):
            if not self.wired(port) and self.inputs[port] not in self.wiring and port not in self._reported:
                self.problem("missing_input", f"input {port!r} is not connected and has no value in data")
        for port, count in self.node.wired_in.items():
            if port in self._reported:
                continue
            if port not in self.inputs:
                self.problem("unsupported_port", f"input {port!r} is connected, but {self.block} has no input for it")
            elif count > 1:
                self.problem(
                    "multiple_connections",
                    f"input {port!r} has {count} connections; a Conveyor input takes one (join them first)",
                )

    def _check_outputs(self) -> None:
        wired_out = self.node.wired_out
        for port, input_port in self.aliases.items():
            if port in wired_out and not self.wired(input_port):
                message = f"output {port!r} hands on input {input_port!r}, which is not connected"
                self.problem("unsupported_port", message)
        for port in sorted(wired_out):
            if port not in self.outputs and port not in self.aliases and f"out:{port}" not in self._reported:
                self.problem("unsupported_port", f"output {port!r} is connected, but {self.block} has no such output")


UNNAMED = "(Unnamed Recipe)"


def recipe_name(meta: Mapping[str, Any]) -> tuple[str, str]:
    """The native name and description an Omnitool `meta` gives (as long as a native recipe allows)."""
    name = meta.get("name")
    name = name.strip()[:200] if isinstance(name, str) and name.strip() else UNNAMED
    description = meta.get("description")
    return name, description[:10_000] if isinstance(description, str) else ""


def fingerprint(spec: Mapping[str, Any]) -> str:
    """A digest of what a node does (block, configuration, wiring, flags; not its `meta`), to tell later edits."""
    from conveyor.recipes.model import NodeSpec

    body = NodeSpec.model_validate(spec).model_dump(mode="json", exclude={"meta"}, exclude_defaults=True)
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
