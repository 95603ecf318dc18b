"""The Omnitool block table: how each Omnitool block becomes Conveyor nodes (read by `conveyor.recipes.omnitool`).

Each entry of `BLOCKS` maps an Omnitool block name to a function that reads one Omnitool node (its `data`,
and which of its ports are connected) and fills a `NodeBuilder`: our block and its configuration, which
Omnitool port is which of ours, helper nodes, and a problem for everything that has no equivalent. Adding a
block is adding a function and a line in `BLOCKS`; `conveyor.recipes.omnitool_export.REVERSE` holds the way
back.

Omnitool keeps the value of an unconnected input in the node's `data`. Where our block reads that value from
its configuration the function maps it there; where ours takes it as an input, the builder adds a constant
helper node (`input_text`, `number_input`, `boolean_input` or `json_input`) wired to it. Outputs ours lack are
made by adapter helper nodes where that is exact (e.g. JSONata's `text`). Helper nodes carry
`meta["x-omnitool"]["helper"]`, so an export folds them back into their Omnitool node.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from conveyor.blocks.text import MultiTextReplace, placeholder_port
from conveyor.recipes.omnitool_nodes import NodeBuilder, OmniNode, is_empty, sanitize_name, short

# ------------------------------------------------------------------------------------------- inputs and outputs

CHAT_INPUT_PORTS = ("text", "images", "audio", "video", "documents", "json")
CHAT_OUTPUT_PORTS = ("text", "images", "audio", "documents", "videos", "files", "object")
RECIPE_OUTPUT_PORTS = ("text", "images", "audio", "documents", "videos", "files", "objects")
TEXT_TYPES = ("text/plain", "text/markdown", "text/markdown-code")


def _chat_input(b: NodeBuilder) -> None:
    b.block = "chat_input"
    for port in CHAT_INPUT_PORTS:
        b.refuse(port, "Conveyor's chat_input takes its values from the job's inputs")
        b.output(port)
    text = b.data("text")
    if isinstance(text, str) and text:
        fields: dict[str, Any] = {kind: {"type": kind} for kind in CHAT_INPUT_PORTS}
        fields["text"]["default"] = text
        b.config["fields"] = fields
    for port in CHAT_INPUT_PORTS if not isinstance(text, str) else CHAT_INPUT_PORTS[1:]:
        b.unsupported(port, "chat_input has a default only for text")


def _chat_output(b: NodeBuilder) -> None:
    b.block = "chat_output"
    for port in CHAT_OUTPUT_PORTS:
        b.input(port)
        b.output(port)
    b.refuse("persistData", "Conveyor keeps files as its own settings say")
    b.data("persistData")
    text_type = b.data("textType")
    if text_type in TEXT_TYPES:
        if text_type != "text/markdown":
            b.config["text_type"] = text_type
    elif not is_empty(text_type):
        b.unsupported("textType", f"chat_output's text_type is one of {', '.join(TEXT_TYPES)}")


def _recipe_output(b: NodeBuilder) -> None:
    b.block = "recipe_output"
    for port in RECIPE_OUTPUT_PORTS:
        b.input(port)
    b.refuse("persistData", "Conveyor keeps files as its own settings say")
    b.data("persistData")


def _input_text(b: NodeBuilder) -> None:
    b.block = "input_text"
    b.input("text")
    b.output("text")
    text = b.data("text")
    if isinstance(text, str):
        if text:
            b.config["text"] = text
    elif isinstance(text, int | float) and not isinstance(text, bool) and math.isfinite(text):
        b.config["text"] = str(text)
    else:
        b.unsupported("text", "input_text holds text")


def _number(value: Any) -> int | float | None:
    """A number from a number or its text (as JavaScript's `parseFloat` reads whole numbers); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            parsed = float(value.strip())
        except ValueError:
            return None
        value = int(parsed) if parsed.is_integer() and abs(parsed) < 2**53 else parsed
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


_ROUNDINGS: dict[str, Callable[[float], int]] = {
    "integer": math.trunc,  # parseInt
    "round": lambda x: math.floor(x + 0.5),  # Math.round rounds halves up
    "ceil": math.ceil,
    "floor": math.floor,
}


def _number_input(b: NodeBuilder) -> None:
    b.block = "number_input"
    b.input("number")
    b.output("number")
    raw = b.data("number")
    number = _number(raw)
    if number is None and not is_empty(raw):
        b.unsupported("number", "number_input holds a finite number")
    number_format = b.data("number_format") or "any"
    if number_format in _ROUNDINGS and not b.wired("number"):
        number = None if number is None else _ROUNDINGS[number_format](number)
    elif number_format not in ("any", "float"):
        b.problem("unsupported_data", f"number_format {short(number_format)} has no Conveyor equivalent")
    if number is not None and number != 0:
        b.config["value"] = number


def _boolean_input(b: NodeBuilder) -> None:
    b.block = "boolean_input"
    b.input("boolean")
    b.output("boolean")
    value = b.data("boolean")
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        value = value.strip().lower() == "true"
    if value is True:
        b.config["value"] = True
    elif value is not False and not is_empty(value):
        b.unsupported("boolean", "boolean_input holds true or false")


def _json_input(b: NodeBuilder) -> None:
    b.block = "json_input"
    b.input("json")
    b.output("json")
    value = b.data("json")
    if isinstance(value, str) and value.strip():
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            b.unsupported("json", "it is not valid JSON")
            return
    if not is_empty(value):
        b.config["json"] = value


# ------------------------------------------------------------------------------------------------------- text

_PLACEHOLDER = re.compile(r"\{input:([^{}]+)\}", re.IGNORECASE)  # what our multi_text_replace fills


def _multi_text_replace(b: NodeBuilder) -> None:
    b.block = "multi_text_replace"
    source = b.data("source")
    if not isinstance(source, str):
        b.unsupported("source", "the template must be text")
        source = ""
    if source:
        b.config["template"] = source
    b.refuse("source", "the template is part of the node's configuration in Conveyor")
    b.refuse("replace", "multi_text_replace fills only {INPUT:Name} placeholders")
    b.unsupported("replace", "multi_text_replace fills only {INPUT:Name} placeholders")
    b.refuse("images", "multi_text_replace does not insert images")
    b.unsupported("images", "multi_text_replace does not insert images")
    b.data("x-omni-dynamicInputs")
    # Omnitool names a placeholder's socket without trimming the name; ours trims it.
    ours_known = set(MultiTextReplace().ports(MultiTextReplace.Config(template=source), [])[0])
    for match in _PLACEHOLDER.finditer(source):
        title = match.group(1)
        ours = placeholder_port(title)
        if ours in ours_known:
            b.input(re.sub(r"[^a-z0-9]", "_", title.lower()), ours)
    b.output("text")


_JS_REPLACEMENT = re.compile(r"\$(\$|&|`|'|\d{1,2}|<([^>]*)>)")


def js_replacement(template: str, groups: int, names: frozenset[str]) -> str | None:
    """A JavaScript `String.replace` replacement as a Python one (`$1` → `\\g<1>`); None for `` $` `` and `$'`."""
    out: list[str] = []
    last = 0
    for match in _JS_REPLACEMENT.finditer(template):
        out.append(template[last : match.start()].replace("\\", "\\\\"))
        last = match.end()
        token = match.group(1)
        if token == "$":
            out.append("$")
        elif token == "&":
            out.append("\\g<0>")
        elif token in ("`", "'"):
            return None
        elif token.isdigit():
            if 0 < int(token) <= groups:
                out.append(f"\\g<{int(token)}>")
            elif len(token) == 2 and 0 < int(token[0]) <= groups:
                out.append(f"\\g<{token[0]}>{token[1]}")
            else:
                out.append(match.group(0))
        elif match.group(2) in names:
            out.append(f"\\g<{match.group(2)}>")
        else:
            out.append(match.group(0).replace("\\", "\\\\"))
    out.append(template[last:].replace("\\", "\\\\"))
    return "".join(out)


def _regex_config(pattern: str, flags: str, replace: str) -> dict[str, Any] | str:
    """text_replace's configuration for a JavaScript regular expression, or why there is none."""
    import regex as regex_lib  # type: ignore[import-untyped, unused-ignore]

    if len(set(flags)) != len(flags) or not set(flags) <= set("gimsud"):
        return f"regular expression flags {flags!r} are not supported"
    inline = "".join(flag for flag in "ms" if flag in flags)
    source = f"(?{inline}){pattern}" if inline else pattern
    try:
        compiled = regex_lib.compile(source)
    except regex_lib.error as exc:
        return f"the regular expression does not compile: {exc}"
    template = js_replacement(replace, compiled.groups, frozenset(compiled.groupindex))
    if template is None:
        return "replacements with $` or $' are not supported"
    config: dict[str, Any] = {"find": source, "replace": template, "regex": True}
    if "i" in flags:
        config["ignore_case"] = True
    if "g" not in flags:
        config["count"] = 1
    return config


def _text_replace(b: NodeBuilder) -> None:
    match, replace = b.data("match"), b.data("replace")
    b.refuse("match", "the text to find is part of the node's configuration in Conveyor")
    b.output("text")
    b.input("text")
    if not isinstance(match, str) or not match or (replace is None and not b.wired("replace")):
        # Omnitool hands the text on unchanged.
        if not isinstance(match, str):
            b.unsupported("match", "the text to find must be text")
        b.block = "input_text"
        b.drop("replace")
        text = b.data("text")
        if isinstance(text, str) and text and not b.wired("text"):
            b.config["text"] = text
        return
    if b.wired("replace"):
        if match.startswith("/"):
            b.refuse("replace", "a regular expression with a connected replacement has no Conveyor equivalent")
            b.block = "text_replace"
            return
        # JavaScript's replace(text, text) changes the first occurrence, with the replacement trimmed.
        literal = _jinja_string(match)
        b.block = "text_template"
        b.config["template"] = (
            f"{{{{ text | replace({literal}, replace | trim, 1) if replace is defined and replace is not none "
            "else text }}"
        )
        b.input("replace")
        return
    b.block = "text_replace"
    b.required.add("text")
    if not isinstance(replace, str):
        b.unsupported("replace", "the replacement must be text")
        return
    replace = replace.strip()
    if match.startswith("/"):
        parts = match.split("/")
        config = _regex_config(parts[1], parts[2] if len(parts) > 2 and parts[2] else "g", replace)
    elif "$" in replace:
        config = _regex_config(re.escape(match), "", replace)
    else:
        config = {"find": match, "replace": replace, "count": 1}
    if isinstance(config, str):
        b.problem("unsupported_data", f"data 'match' is {short(match)}: {config}")
    else:
        b.config.update(config)


def _jinja_string(text: str) -> str:
    """`text` as a Jinja string literal (JSON's escapes are ones Jinja reads back the same)."""
    import json

    return json.dumps(text, ensure_ascii=False)


def _text_splitter(b: NodeBuilder) -> None:
    b.block = "text_splitter"
    b.input("text", required=True)
    b.output("chunks")
    size = b.data("chunkSize")
    b.refuse("chunkSize", "the chunk size is part of the node's configuration in Conveyor")
    number = _number(size)
    if isinstance(number, int) and number > 0:
        b.config["chunk_size"] = number
    elif not is_empty(size):
        b.unsupported("chunkSize", "the chunk size must be a whole number above 0")
    why = "Conveyor's text_splitter cuts by size (preferring paragraph, line and sentence ends)"
    for key in ("delimiter", "chunkPrefix", "chunkPostfix"):
        b.refuse(key, why)
        b.unsupported(key, why)
    if "chunk_size" not in b.config and "chunkSize" not in b.node.wired_in:
        b.warn("approximated", "no chunkSize is set; Conveyor cuts chunks of 1000 characters")
    if "chunks" in b.node.wired_out:
        b.warn("approximated", "chunks are a list of strings in Conveyor, not of {text} objects")


def _text_to_json(b: NodeBuilder) -> None:
    b.block = "text_to_json"
    b.input("text", required=True)
    b.output("json")


# ------------------------------------------------------------------------------------------------------- JSON


def _jsonata(b: NodeBuilder) -> None:
    b.block = "jsonata"
    transform = b.data("transform")
    b.refuse("transform", "the expression is part of the node's configuration in Conveyor")
    if isinstance(transform, str) and transform.strip():
        b.config["expression"] = transform
    elif not b.wired("transform"):
        b.problem("unsupported_data", "data 'transform' holds no JSONata expression")
    b.input("object", "json")
    b.output("object", "result")
    if "text" in b.node.wired_out:  # Omnitool's text: the result itself when it is text, else its JSON
        b.adapter("text", "text_template", {"template": "{{ value }}"}, "text", {"value": "result"})


def _fields(b: NodeBuilder) -> list[str]:
    """The port names in a `fields_list` (`name:type, …`), as Omnitool sanitizes them, in order and distinct."""
    fields = b.data("fields_list")
    b.refuse("fields_list", "the field list is part of the node's configuration in Conveyor")
    if not isinstance(fields, str):
        b.unsupported("fields_list", "the field list must be text such as `name:text, picture:image`")
        return []
    names = (sanitize_name(pair.split(":", 1)[0]) for pair in fields.split(","))
    return list(dict.fromkeys(name for name in names if name))


def _json_packer(b: NodeBuilder) -> None:
    b.block = "json_packer"
    b.data("x-omni-dynamicInputs")
    for name in _fields(b):
        b.input(name)
    b.output("json")
    b.refuse_output("result", "Conveyor's json_packer has no `result` output")


def _json_unpacker(b: NodeBuilder) -> None:
    b.block = "json_unpacker"
    b.data("x-omni-dynamicOutputs")
    keys = _fields(b)
    if keys:
        b.config["keys"] = keys
    b.input("json", required=True)
    for key in keys:
        b.output(key)
    b.refuse_output("result", "Conveyor's json_unpacker has no `result` output")
    if any(key in b.node.wired_out for key in keys):
        b.warn("approximated", "keys are looked up as written; Omnitool also matched keys that sanitize to them")


# ------------------------------------------------------------------------------------------- images, documents

# Omnitool's prepare_image targets: (width, height, format).
PREPARE_TARGETS: dict[str, tuple[int, int, str]] = {
    "sdxl": (1024, 1024, "png"),
    "sd1.5": (512, 512, "png"),
    "sd2.1": (768, 768, "png"),
    "phone": (1080, 1920, "jpeg"),
    "4k": (3840, 2160, "jpeg"),
    "1080p": (1920, 1080, "jpeg"),
    "720p": (1280, 720, "jpeg"),
    "8k": (7680, 4320, "jpeg"),
    "youtube": (1280, 720, "jpeg"),
    "facebook": (820, 312, "jpeg"),
    "fbprofile": (180, 180, "jpeg"),
    "gmbackground": (1920, 1090, "jpeg"),
    "instagram": (1080, 1080, "jpeg"),
    "snapchat": (1080, 1920, "jpeg"),
    "thumbnail": (150, 150, "jpeg"),
    "wechat": (900, 500, "jpeg"),
    "a4": (2481, 3507, "jpeg"),
    "us_letter": (2550, 3300, "jpeg"),
    "12x18": (3600, 5400, "jpeg"),
    "18x12": (5400, 3600, "jpeg"),
}
_DEFAULT_TARGET = (1024, 1024, "jpeg")


def _prepare_image(b: NodeBuilder) -> None:
    b.block = "prepare_image"
    b.input("Source", "images", required=True)
    b.output("Result", "images")
    b.unsupported("Source", "images come from a connection")
    target = b.data("Target")
    b.refuse("Target", "the target is part of the node's configuration in Conveyor")
    if not isinstance(target, str) or target not in PREPARE_TARGETS:
        b.warn("approximated", f"target {short(target)} is unknown; like Omnitool, 1024x1024 JPEG is used")
    width, height, fmt = PREPARE_TARGETS.get(target, _DEFAULT_TARGET) if isinstance(target, str) else _DEFAULT_TARGET
    b.config.update({"width": width, "height": height, "fit": "contain", "format": fmt})
    b.refuse_output("Mask", "Conveyor's prepare_image makes no masks")
    for port, value in (("Width", width), ("Height", height)):
        if port in b.node.wired_out:
            node_id = b.add_helper(port, "number_input", {"value": value}, {"outputs": {"number": port}})
            b.outputs[port] = (node_id, "number")


def _image_info(b: NodeBuilder) -> None:
    b.block = "image_info"
    b.input("image", "images", required=True)
    b.unsupported("image", "images come from a connection")
    b.output("width")
    b.output("height")
    b.alias("image", "image")
    for port in ("size", "mimeType", "ext", "fid", "url"):
        b.refuse_output(port, "Conveyor's image_info gives these in its `info` list only")


def _write_document(b: NodeBuilder) -> None:
    b.block = "write_document"
    b.input("text", required=True)
    b.output("document")
    b.refuse("fileName", "the file name is part of the node's configuration in Conveyor")
    text_type = b.data("textType") or "text/markdown"
    if text_type not in ("text/plain", "text/markdown"):
        b.unsupported("textType", "write_document writes text/plain or text/markdown here")
        return
    name = b.data("fileName")
    # Omnitool's own file name rule: 20 characters at most, `_` for anything but ASCII letters and digits.
    stem = re.sub(r"_+", "_", re.sub(r"[^a-zA-Z0-9]", "_", name.strip()[:20])) if isinstance(name, str) else ""
    if not stem:
        b.warn("approximated", "no fileName is set; the document is named `document` (Omnitool took the text)")
    b.config["file_name"] = (stem or "document") + (".txt" if text_type == "text/plain" else ".md")
    b.config["mime"] = text_type
    b.data("storageType")


# ------------------------------------------------------------------------------------------------------ recipes

RUN_RECIPE_INPUTS = ("text", "images", "audio", "video", "documents", "json")
# run_recipe's Omnitool outputs read from the sub-recipe's outputs object, by the names recipe_output gives.
RUN_RECIPE_OUTPUTS = {
    "images": "images",
    "audio": "audio",
    "video": "videos",
    "documents": "documents",
    "json": "objects",
}


def _run_recipe(b: NodeBuilder) -> None:
    b.block = "run_recipe"
    recipe_id, listed = b.data("recipe_id"), b.data("recipes_list")
    for port in ("recipe_id", "recipes_list"):
        b.refuse(port, "the recipe to run is part of the node's configuration in Conveyor")
    recipe = recipe_id if isinstance(recipe_id, str) and recipe_id.strip() else listed
    if isinstance(recipe, str) and recipe.strip() and recipe != "invalid":
        b.config["recipe"] = recipe.strip()
    else:
        b.problem("unsupported_data", "no recipe is chosen (set recipes_list or recipe_id)")
    for port in RUN_RECIPE_INPUTS:
        b.input(port)
    b.input("args", "inputs")
    b.output("text")
    wanted = {omni: ours for omni, ours in RUN_RECIPE_OUTPUTS.items() if omni in b.node.wired_out}
    if wanted:
        node_id = b.add_helper(
            "outputs", "json_unpacker", {"keys": list(wanted.values())}, {"outputs": {v: k for k, v in wanted.items()}}
        )
        b.helpers[node_id]["inputs"] = {"json": f"{b.node.key}.outputs"}
        for omni, ours in wanted.items():
            b.outputs[omni] = (node_id, ours)


METADATA_TEXTS = ("title", "description", "help", "author", "category", "license", "credits")


def _recipe_metadata(b: NodeBuilder) -> None:
    b.block = "recipe_metadata"
    for key in METADATA_TEXTS:
        value = b.data(key)
        if isinstance(value, str) and value:
            b.config[key] = value
    tags = b.data("tags")
    if isinstance(tags, str):
        tags = [tag.strip() for tag in tags.split(",")]
    if isinstance(tags, list) and all(isinstance(tag, str) for tag in tags):
        if any(tags):
            b.config["tags"] = [tag for tag in tags if tag]
    else:
        b.unsupported("tags", "tags are a list of texts")
    b.input("usage")
    b.output("text")


# ---------------------------------------------------------------------------------------------- language models

# Omnitool's chat blocks send `instruction` as the system message and `prompt` as the user message; ours render
# them from inputs of those names (a data value becomes a constant helper), so neither is read as a template.
_SYSTEM = "{{ instruction | default('') }}"
_PROMPT = "{{ prompt | default('') }}"


def _chat_messages(b: NodeBuilder, instruction: str, prompt: str) -> None:
    """Omnitool inputs `instruction` and `prompt` (as named there) feed llm_chat's `instruction` and `prompt`."""
    b.block = "llm_chat"
    b.config.update(system=_SYSTEM, prompt=_PROMPT)
    b.input(instruction, "instruction")
    b.input(prompt, "prompt")
    if not any(b.wired(port) or not is_empty(b.node.data.get(port)) for port in (instruction, prompt)):
        b.problem("missing_input", f"neither {instruction!r} nor {prompt!r} is connected or has a value in data")


def _chat_options(b: NodeBuilder) -> None:
    """`model`, `temperature` and `max_tokens` from data (the node's configuration here, so never connected)."""
    for key in ("model", "temperature", "max_tokens"):
        b.refuse(key, f"the {key.replace('_', ' ')} is part of the node's configuration in Conveyor")
    model = b.data("model")
    if isinstance(model, str) and model.strip():
        b.config["model"] = model.strip()[:256]
    elif not is_empty(model):
        b.unsupported("model", "the model is a name")
    temperature = _number(b.data("temperature"))
    if temperature is not None and 0 <= temperature <= 2:
        b.config["temperature"] = temperature
    elif not is_empty(b.node.data.get("temperature")):
        b.unsupported("temperature", "the temperature is a number from 0 to 2")
    max_tokens = _number(b.data("max_tokens"))  # Omnitool writes "inf" for no limit
    if isinstance(max_tokens, int) and 0 < max_tokens <= 32_768:
        b.config["max_tokens"] = max_tokens
    top_p = b.data("top_p")
    if not is_empty(top_p) and _number(top_p) != 1:
        b.warn("approximated", f"top_p {short(top_p)} is not used; the provider's own applies")


def _simple_chat_gpt(b: NodeBuilder) -> None:
    _chat_messages(b, "instruction", "prompt")
    _chat_options(b)
    b.output("text")
    b.refuse_output("_omni_status", "Conveyor's llm_chat reports failures as the job's error")


def _advanced_chat_gpt(b: NodeBuilder) -> None:
    _chat_messages(b, "instruction", "prompt")
    _chat_options(b)
    b.output("answer_text", "text")
    why = "Conveyor's llm_chat does not call functions"
    for key in ("function", "functions", "function_call"):
        b.refuse(key, why)
        b.unsupported(key, why)
    for port in ("function_call", "function_arguments_string", "function_arguments", "function_name"):
        b.refuse_output(port, why)
    b.refuse_output("raw_output", "Conveyor's llm_chat gives the answer's text (and JSON in JSON mode)")
    b.refuse("json_mode", "JSON mode is part of the node's configuration in Conveyor")
    b.refuse("seed", "Conveyor's local model always uses one seed")
    b.data("seed")
    json_mode = b.data("json_mode")
    if json_mode is True or (isinstance(json_mode, str) and json_mode.strip().lower() == "true"):
        b.config["json_schema"] = {"type": "object"}  # JSON mode: any JSON object
        b.output("answer_json", "json")


def _large_language_model(b: NodeBuilder) -> None:
    """Omnitool's provider-neutral LLM block: the server's default provider answers; `creative` runs hotter."""
    _chat_messages(b, "Instruction", "Prompt")
    b.refuse("Criteria", "the criteria are part of the node's configuration in Conveyor")
    criteria = b.data("Criteria")
    if criteria == "creative":
        b.config["temperature"] = 0.9  # what Omnitool sends for it
    elif criteria not in (None, "", "fast", "accurate", "free"):
        b.unsupported("Criteria", "the criteria are one of free, fast, accurate or creative")
    b.output("Reply", "text")


BLOCKS: dict[str, Callable[[NodeBuilder], None]] = {
    "omnitool.chat_input": _chat_input,
    "omnitool.chat_output": _chat_output,
    "omnitool.recipe_output": _recipe_output,
    "omnitool.input_text": _input_text,
    "omnitool.number_input": _number_input,
    "omnitool.input_boolean": _boolean_input,
    "omnitool.json_input": _json_input,
    "omnitool.multi_text_replace": _multi_text_replace,
    "omnitool.text_replace": _text_replace,
    "omnitool.text_splitter": _text_splitter,
    "omnitool.text_to_json": _text_to_json,
    "omnitool.jsonata": _jsonata,
    "omnipath.json_packer": _json_packer,
    "omnipath.json_unpacker": _json_unpacker,
    "omnitool.prepare_image": _prepare_image,
    "omnitool.image_info": _image_info,
    "omnitool.write_document": _write_document,
    "omnitool.run_recipe": _run_recipe,
    "omnitool.recipe_metadata": _recipe_metadata,
    "openai.simpleChatGPT": _simple_chat_gpt,
    "openai.advancedChatGPT": _advanced_chat_gpt,
    "omnitool.large_language_model": _large_language_model,
}
"""Omnitool block name -> the function that maps a node of it."""

PLANNED: Mapping[str, str] = {}
"""Omnitool blocks known to be missing, with the reason the import reports."""


def build_node(node: OmniNode) -> NodeBuilder:
    """Maps one Omnitool node through `BLOCKS`; an unknown block is a problem."""
    builder = NodeBuilder(node)
    mapper = BLOCKS.get(node.name)
    if mapper is None:
        why = PLANNED.get(node.name, "Conveyor has no such block")
        builder.problem("unknown_block", f"block {node.name!r} cannot be imported: {why}")
        return builder
    mapper(builder)
    builder.finish()
    return builder
