"""Omnitool recipe JSON: telling it apart, importing it as a native recipe, and exporting a recipe back.

An Omnitool recipe is `{"id", "meta": {"name", "description", …}, "rete": {"id": "mercs@0.1.1", "nodes": {…}},
…}`; each node is `{"id": 7, "name": "omnitool.jsonata", "data": {…}, "inputs": {port: {"connections":
[{"node", "output", "data"}]}}, "outputs": {port: {"connections": [{"node", "input", "data"}]}}, "position":
[x, y]}`, every connection listed on both of its ends.

`import_omnitool` maps each node through the table in `conveyor.recipes.omnitool_blocks` (node `7` stays node
`"7"`; helper nodes get ids like `"7-text"`), adds a `chat_input` start node and a `recipe_output` (fed by
the first `chat_output`) when the recipe has none, and compiles the result. Whatever cannot be mapped (an
unknown block, a connected port or a data value with no counterpart) is a problem naming the Omnitool node
and block; all of them are reported together in one `OmnitoolImportError` (422). With `allow_missing`, such
nodes are imported disabled, as `missing_block` placeholders, and reported as warnings instead; a node that
Omnitool itself has disabled is always imported so. A malformed document is always an error.

What the export needs is kept under `meta["x-omnitool"]`: the recipe's Omnitool `meta`, `rete.id` and other
top-level keys, and per node its Omnitool id, name, data, position and connections, with a fingerprint of
what the import made of it. `export_omnitool` (in `conveyor.recipes.omnitool_export`) writes unchanged nodes
back as they were read, so import → export → import is the identity.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor.blocks.base import BlockRegistry
from conveyor.errors import RecipeInvalidError
from conveyor.recipes.graph import compile_recipe
from conveyor.recipes.omnitool_blocks import CHAT_OUTPUT_PORTS, build_node
from conveyor.recipes.omnitool_export import export_omnitool
from conveyor.recipes.omnitool_nodes import (
    META_KEY,
    Issue,
    NodeBuilder,
    OmniNode,
    OmnitoolExportError,
    OmnitoolImportError,
    fingerprint,
    recipe_name,
    short,
)

__all__ = [
    "OmnitoolExportError",
    "OmnitoolImport",
    "OmnitoolImportError",
    "export_omnitool",
    "import_omnitool",
    "is_omnitool_recipe",
    "read_omnitool",
]

_RECIPE_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_NODE_KEYS = frozenset({"id", "name", "data", "inputs", "outputs", "position"})
# Problems `allow_missing` (or a disabled node) turns into warnings: the node is imported disabled instead.
_SKIPPABLE = frozenset({"unknown_block", "unsupported_port", "unsupported_data", "multiple_connections"})

Edge = tuple[int, str, int, str]  # (source node, its output port, target node, its input port)


@dataclass(frozen=True, slots=True)
class OmnitoolImport:
    """An imported recipe: the native document to save, and warnings (`{node, name, code, message}`)."""

    doc: dict[str, Any]
    warnings: list[dict[str, Any]] = field(default_factory=list)


def is_omnitool_recipe(doc: Any) -> bool:
    """Whether a parsed document is Omnitool recipe JSON (it has `rete`, which a native recipe never has)."""
    return isinstance(doc, Mapping) and "rete" in doc


def import_omnitool(
    doc: Mapping[str, Any], registry: BlockRegistry, *, allow_missing: bool = False, max_nodes: int = 1000
) -> dict[str, Any]:
    """The native recipe document for an Omnitool recipe; `OmnitoolImportError` (422) lists every problem."""
    return read_omnitool(doc, registry, allow_missing=allow_missing, max_nodes=max_nodes).doc


def read_omnitool(
    doc: Any, registry: BlockRegistry, *, allow_missing: bool = False, max_nodes: int = 1000
) -> OmnitoolImport:
    """`import_omnitool`, with the warnings: nodes imported disabled, approximations, added nodes."""
    parsed = _parse(doc, max_nodes)
    result = _Translation(parsed, allow_missing)
    problems = result.problems
    try:
        compile_recipe(result.doc, registry, max_nodes=max_nodes)
    except RecipeInvalidError as exc:
        problems = problems + [result.owner_issue(detail) for detail in exc.details or []]
    if problems:
        raise _error(problems, hint=not allow_missing and any(p.code in _SKIPPABLE for p in problems))
    for node in result.doc["nodes"].values():
        if META_KEY in node.get("meta", {}):
            node["meta"][META_KEY]["fingerprint"] = fingerprint(node)
    return OmnitoolImport(result.doc, [warning.as_dict() for warning in result.warnings])


def _error(problems: list[Issue], *, hint: bool = False) -> OmnitoolImportError:
    count = len(problems)
    message = f"Omnitool recipe cannot be imported: {count} problem{'s' if count != 1 else ''}"
    if hint:
        message += " (allow_missing imports unsupported nodes disabled)"
    return OmnitoolImportError(message, details=[problem.as_dict() for problem in problems])


# ------------------------------------------------------------------------------------------------------ parsing


@dataclass(slots=True)
class _Parsed:
    recipe_id: str | None
    meta: dict[str, Any]
    rete_id: Any
    rete_extra: dict[str, Any]
    extra: dict[str, Any]
    nodes: dict[int, OmniNode]
    edges: list[Edge]
    edge_data: dict[Edge, Any]


def _malformed(message: str, node: str | None = None, name: str | None = None) -> Issue:
    return Issue(node, name, "malformed", message)


def _parse(doc: Any, max_nodes: int) -> _Parsed:
    """Checks the document's shape; `OmnitoolImportError` lists everything malformed."""
    if not isinstance(doc, Mapping):
        kind = type(doc).__name__ if doc is not None else "null"
        raise _error([_malformed(f"an Omnitool recipe is a JSON object with `id`, `meta` and `rete`, not {kind}")])
    rete = doc.get("rete")
    if not isinstance(rete, Mapping):
        raise _error([_malformed("`rete` is missing or not an object: it holds the recipe's nodes")])
    raw_nodes = rete.get("nodes")
    if not isinstance(raw_nodes, Mapping):
        raise _error([_malformed("`rete.nodes` is missing or not an object of nodes by id")])
    if len(raw_nodes) > max_nodes:
        raise _error(
            [Issue(None, None, "too_many_nodes", f"recipe has {len(raw_nodes)} nodes; the limit is {max_nodes}")]
        )
    problems: list[Issue] = []
    meta = doc.get("meta", {})
    if not isinstance(meta, Mapping):
        problems.append(_malformed("`meta` must be an object"))
        meta = {}
    recipe_id = doc.get("id")
    if recipe_id == "":
        recipe_id = None
    if recipe_id is not None and not (isinstance(recipe_id, str) and _RECIPE_ID.match(recipe_id)):
        problems.append(
            Issue(None, None, "invalid_id", f"recipe id {short(recipe_id)} is not 1-64 letters, digits, '_' or '-'")
        )
    nodes: dict[int, OmniNode] = {}
    for key, raw in raw_nodes.items():
        node = _parse_node(str(key), raw, problems)
        if node is not None:
            nodes[node.id] = node
    edges, edge_data = _edges(nodes, problems)
    if problems:
        raise _error(problems)
    return _Parsed(
        recipe_id=recipe_id,
        meta=dict(meta),
        rete_id=rete.get("id"),
        rete_extra={k: v for k, v in rete.items() if k not in ("id", "nodes")},
        extra={k: v for k, v in doc.items() if k not in ("id", "meta", "rete")},
        nodes=nodes,
        edges=edges,
        edge_data=edge_data,
    )


def _parse_node(key: str, raw: Any, problems: list[Issue]) -> OmniNode | None:
    if not isinstance(raw, Mapping):
        problems.append(_malformed(f"node {key!r} is not an object", key))
        return None
    name = raw.get("name")
    name = name if isinstance(name, str) and name else None
    found = len(problems)
    if name is None:
        problems.append(_malformed(f"node {key!r} has no block `name`", key))
    node_id = raw.get("id")
    if isinstance(node_id, bool) or not isinstance(node_id, int) or node_id < 0 or str(node_id) != key:
        problems.append(_malformed(f"node {key!r} must have `id` {key} (a whole number, its key)", key, name))
    data = raw.get("data", {})
    if not isinstance(data, Mapping):
        problems.append(_malformed("`data` must be an object", key, name))
    inputs = _ports(raw.get("inputs", {}), "inputs", "output", key, name, problems)
    outputs = _ports(raw.get("outputs", {}), "outputs", "input", key, name, problems)
    if len(problems) > found or name is None or not isinstance(node_id, int) or not isinstance(data, Mapping):
        return None
    return OmniNode(
        id=node_id,
        name=name,
        data=dict(data),
        position=raw.get("position"),
        inputs=inputs,
        outputs=outputs,
        extra={k: v for k, v in raw.items() if k not in _NODE_KEYS},
    )


def _ports(
    raw: Any, side: str, other: str, key: str, name: str | None, problems: list[Issue]
) -> dict[str, list[dict[str, Any]]]:
    """A node's `inputs` or `outputs`: port -> its connections, each `{"node": int, other: str, "data"}`."""
    if not isinstance(raw, Mapping):
        problems.append(_malformed(f"`{side}` must be an object of ports", key, name))
        return {}
    ports: dict[str, list[dict[str, Any]]] = {}
    for port, entry in raw.items():
        connections = entry.get("connections", []) if isinstance(entry, Mapping) else None
        if not isinstance(connections, list):
            problems.append(_malformed(f"{side[:-1]} {port!r} must be an object with a `connections` list", key, name))
            continue
        ports[port] = []
        for connection in connections:
            peer = connection.get("node") if isinstance(connection, Mapping) else None
            peer_port = connection.get(other) if isinstance(connection, Mapping) else None
            if isinstance(peer, bool) or not isinstance(peer, int) or not isinstance(peer_port, str):
                problems.append(
                    _malformed(f"{side[:-1]} {port!r} has a connection that is not {{node, {other}}}", key, name)
                )
                continue
            ports[port].append({"node": peer, other: peer_port, "data": connection.get("data", {})})
    return ports


def _edges(nodes: dict[int, OmniNode], problems: list[Issue]) -> tuple[list[Edge], dict[Edge, Any]]:
    """Every connection once, from either end (input ends first); a missing node or undeclared port is malformed."""
    edges: dict[Edge, Any] = {}
    for node in nodes.values():
        for port, connections in node.inputs.items():
            for connection in connections:
                source = nodes.get(connection["node"])
                edge = (connection["node"], connection["output"], node.id, port)
                if _check_end(node, f"input {port!r}", source, connection["node"], "output", edge[1], problems):
                    edges.setdefault(edge, connection["data"])
    for node in nodes.values():
        for port, connections in node.outputs.items():
            for connection in connections:
                peer = nodes.get(connection["node"])
                edge = (node.id, port, connection["node"], connection["input"])
                if _check_end(node, f"output {port!r}", peer, connection["node"], "input", edge[3], problems):
                    edges.setdefault(edge, connection["data"])
    for source_id, source_port, target_id, target_port in edges:
        nodes[source_id].wired_out.add(source_port)
        wired = nodes[target_id].wired_in
        wired[target_port] = wired.get(target_port, 0) + 1
    return list(edges), edges


def _check_end(
    node: OmniNode, where: str, peer: OmniNode | None, peer_id: int, side: str, port: str, problems: list[Issue]
) -> bool:
    if peer is None:
        problems.append(
            _malformed(f"{where} is connected to node {peer_id}, which the recipe does not have", node.key, node.name)
        )
        return False
    declared = peer.outputs if side == "output" else peer.inputs
    if port not in declared:
        known = ", ".join(sorted(declared)) or "none"
        problems.append(
            _malformed(
                f"{where} is connected to {side} {port!r} of node {peer_id} ({peer.name}), which has no such {side}"
                f" (has: {known})",
                node.key,
                node.name,
            )
        )
        return False
    return True


# -------------------------------------------------------------------------------------------------- translation


class _Translation:
    """The native document for a parsed Omnitool recipe, with the problems and warnings found on the way."""

    def __init__(self, parsed: _Parsed, allow_missing: bool) -> None:
        self.parsed = parsed
        self.problems: list[Issue] = []
        self.warnings: list[Issue] = []
        self.owners: dict[str, tuple[str | None, str | None]] = {}
        self.builders: dict[int, NodeBuilder] = {}
        self.placeholders: set[int] = set()
        self.nodes: dict[str, dict[str, Any]] = {}
        self.incoming: dict[int, list[Edge]] = {}  # by target node, in edge order
        self.outgoing: dict[int, list[Edge]] = {}  # by source node, in edge order
        for edge in parsed.edges:
            self.outgoing.setdefault(edge[0], []).append(edge)
            self.incoming.setdefault(edge[2], []).append(edge)
        for node in parsed.nodes.values():
            self._add(build_node(node), allow_missing)
        for edge in parsed.edges:
            self._wire(edge)
        self._add_start_and_output()
        self.doc = self._document()

    def _add(self, builder: NodeBuilder, allow_missing: bool) -> None:
        node = builder.node
        self.builders[node.id] = builder
        self.owners[node.key] = (node.key, node.name)
        helpers: dict[str, dict[str, Any]] = {}
        if builder.problems:
            skip = allow_missing or not node.enabled
            (self.warnings if skip else self.problems).extend(builder.problems)
            self.placeholders.add(node.id)
            reason = "; ".join(problem.message for problem in builder.problems)
            config: dict[str, Any] = {"block": node.name[:200], "reason": reason[:2000]}
            if node.wired_out:
                config["outputs"] = sorted(node.wired_out)
            spec: dict[str, Any] = {"block": "missing_block", "config": config, "enabled": False, "inputs": {}}
        else:
            self.warnings.extend(builder.warnings)
            spec = {"block": builder.block, "inputs": dict(builder.wiring)}
            if builder.config:
                spec["config"] = builder.config
            if not node.enabled:
                spec["enabled"] = False
            helpers = builder.helpers
        title = node.data.get("x-omni-title")
        if isinstance(title, str) and title.strip():
            spec["title"] = title.strip()[:200]
        spec["meta"] = {META_KEY: self._node_meta(node)}
        self.nodes[node.key] = spec
        for helper_id, helper in helpers.items():
            self.nodes[helper_id] = helper
            self.owners[helper_id] = (node.key, node.name)

    def _node_meta(self, node: OmniNode) -> dict[str, Any]:
        """What the export writes back: the node as read, with its connections from both ends in their order."""
        inputs: dict[str, list[dict[str, Any]]] = {port: [] for port in node.inputs}
        for edge in self.incoming.get(node.id, []):
            data = self.parsed.edge_data[edge]
            inputs.setdefault(edge[3], []).append({"node": edge[0], "output": edge[1], "data": data})
        outputs = _outgoing(node, self.outgoing.get(node.id, []), self.parsed.edge_data)
        meta: dict[str, Any] = {"id": node.id, "name": node.name, "data": node.data}
        if node.position is not None:
            meta["position"] = node.position
        meta |= {"inputs": inputs, "outputs": outputs}
        if node.extra:
            meta["extra"] = node.extra
        return meta

    def _source(self, node_id: int, port: str, depth: int = 0) -> tuple[str, str] | None:
        """The native (node, port) giving Omnitool output `port` of `node_id`; None when it has none."""
        builder = self.builders[node_id]
        if node_id in self.placeholders:
            return builder.node.key, port
        if port in builder.aliases and depth < 100:
            input_port = builder.aliases[port]
            feeding = [edge for edge in self.incoming.get(node_id, []) if edge[3] == input_port]
            if not feeding:
                return None  # the node's builder reported it
            return self._source(feeding[0][0], feeding[0][1], depth + 1)
        return builder.outputs.get(port)

    def _wire(self, edge: Edge) -> None:
        source, source_port, target, target_port = edge
        builder = self.builders[target]
        spec = self.nodes[builder.node.key]
        if target in self.placeholders:
            ours: str | None = target_port
            suffix = 2
            while ours in spec["inputs"]:  # a placeholder keeps each connection, however many share a port
                ours, suffix = f"{target_port}~{suffix}", suffix + 1
        else:
            ours = builder.inputs.get(target_port)
        if ours is None:
            return  # reported (or ignored, as Omnitool ignores it) by the node's builder
        found = self._source(source, source_port)
        if found is None:
            return
        if ours in spec["inputs"]:
            self.problems.append(
                Issue(
                    builder.node.key,
                    builder.node.name,
                    "multiple_connections",
                    f"input {target_port!r} is one of several Omnitool inputs that feed Conveyor input {ours!r}",
                )
            )
            return
        spec["inputs"][ours] = f"{found[0]}.{found[1]}"

    def _add_start_and_output(self) -> None:
        blocks = [spec["block"] for spec in self.nodes.values()]
        if "chat_input" not in blocks:
            self.nodes["start"] = {"block": "chat_input", "meta": {META_KEY: {"synthetic": "start"}}}
            self.warnings.append(
                Issue(
                    None,
                    None,
                    "added_node",
                    "the recipe has no chat_input: node 'start' was added (six optional inputs)",
                )
            )
        if "recipe_output" not in blocks:
            inputs: dict[str, str] = {}
            shown = [
                builder.node
                for builder in self.builders.values()
                if builder.block == "chat_output" and builder.node.id not in self.placeholders
            ]
            # Every chat message becomes part of the result: the first under Omnitool's own names (so the
            # result object sorts it as Omnitool would), the others with their node id after the name.
            for index, node in enumerate(shown):
                wired = self.nodes[node.key]["inputs"]
                for port in CHAT_OUTPUT_PORTS:
                    if port in wired:
                        name = "objects" if port == "object" else port
                        inputs[name if index == 0 else f"{name}_{node.key}"] = f"{node.key}.{port}"
            output: dict[str, Any] = {"block": "recipe_output", "meta": {META_KEY: {"synthetic": "output"}}}
            if inputs:
                output["inputs"] = inputs
            self.nodes["output"] = output
            what = f"what chat_output nodes {', '.join(str(n.id) for n in shown)} show" if shown else "nothing"
            self.warnings.append(
                Issue(
                    None,
                    None,
                    "added_node",
                    f"the recipe has no recipe_output: node 'output' was added, returning {what}",
                )
            )

    def _document(self) -> dict[str, Any]:
        parsed = self.parsed
        name, description = recipe_name(parsed.meta)
        original = parsed.meta.get("name")
        if not isinstance(original, str) or original.strip() != name:
            self.warnings.append(
                Issue(None, None, "renamed", f"the recipe is named {name!r} (meta.name was {short(original)})")
            )
        recipe_meta: dict[str, Any] = {"meta": parsed.meta, "rete": {"id": parsed.rete_id, **parsed.rete_extra}}
        if parsed.extra:
            recipe_meta["extra"] = parsed.extra
        doc: dict[str, Any] = {"name": name, "meta": {META_KEY: recipe_meta}, "nodes": self.nodes}
        if parsed.recipe_id is not None:
            doc["id"] = parsed.recipe_id
        if description:
            doc["description"] = description
        for spec in self.nodes.values():
            if not spec.get("inputs"):
                spec.pop("inputs", None)
        return doc

    def owner_issue(self, detail: Any) -> Issue:
        """A compile problem restated for the Omnitool node it belongs to (helpers belong to their node)."""
        detail = detail if isinstance(detail, Mapping) else {"message": str(detail)}
        native = detail.get("node")
        key, name = self.owners.get(native, (None, None)) if isinstance(native, str) else (None, None)
        message = str(detail.get("message", ""))
        if isinstance(native, str) and native != key:
            message = f"({'helper' if key else 'added'} node {native!r}) {message}"
        return Issue(key, name, str(detail.get("code", "invalid_recipe")), message)


def _outgoing(node: OmniNode, edges: list[Edge], edge_data: dict[Edge, Any]) -> dict[str, list[dict[str, Any]]]:
    """A node's outgoing connections (`edges`, all from it) per port: in its own `outputs` order, then those
    only its peers listed."""
    outputs: dict[str, list[dict[str, Any]]] = {port: [] for port in node.outputs}
    listed: set[Edge] = set()
    for port, connections in node.outputs.items():
        for connection in connections:
            edge = (node.id, port, connection["node"], connection["input"])
            if edge in edge_data and edge not in listed:
                listed.add(edge)
                outputs[port].append({"node": edge[2], "input": edge[3], "data": edge_data[edge]})
    for edge in edges:
        if edge[0] == node.id and edge not in listed:
            listed.add(edge)
            outputs.setdefault(edge[1], []).append({"node": edge[2], "input": edge[3], "data": edge_data[edge]})
    return outputs
