"""Writing a native recipe as Omnitool recipe JSON (the way back from `conveyor.recipes.omnitool`).

A node an Omnitool import made, and not changed since (its fingerprint still matches), is written back as it
was read: its id, block name, data, position and connections. Helper nodes fold back into their Omnitool node
(a changed constant updates that node's data); the start and output nodes the import added are left out. Any
other node is written from its block and configuration through `REVERSE`; a block with no Omnitool
counterpart (e.g. `text_template`) makes the export fail with `OmnitoolExportError` (422) naming every such node.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor.recipes.graph import parse_doc
from conveyor.recipes.model import NodeSpec, RecipeDoc
from conveyor.recipes.omnitool_blocks import (
    CHAT_INPUT_PORTS,
    CHAT_OUTPUT_PORTS,
    METADATA_TEXTS,
    PREPARE_TARGETS,
    RECIPE_OUTPUT_PORTS,
    RUN_RECIPE_INPUTS,
)
from conveyor.recipes.omnitool_nodes import META_KEY, Issue, OmnitoolExportError, fingerprint, recipe_name

DEFAULT_RETE_ID = "mercs@0.1.1"


@dataclass(frozen=True, slots=True)
class Reversed:
    """An Omnitool node made from a native one: block name, data, and port names (ours -> Omnitool's).

    `inputs`/`outputs` list the block's Omnitool ports; a native port missing from them cannot be exported
    (None: any name goes, as for dynamic ports).
    """

    name: str
    data: dict[str, Any]
    ins: Mapping[str, str] = field(default_factory=dict)
    outs: Mapping[str, str] = field(default_factory=dict)
    inputs: tuple[str, ...] | None = ()
    outputs: tuple[str, ...] | None = ()
    drop: tuple[str, ...] = ()
    """Keys of the data the import kept that no longer hold (e.g. a model no longer set): left out."""

    def in_port(self, ours: str) -> str | None:
        port = self.ins.get(ours, ours)
        return port if self.inputs is None or port in self.inputs else None

    def out_port(self, ours: str) -> str | None:
        port = self.outs.get(ours, ours)
        return port if self.outputs is None or port in self.outputs else None


Reverse = Callable[[NodeSpec], "Reversed | str"]


def _chat_input(spec: NodeSpec) -> Reversed | str:
    fields = spec.config.get("fields")
    if fields is not None and set(fields) - set(CHAT_INPUT_PORTS):
        return f"inputs other than Omnitool's ({', '.join(CHAT_INPUT_PORTS)}) have no Omnitool form"
    default = (fields or {}).get("text", {}).get("default")
    data = {port: "" for port in CHAT_INPUT_PORTS if port != "json"} | {
        "text": default if isinstance(default, str) else ""
    }
    return Reversed("omnitool.chat_input", data, outputs=CHAT_INPUT_PORTS)


def _chat_output(spec: NodeSpec) -> Reversed | str:
    data = {"textType": spec.config.get("text_type", "text/markdown"), "persistData": "Permanent"}
    return Reversed("omnitool.chat_output", data, inputs=(*CHAT_OUTPUT_PORTS, "persistData"), outputs=())


def _recipe_output(spec: NodeSpec) -> Reversed | str:
    return Reversed(
        "omnitool.recipe_output", {"persistData": "Permanent"}, inputs=(*RECIPE_OUTPUT_PORTS, "persistData")
    )


def _input_text(spec: NodeSpec) -> Reversed | str:
    return Reversed("omnitool.input_text", {"text": spec.config.get("text", "")}, inputs=("text",), outputs=("text",))


def _number_input(spec: NodeSpec) -> Reversed | str:
    if spec.config.get("min") is not None or spec.config.get("max") is not None:
        return "number_input's min and max have no Omnitool form"
    data = {"number": spec.config.get("value", 0), "number_format": "any"}
    return Reversed("omnitool.number_input", data, inputs=("number",), outputs=("number",))


def _boolean_input(spec: NodeSpec) -> Reversed | str:
    data = {"boolean": bool(spec.config.get("value", False))}
    return Reversed("omnitool.input_boolean", data, inputs=("boolean",), outputs=("boolean",))


def _json_input(spec: NodeSpec) -> Reversed | str:
    return Reversed("omnitool.json_input", {"json": spec.config.get("json")}, inputs=("json",), outputs=("json",))


def _multi_text_replace(spec: NodeSpec) -> Reversed | str:
    from conveyor.blocks.text import placeholder_port

    template = spec.config.get("template", "")
    ins = {
        placeholder_port(title): re.sub(r"[^a-z0-9]", "_", title.lower())
        for title in re.findall(r"\{input:([^{}]+)\}", template, flags=re.IGNORECASE)
    }
    data = {"source": template, "replace": "", "images": ""}
    return Reversed("omnitool.multi_text_replace", data, ins=ins, inputs=None, outputs=("text",))


def _text_replace(spec: NodeSpec) -> Reversed | str:
    config = spec.config
    find, replace = config.get("find", ""), config.get("replace", "")
    count, ignore_case = config.get("count", 0), config.get("ignore_case", False)
    if replace != replace.strip():
        return "Omnitool trims the replacement, so one with spaces at its ends has no Omnitool form"
    if not config.get("regex"):
        if count != 1 or ignore_case or "$" in replace or find.startswith("/"):
            return "only a first-occurrence, case-sensitive replacement without `$` has an Omnitool form"
        match = find
    else:
        inline = re.match(r"\(\?([ms]+)\)", find)  # the import writes JavaScript's m and s flags inline
        pattern = find[inline.end() :] if inline else find
        flags = ("g" if count == 0 else "") + ("i" if ignore_case else "") + (inline.group(1) if inline else "")
        if count not in (0, 1) or not flags or "/" in pattern or re.search(r"[\\$]", replace):
            return "this regular expression replacement has no Omnitool form"
        match = f"/{pattern}/{flags}"
    data = {"text": "", "match": match, "replace": replace}
    return Reversed("omnitool.text_replace", data, inputs=("text", "match", "replace"), outputs=("text",))


def _text_splitter(spec: NodeSpec) -> Reversed | str:
    if spec.config.get("chunk_overlap") or spec.config.get("separator"):
        return "text_splitter's chunk_overlap and separator have no Omnitool form"
    data = {"chunkSize": spec.config.get("chunk_size", 1000), "delimiter": "", "chunkPrefix": "", "chunkPostfix": ""}
    return Reversed("omnitool.text_splitter", data, inputs=("text",), outputs=("chunks",))


def _jsonata(spec: NodeSpec) -> Reversed | str:
    data = {"transform": spec.config.get("expression", ""), "object": None}
    return Reversed(
        "omnitool.jsonata",
        data,
        ins={"json": "object"},
        outs={"result": "object"},
        inputs=("object",),
        outputs=("object",),
    )


def _text_to_json(spec: NodeSpec) -> Reversed | str:
    return Reversed("omnitool.text_to_json", {"text": ""}, inputs=("text",), outputs=("json",))


def _write_document(spec: NodeSpec) -> Reversed | str:
    mime = spec.config.get("mime", "text/plain")
    if mime not in ("text/plain", "text/markdown"):
        return f"write_document's {mime} has no Omnitool form (text/plain or text/markdown)"
    stem = str(spec.config.get("file_name", "document.txt")).rsplit(".", 1)[0]
    data = {"fileName": stem, "textType": mime, "storageType": "Permanent", "text": ""}
    return Reversed("omnitool.write_document", data, inputs=("text",), outputs=("document",))


def _json_packer(spec: NodeSpec) -> Reversed | str:
    data = {"fields_list": ",".join(f"{name}:object" for name in spec.inputs)}
    return Reversed("omnipath.json_packer", data, inputs=None, outputs=("json",))


def _json_unpacker(spec: NodeSpec) -> Reversed | str:
    data = {"fields_list": ",".join(f"{key}:object" for key in spec.config.get("keys", []))}
    return Reversed("omnipath.json_unpacker", data, inputs=("json",), outputs=None)


def _run_recipe(spec: NodeSpec) -> Reversed | str:
    data = {"recipes_list": spec.config.get("recipe", "invalid"), "recipe_id": ""}
    return Reversed(
        "omnitool.run_recipe", data, ins={"inputs": "args"}, inputs=(*RUN_RECIPE_INPUTS, "args"), outputs=("text",)
    )


def _recipe_metadata(spec: NodeSpec) -> Reversed | str:
    data = {key: spec.config.get(key, "") for key in METADATA_TEXTS} | {"tags": spec.config.get("tags", [])}
    return Reversed("omnitool.recipe_metadata", data, inputs=("usage",), outputs=("text",))


def _image_info(spec: NodeSpec) -> Reversed | str:
    return Reversed("omnitool.image_info", {}, ins={"images": "image"}, inputs=("image",), outputs=("width", "height"))


def _prepare_image(spec: NodeSpec) -> Reversed | str:
    config = spec.config
    wanted = (config.get("width"), config.get("height"), config.get("format"))
    target = next((name for name, size in PREPARE_TARGETS.items() if size == wanted), None)
    if target is None or config.get("fit", "cover") != "contain" or config.get("crop") is not None:
        return "only the sizes and formats of Omnitool's targets, fit `contain`, have an Omnitool form"
    return Reversed(
        "omnitool.prepare_image",
        {"Target": target, "Source": ""},
        ins={"images": "Source"},
        outs={"images": "Result"},
        inputs=("Source",),
        outputs=("Result",),
    )


# Language models. Omnitool's chat blocks take the system (`instruction`) and user (`prompt`) messages as plain text,
# from data or a connection; ours are Jinja2 templates. A template that is plain text goes into data, one that is
# just a variable (`{{ name }}`, or the import's `{{ name | default('') }}`) wires input `name` to the port, and any
# other template has no Omnitool form.
_JINJA = re.compile(r"\{[{%#]")
_ONE_VARIABLE = re.compile(r"\{\{-?\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\|\s*default\(\s*(?:''|\"\")\s*\)\s*)?-?\}\}")
_CHAT_BLOCKS = ("openai.simpleChatGPT", "openai.advancedChatGPT", "omnitool.large_language_model")
_SIMPLE_INPUTS = ("instruction", "prompt", "model", "temperature")
_ADVANCED_INPUTS = (*_SIMPLE_INPUTS, "top_p", "max_tokens", "json_mode", "seed")
_CREATIVE_TEMPERATURE = 0.9  # what the import makes of large_language_model's `creative`
_OPTIONS = ("model", "temperature", "max_tokens")


def _message(template: str, port: str, ins: dict[str, str], data: dict[str, Any]) -> str | None:
    """Puts one message template into Omnitool's form (a data value or a wired port); else says why it cannot."""
    if not _JINJA.search(template):
        data[port] = template
        return None
    variable = _ONE_VARIABLE.fullmatch(template)
    if variable is None:
        return (
            f"the {'system message' if port.lower() == 'instruction' else 'prompt'} template {template[:60]!r} is "
            "neither plain text nor one variable; Omnitool's chat blocks take plain text (build the text first, "
            "e.g. with multi_text_replace)"
        )
    if variable.group(1) in ins:
        return f"input {variable.group(1)!r} is both the system message and the prompt; Omnitool has one port each"
    ins[variable.group(1)] = port
    data[port] = ""
    return None


def _chat_block(spec: NodeSpec) -> str:
    """The Omnitool block a native llm_chat node becomes: the one it was imported from while that still fits,
    else simpleChatGPT, or advancedChatGPT when it needs JSON mode or a token limit."""
    config = spec.config
    was = _info(spec).get("name")
    plain = config.get("json_schema") is None and config.get("max_tokens") is None
    if (
        was == "omnitool.large_language_model"
        and plain
        and not config.get("model")
        and config.get("provider", "default") == "default"
        and config.get("temperature") in (None, _CREATIVE_TEMPERATURE)
    ):
        return str(was)
    if was == "openai.advancedChatGPT" or not plain:
        return "openai.advancedChatGPT"
    return "openai.simpleChatGPT"


def _llm_chat(spec: NodeSpec) -> Reversed | str:
    """llm_chat as Omnitool's openai.simpleChatGPT / advancedChatGPT (or the large_language_model it came from).

    The default provider and `openai` are written as Omnitool's OpenAI blocks (which call OpenAI); the bundled
    `local` model and a JSON schema other than "any object" (Omnitool's JSON mode) have no Omnitool form.
    """
    config = spec.config
    if config.get("provider", "default") not in ("default", "openai"):
        return f"the {config['provider']} provider has no Omnitool form (Omnitool's chat blocks call OpenAI)"
    schema = config.get("json_schema")
    if schema is not None and schema != {"type": "object"}:
        return (
            "a JSON schema other than {'type': 'object'} has no Omnitool form: Omnitool's JSON mode asks for any "
            "JSON object and checks nothing"
        )
    name = _chat_block(spec)
    llm = name == "omnitool.large_language_model"
    ins: dict[str, str] = {}
    data: dict[str, Any] = {}
    for template, port in ((config.get("system", ""), "instruction"), (config.get("prompt", "{{ prompt }}"), "prompt")):
        why = _message(str(template), port.capitalize() if llm else port, ins, data)
        if why is not None:
            return why
    if llm:
        creative = config.get("temperature") == _CREATIVE_TEMPERATURE
        if creative or (_info(spec).get("data") or {}).get("Criteria") == "creative":
            data["Criteria"] = "creative" if creative else "fast"
        return Reversed(
            name, data, ins=ins, inputs=("Instruction", "Prompt"), outs={"text": "Reply"}, outputs=("Reply",)
        )
    data |= {key: config[key] for key in _OPTIONS if config.get(key) is not None}
    drop = tuple(key for key in _OPTIONS if key not in data)
    if name == "openai.simpleChatGPT":
        return Reversed(name, data, ins=ins, inputs=_SIMPLE_INPUTS, outputs=("text",), drop=drop)
    data["json_mode"] = schema is not None
    outs = {"text": "answer_text", "json": "answer_json"}
    return Reversed(name, data, ins=ins, inputs=_ADVANCED_INPUTS, outs=outs, outputs=tuple(outs.values()), drop=drop)


def _missing_block(spec: NodeSpec) -> Reversed | str:
    return Reversed(str(spec.config.get("block", "omnitool._block_missing")), {}, inputs=None, outputs=None)


REVERSE: dict[str, Reverse] = {
    "chat_input": _chat_input,
    "chat_output": _chat_output,
    "recipe_output": _recipe_output,
    "input_text": _input_text,
    "number_input": _number_input,
    "boolean_input": _boolean_input,
    "json_input": _json_input,
    "multi_text_replace": _multi_text_replace,
    "text_replace": _text_replace,
    "text_splitter": _text_splitter,
    "jsonata": _jsonata,
    "text_to_json": _text_to_json,
    "write_document": _write_document,
    "json_packer": _json_packer,
    "json_unpacker": _json_unpacker,
    "run_recipe": _run_recipe,
    "recipe_metadata": _recipe_metadata,
    "image_info": _image_info,
    "prepare_image": _prepare_image,
    "llm_chat": _llm_chat,
    "missing_block": _missing_block,
}
"""Our block -> how a node of it is written as an Omnitool node (when it was not imported unchanged)."""


# --------------------------------------------------------------------------------------------------------- export


def export_omnitool(native_doc: Any, *, recipe_id: str | None = None) -> dict[str, Any]:
    """The Omnitool recipe JSON for a native recipe document (`recipe_id` overrides the document's id).

    `RecipeInvalidError` (422) for a document that is not a recipe; `OmnitoolExportError` (422) listing every
    node with no Omnitool form.
    """
    doc = native_doc if isinstance(native_doc, RecipeDoc) else parse_doc(native_doc)
    return _Export(doc).build(recipe_id)


def _info(spec: NodeSpec) -> dict[str, Any]:
    info = spec.meta.get(META_KEY)
    return info if isinstance(info, dict) else {}


class _Export:
    def __init__(self, doc: RecipeDoc) -> None:
        self.doc = doc
        self.problems: list[Issue] = []
        self.main: dict[str, int] = {}  # native node id -> Omnitool id, for nodes written as Omnitool nodes
        self.unchanged: set[str] = set()
        self.reversed: dict[str, Reversed] = {}
        self.omni: dict[int, dict[str, Any]] = {}
        self._assign_ids()
        self.by_omni = {omni_id: node_id for node_id, omni_id in self.main.items()}

    def _assign_ids(self) -> None:
        taken: set[int] = set()
        later: list[str] = []
        for node_id, spec in self.doc.nodes.items():
            info = _info(spec)
            if "helper" in info:
                continue
            if "synthetic" in info and info.get("fingerprint") == fingerprint(spec.model_dump()):
                continue  # added by the import and not changed since: not part of the Omnitool recipe
            stored = info.get("id")
            if isinstance(stored, int) and not isinstance(stored, bool) and stored not in taken and "name" in info:
                self.main[node_id] = stored
                taken.add(stored)
            else:
                later.append(node_id)
        for node_id in later:
            wanted = int(node_id) if node_id.isdigit() and len(node_id) < 16 else None
            if wanted is None or wanted in taken:
                wanted = max(taken, default=0) + 1
            self.main[node_id] = wanted
            taken.add(wanted)

    def _problem(self, node_id: str, message: str) -> None:
        spec = self.doc.nodes[node_id]
        self.problems.append(Issue(node_id, spec.block, "no_omnitool_form", message))

    def build(self, recipe_id: str | None) -> dict[str, Any]:
        for node_id, omni_id in self.main.items():
            self.omni[omni_id] = self._node(node_id, omni_id)
        self._fold_helpers()
        edges = self._edges()
        self._connect(edges)
        if self.problems:
            count = len(self.problems)
            raise OmnitoolExportError(
                f"recipe cannot be written as Omnitool JSON: {count} problem{'s' if count != 1 else ''}",
                details=[problem.as_dict() for problem in self.problems],
            )
        return self._document(recipe_id)

    # -- nodes

    def _node(self, node_id: str, omni_id: int) -> dict[str, Any]:
        spec = self.doc.nodes[node_id]
        info = _info(spec)
        if "name" in info and info.get("fingerprint") == fingerprint(spec.model_dump()):
            self.unchanged.add(node_id)
            node = {"id": omni_id, "name": info["name"], "data": dict(info.get("data") or {})}
            if "position" in info:
                node["position"] = info["position"]
            return node | dict(info.get("extra") or {})
        reverse = REVERSE.get(spec.block)
        result = reverse(spec) if reverse else f"{spec.block} has no Omnitool block"
        if isinstance(result, str):
            self._problem(node_id, result)
            return {"id": omni_id, "name": spec.block, "data": {}}
        self.reversed[node_id] = result
        stored = dict(info.get("data") or {}) if info.get("name") == result.name else {}
        data = {key: value for key, value in stored.items() if key not in result.drop} | result.data
        if not spec.enabled or "xOmniEnabled" in data:
            data["xOmniEnabled"] = spec.enabled
        if spec.title:
            data["x-omni-title"] = spec.title
        node = {"id": omni_id, "name": result.name, "data": data, "position": info.get("position", [omni_id * 300, 0])}
        return node | dict(info.get("extra") or {})

    def _owner(self, helper: Mapping[str, Any]) -> str | None:
        """The native id of the Omnitool node a helper belongs to, when that node is still there."""
        of = helper.get("of")
        owner = self.by_omni.get(of) if isinstance(of, int) else None
        return owner if owner is not None and _info(self.doc.nodes[owner]).get("id") == of else None

    def _helper_port(self, owner: str, helper_id: str, stored: str) -> str:
        """The Omnitool port a constant helper's value goes to: as imported, unless its node is now written as
        another block (e.g. large_language_model's `Instruction` as simpleChatGPT's `instruction`)."""
        reversed_ = self.reversed.get(owner)
        if reversed_ is None:
            return stored
        for ours, ref in self.doc.nodes[owner].inputs.items():
            if ref.partition(".")[0] == helper_id:
                return reversed_.in_port(ours) or stored
        return stored

    def _fold_helpers(self) -> None:
        """A constant helper's value goes into its node's data (unless both are unchanged, when it is there);
        a changed adapter cannot be written back."""
        for node_id, spec in self.doc.nodes.items():
            info = _info(spec)
            helper = info.get("helper")
            owner = self._owner(helper) if isinstance(helper, dict) else None
            if owner is None or not isinstance(helper, dict):
                continue
            if info.get("fingerprint") == fingerprint(spec.model_dump()) and owner in self.unchanged:
                continue
            if "input" in helper:
                value = next(iter(spec.config.values()), None)
                self.omni[self.main[owner]]["data"][self._helper_port(owner, node_id, str(helper["input"]))] = value
            elif info.get("fingerprint") != fingerprint(spec.model_dump()):
                self._problem(node_id, "this node, made by the Omnitool import, was changed; change its node instead")

    # -- connections

    def _source(self, ref: str) -> tuple[int, str] | None:
        """The Omnitool (node, output port) a native `node.port` reference reads; None for a constant helper."""
        node_id, _, port = ref.partition(".")
        spec = self.doc.nodes.get(node_id)
        if spec is None:
            return None
        helper = _info(spec).get("helper")
        if isinstance(helper, dict):
            owner = self._owner(helper)
            outputs = helper.get("outputs")
            if owner is None or not isinstance(outputs, dict) or port not in outputs:
                return None
            return self.main[owner], str(outputs[port])
        if node_id not in self.main:
            self._problem(node_id, "nodes read this node, which the import added; Omnitool has no such node")
            return None
        if node_id in self.unchanged:  # its readers were wired by the import: names map as the import mapped them
            reverse = REVERSE.get(spec.block)
            result = reverse(spec) if reverse else None
            return self.main[node_id], result.outs.get(port, port) if isinstance(result, Reversed) else port
        reversed_ = self.reversed.get(node_id)
        omni_port = reversed_.out_port(port) if reversed_ else port
        if omni_port is None:
            self._problem(node_id, f"output {port!r} has no Omnitool port")
            return None
        return self.main[node_id], omni_port

    def _edges(self) -> list[tuple[int, str, int, str, Any]]:
        """Every Omnitool connection: as stored for unchanged nodes, else from the native wiring."""
        edges: dict[tuple[int, str, int, str], Any] = {}
        exported = set(self.omni)
        for node_id, omni_id in self.main.items():
            spec = self.doc.nodes[node_id]
            if node_id in self.unchanged:
                for port, connections in (_info(spec).get("inputs") or {}).items():
                    for connection in connections:
                        if connection.get("node") in exported:
                            key = (connection["node"], connection["output"], omni_id, port)
                            edges.setdefault(key, connection.get("data", {}))
                continue
            reversed_ = self.reversed.get(node_id)
            for ours, ref in spec.inputs.items():
                source = self._source(ref)
                if source is None:
                    continue
                port = reversed_.in_port(ours) if reversed_ else ours
                if port is None:
                    self._problem(node_id, f"input {ours!r} has no Omnitool port")
                    continue
                edges.setdefault((source[0], source[1], omni_id, port), {})
        return [(*key, data) for key, data in edges.items()]

    def _connect(self, edges: list[tuple[int, str, int, str, Any]]) -> None:
        """Lists each connection on both ends, keeping the stored order of unchanged nodes."""
        incoming: dict[int, list[tuple[int, str, int, str, Any]]] = {}
        outgoing: dict[int, list[tuple[int, str, int, str, Any]]] = {}
        for edge in edges:
            incoming.setdefault(edge[2], []).append(edge)
            outgoing.setdefault(edge[0], []).append(edge)
        for omni_id, node in self.omni.items():
            node_id = self.by_omni[omni_id]
            info = _info(self.doc.nodes[node_id])
            reversed_ = self.reversed.get(node_id)
            inputs: dict[str, list[dict[str, Any]]] = {}
            outputs: dict[str, list[dict[str, Any]]] = {}
            stored_out: dict[str, Any] = {}
            if node_id in self.unchanged:
                inputs = {port: [] for port in info.get("inputs") or {}}
                outputs = {port: [] for port in info.get("outputs") or {}}
                stored_out = info.get("outputs") or {}
            elif reversed_ is not None:
                inputs = {port: [] for port in reversed_.inputs or ()}
                outputs = {port: [] for port in reversed_.outputs or ()}
            for source, source_port, _, port, data in incoming.get(omni_id, []):
                inputs.setdefault(port, []).append({"node": source, "output": source_port, "data": data})
            leaving = {(e[1], e[2], e[3]): e[4] for e in outgoing.get(omni_id, [])}
            for port, connections in stored_out.items():
                for connection in connections:
                    key = (port, connection.get("node"), connection.get("input"))
                    if key in leaving:
                        outputs[port].append({"node": key[1], "input": key[2], "data": leaving.pop(key)})
            for (port, target, target_port), data in leaving.items():
                outputs.setdefault(port, []).append({"node": target, "input": target_port, "data": data})
            node["inputs"] = {port: {"connections": conns} for port, conns in inputs.items()}
            node["outputs"] = {port: {"connections": conns} for port, conns in outputs.items()}

    # -- the document

    def _document(self, recipe_id: str | None) -> dict[str, Any]:
        doc = self.doc
        stored = _info_of(doc.meta)
        meta = dict(stored.get("meta") or {}) if stored else {"author": "", "help": "", "tags": []}
        name, description = recipe_name(meta)
        if doc.name != name or not stored:
            meta["name"] = doc.name
        if doc.description != description or not stored:
            meta["description"] = doc.description
        rete = dict(stored.get("rete") or {}) if stored else {}
        rete["id"] = rete.get("id") or DEFAULT_RETE_ID
        rete["nodes"] = {str(omni_id): self.omni[omni_id] for omni_id in self.omni}
        ident = recipe_id or doc.id or str(uuid.uuid4())
        extra = dict(stored.get("extra") or {}) if stored else {}
        if not stored:
            extra = {"api": {"fields": {}}, "ui": {}, "blockIds": sorted({n["name"] for n in self.omni.values()})}
        return {
            "id": ident,
            "meta": meta,
            "rete": rete,
            **{k: v for k, v in extra.items() if k not in ("id", "meta", "rete")},
        }


def _info_of(meta: Mapping[str, Any]) -> dict[str, Any]:
    info = meta.get(META_KEY)
    return info if isinstance(info, dict) else {}
