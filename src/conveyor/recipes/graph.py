"""Validating a recipe document and compiling it into the graph the engine runs.

`compile_recipe` either returns a `RecipeGraph` or raises `RecipeInvalidError` listing every problem it
found, each naming its node: unknown block, bad configuration, unknown node or port, type mismatch,
missing required input, cycle, missing or duplicate start/output node.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from conveyor.blocks.base import Block, BlockConfig, BlockRegistry, Port, can_connect
from conveyor.blocks.io import ChatInput, InputField
from conveyor.errors import RecipeInvalidError
from conveyor.recipes.model import NODE_ID_PATTERN, RecipeDoc, RetryPolicy

START_BLOCK = "chat_input"
OUTPUT_BLOCK = "recipe_output"
_NO_RETRY = RetryPolicy()


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a recipe, by node (None for the recipe as a whole)."""

    node: str | None
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "code": self.code, "message": self.message}


@dataclass(slots=True)
class CompiledNode:
    """A node ready to run: its block, validated config, typed ports and the edges into it."""

    id: str
    block: Block
    config: BlockConfig
    sources: dict[str, tuple[str, str]]  # input port -> (source node, source port)
    inputs: Mapping[str, Port]
    outputs: Mapping[str, Port]
    retry: RetryPolicy
    timeout_s: float | None
    enabled: bool
    dependents: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RecipeGraph:
    """A valid recipe: nodes in a topological order, its start and output node, its input contract."""

    doc: RecipeDoc
    nodes: dict[str, CompiledNode]
    order: list[str]
    start: str
    output: str

    @property
    def contract(self) -> dict[str, InputField]:
        """The recipe's input fields (its start node's configuration)."""
        config = self.nodes[self.start].config
        assert isinstance(config, ChatInput.Config)
        return dict(config.fields)


def _pydantic_problems(node: str | None, exc: PydanticValidationError, prefix: str = "") -> list[Problem]:
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        problems.append(Problem(node, "invalid_config", f"{prefix}{where}: {error['msg']}".strip()))
    return problems


def parse_doc(data: Any) -> RecipeDoc:
    """Checks the document's shape; `RecipeInvalidError` lists every problem by node."""
    try:
        return RecipeDoc.model_validate(data)
    except PydanticValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            loc = [str(part) for part in error["loc"]]
            node = loc[1] if len(loc) > 1 and loc[0] == "nodes" else None
            where = ".".join(loc[2:] if node else loc) or "recipe"
            problems.append(Problem(node, "invalid_recipe", f"{where}: {error['msg']}"))
        raise RecipeInvalidError(_summary(problems), details=[p.as_dict() for p in problems]) from None


def _summary(problems: list[Problem]) -> str:
    count = len(problems)
    return f"recipe is invalid: {count} problem{'s' if count != 1 else ''}"


def compile_recipe(data: Any, registry: BlockRegistry, *, max_nodes: int = 1000) -> RecipeGraph:
    """Validates a recipe document and compiles it; raises `RecipeInvalidError` with every problem."""
    doc = data if isinstance(data, RecipeDoc) else parse_doc(data)
    problems: list[Problem] = []
    if len(doc.nodes) > max_nodes:
        problems.append(Problem(None, "too_many_nodes", f"recipe has {len(doc.nodes)} nodes; the limit is {max_nodes}"))
        raise RecipeInvalidError(_summary(problems), details=[p.as_dict() for p in problems])
    nodes = _compile_nodes(doc, registry, problems)
    _check_edges(doc, nodes, problems)
    order = _topological_order(doc, problems)
    start = _single(doc, START_BLOCK, "start", problems)
    output = _single(doc, OUTPUT_BLOCK, "output", problems)
    if problems or start is None or output is None:
        raise RecipeInvalidError(_summary(problems), details=[p.as_dict() for p in problems])
    for node_id in order:
        for source, _ in nodes[node_id].sources.values():
            if node_id not in nodes[source].dependents:
                nodes[source].dependents.append(node_id)
    return RecipeGraph(doc=doc, nodes=nodes, order=order, start=start, output=output)


def _compile_nodes(doc: RecipeDoc, registry: BlockRegistry, problems: list[Problem]) -> dict[str, CompiledNode]:
    import re

    pattern = re.compile(NODE_ID_PATTERN)
    nodes: dict[str, CompiledNode] = {}
    for node_id, spec in doc.nodes.items():
        if not pattern.match(node_id):
            problems.append(Problem(node_id, "invalid_node_id", "node ids are 1-100 letters, digits, '_' or '-'"))
            continue
        block = registry.get(spec.block)
        if block is None:
            problems.append(Problem(node_id, "unknown_block", f"unknown block {spec.block!r}"))
            continue
        try:
            config = block.Config.model_validate(spec.config)
        except PydanticValidationError as exc:
            problems.extend(_pydantic_problems(node_id, exc, "config."))
            continue
        sources: dict[str, tuple[str, str]] = {}
        for port, ref in spec.inputs.items():
            source, dot, source_port = ref.partition(".")
            if not dot or not source or not source_port:
                problems.append(Problem(node_id, "invalid_reference", f"input {port!r}: {ref!r} is not 'node.port'"))
                continue
            sources[port] = (source, source_port)
        try:
            inputs, outputs = block.ports(config, list(spec.inputs))
        except ValueError as exc:
            problems.append(Problem(node_id, "invalid_config", str(exc)))
            continue
        nodes[node_id] = CompiledNode(
            id=node_id,
            block=block,
            config=config,
            sources=sources,
            inputs=inputs,
            outputs=outputs,
            retry=spec.retry or _NO_RETRY,
            timeout_s=spec.timeout_s,
            enabled=spec.enabled,
        )
    return nodes


def _check_edges(doc: RecipeDoc, nodes: dict[str, CompiledNode], problems: list[Problem]) -> None:
    for node_id, node in nodes.items():
        for port, (source, source_port) in node.sources.items():
            target = node.inputs.get(port)
            if target is None:
                known = ", ".join(sorted(node.inputs)) or "none"
                problems.append(
                    Problem(node_id, "unknown_port", f"block {node.block.name!r} has no input {port!r} (has: {known})")
                )
            if source not in doc.nodes:
                problems.append(Problem(node_id, "unknown_node", f"input {port!r} comes from unknown node {source!r}"))
                continue
            source_node = nodes.get(source)
            if source_node is None:
                continue  # the source node's own problem is already reported
            produced = source_node.outputs.get(source_port)
            if produced is None:
                known = ", ".join(sorted(source_node.outputs)) or "none"
                problems.append(
                    Problem(
                        node_id,
                        "unknown_port",
                        f"input {port!r}: node {source!r} ({source_node.block.name}) has no output {source_port!r}"
                        f" (has: {known})",
                    )
                )
            elif target is not None and not can_connect(produced, target):
                problems.append(
                    Problem(
                        node_id,
                        "type_mismatch",
                        f"input {port!r} takes {target.label()} but {source}.{source_port} gives {produced.label()}",
                    )
                )
        for port, spec in node.inputs.items():
            if spec.required and port not in node.sources:
                problems.append(Problem(node_id, "missing_input", f"required input {port!r} is not connected"))


def _topological_order(doc: RecipeDoc, problems: list[Problem]) -> list[str]:
    """Kahn's algorithm over the declared edges; what is left over lies on or behind a cycle."""
    deps: dict[str, set[str]] = {}
    for node_id, spec in doc.nodes.items():
        deps[node_id] = {ref.partition(".")[0] for ref in spec.inputs.values()} & doc.nodes.keys()
    dependents: dict[str, list[str]] = {node_id: [] for node_id in doc.nodes}
    for node_id, sources in deps.items():
        for source in sources:
            dependents[source].append(node_id)
    waiting = {node_id: len(sources) for node_id, sources in deps.items()}
    ready = deque(node_id for node_id, count in waiting.items() if count == 0)
    order: list[str] = []
    while ready:
        node_id = ready.popleft()
        order.append(node_id)
        for dependent in dependents[node_id]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                ready.append(dependent)
    if len(order) < len(doc.nodes):
        cycle = _find_cycle({n: deps[n] for n in doc.nodes if waiting[n] > 0})
        path = " → ".join([*cycle, cycle[0]])
        problems.append(Problem(cycle[0], "cycle", f"nodes form a cycle: {path}"))
    return order


def _find_cycle(deps: dict[str, set[str]]) -> list[str]:
    """One cycle among nodes that Kahn's algorithm could not order (each has an unordered dependency)."""
    node = next(iter(deps))
    seen: list[str] = []
    while node not in seen:
        seen.append(node)
        node = next(iter(sorted(dep for dep in deps[node] if dep in deps)))
    return seen[seen.index(node) :][::-1]


def _single(doc: RecipeDoc, block: str, role: str, problems: list[Problem]) -> str | None:
    found = [node_id for node_id, spec in doc.nodes.items() if spec.block == block]
    if not found:
        problems.append(Problem(None, f"missing_{role}", f"recipe needs one {block!r} node (its {role}); it has none"))
        return None
    if len(found) > 1:
        for node_id in found[1:]:
            problems.append(Problem(node_id, f"duplicate_{role}", f"recipe has more than one {block!r} node"))
        return None
    return found[0]
