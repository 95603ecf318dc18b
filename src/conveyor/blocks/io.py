"""The blocks at a recipe's edges: `chat_input` (its input contract), `recipe_output` (its outputs),
`chat_output` (Omnitool's chat message, handed on) and `recipe_metadata` (Omnitool's recipe card, inert)."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from conveyor.blocks.base import BlockConfig, BlockContext, Port, Ports, PortType


class FieldKind(StrEnum):
    """What a recipe input carries: Omnitool's six kinds plus plain numbers and booleans."""

    TEXT = "text"
    IMAGES = "images"
    AUDIO = "audio"
    VIDEO = "video"
    DOCUMENTS = "documents"
    JSON = "json"
    NUMBER = "number"
    BOOLEAN = "boolean"


FIELD_PORTS: dict[FieldKind, Port] = {
    FieldKind.TEXT: Port(PortType.TEXT),
    FieldKind.IMAGES: Port(PortType.IMAGE, many=True),
    FieldKind.AUDIO: Port(PortType.AUDIO, many=True),
    FieldKind.VIDEO: Port(PortType.VIDEO, many=True),
    FieldKind.DOCUMENTS: Port(PortType.DOCUMENT, many=True),
    FieldKind.JSON: Port(PortType.JSON),
    FieldKind.NUMBER: Port(PortType.NUMBER),
    FieldKind.BOOLEAN: Port(PortType.BOOLEAN),
}
MEDIA_KINDS: dict[FieldKind, str] = {
    FieldKind.IMAGES: "image",
    FieldKind.AUDIO: "audio",
    FieldKind.VIDEO: "video",
    FieldKind.DOCUMENTS: "document",
}


class InputField(BaseModel):
    """One field of a recipe's input contract."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: FieldKind = FieldKind.TEXT
    required: bool = False
    default: Any = None
    description: str = Field(default="", max_length=2000)
    max_length: int | None = Field(default=None, ge=1, description="Longest text accepted (characters).")


def _omnitool_fields() -> dict[str, InputField]:
    return {kind.value: InputField(type=kind) for kind in list(FieldKind)[:6]}


class ChatInput:
    """The recipe's start node: its `fields` are the input contract a job's inputs must match.

    Config: `fields` maps a field name to `{type, required, default, description, max_length}`, `type` one of
    text, images, audio, video, documents, json, number, boolean. Without `fields` it has Omnitool's six
    optional fields (text, images, audio, video, documents, json). Outputs: one port per field; media fields
    are lists of file references. Job inputs are checked and media stored when the job is submitted, so this
    block only hands them on, defaults filled in.
    """

    name: ClassVar[str] = "chat_input"
    instant: ClassVar[bool] = True

    class Config(BlockConfig):
        fields: dict[str, InputField] = Field(default_factory=_omnitool_fields, max_length=100)

    def ports(self, config: Config, wired: Iterable[str]) -> tuple[Ports, Ports]:
        return {}, {name: FIELD_PORTS[field.type] for name, field in config.fields.items()}

    async def run(self, ctx: BlockContext, config: Config, inputs: dict[str, Any]) -> dict[str, Any]:
        return {
            name: inputs[name] if name in inputs else field.default
            for name, field in config.fields.items()
            if name in inputs or field.default is not None
        }


OUTPUT_PORTS: dict[str, Port] = {
    "text": Port(PortType.TEXT),
    "images": Port(PortType.IMAGE, many=True),
    "audio": Port(PortType.AUDIO, many=True),
    "documents": Port(PortType.DOCUMENT, many=True),
    "videos": Port(PortType.VIDEO, many=True),
    "files": Port(PortType.FILE, many=True),
    "objects": Port(PortType.JSON),
}


class RecipeOutput:
    """The recipe's output node: whatever is wired into it is the job's result, by input name.

    Omnitool's names are typed (text, images, audio, documents, videos, files, objects); any other name
    takes any value. No configuration.
    """

    name: ClassVar[str] = "recipe_output"
    instant: ClassVar[bool] = True

    class Config(BlockConfig):
        pass

    def ports(self, config: Config, wired: Iterable[str]) -> tuple[Ports, Ports]:
        inputs = dict(OUTPUT_PORTS)
        for name in wired:
            inputs.setdefault(name, Port(PortType.ANY))
        return inputs, {}

    async def run(self, ctx: BlockContext, config: Config, inputs: dict[str, Any]) -> dict[str, Any]:
        return dict(inputs)


# Omnitool's chat message has the recipe output's ports, but one JSON `object` where the output has `objects`.
CHAT_OUTPUT_PORTS: dict[str, Port] = {
    **{name: port for name, port in OUTPUT_PORTS.items() if name != "objects"},
    "object": Port(PortType.JSON),
}


class ChatOutput:
    """Omnitool's chat message: hands its inputs on unchanged, so a `recipe_output` can return them.

    Conveyor's jobs have no chat window; what Omnitool would show there is this node's outputs instead.
    Config: `text_type`, the text's format (`text/plain`, `text/markdown` (the default) or
    `text/markdown-code`; kept for clients and exports, the text itself is not changed). Inputs, all optional,
    as Omnitool names them: `text`, `images`, `audio`, `documents`, `videos`, `files` (lists of file
    references) and `object` (JSON). Outputs: the same names, each holding its input's value; an input with
    no value gives no output.
    """

    name: ClassVar[str] = "chat_output"
    instant: ClassVar[bool] = True

    class Config(BlockConfig):
        text_type: Literal["text/plain", "text/markdown", "text/markdown-code"] = "text/markdown"

    def ports(self, config: Config, wired: Iterable[str]) -> tuple[Ports, Ports]:
        return dict(CHAT_OUTPUT_PORTS), dict(CHAT_OUTPUT_PORTS)

    async def run(self, ctx: BlockContext, config: Config, inputs: dict[str, Any]) -> dict[str, Any]:
        return {name: value for name, value in inputs.items() if name in CHAT_OUTPUT_PORTS and value is not None}


class RecipeMetadata:
    """Omnitool's recipe card: the title, description, help and credits a recipe shows; it does nothing at run time.

    Config (all optional): `title`, `description`, `help`, `author`, `category`, `license`, `credits`, and
    `tags` (a list of texts). Input `usage` (JSON, unused) and output `text` (never given a value) are there
    because Omnitool's block has them, so imported wiring stays valid. The recipe's own `name` and
    `description` are what clients see; this node only keeps Omnitool's copy.
    """

    name: ClassVar[str] = "recipe_metadata"
    instant: ClassVar[bool] = True

    class Config(BlockConfig):
        title: str = Field(default="", max_length=200)
        description: str = Field(default="", max_length=10_000)
        help: str = Field(default="", max_length=100_000)
        author: str = Field(default="", max_length=1_000)
        category: str = Field(default="", max_length=200)
        license: str = Field(default="", max_length=200)
        credits: str = Field(default="", max_length=100_000)
        tags: list[Annotated[str, Field(max_length=200)]] = Field(default_factory=list, max_length=100)

    def ports(self, config: Config, wired: Iterable[str]) -> tuple[Ports, Ports]:
        return {"usage": Port(PortType.JSON, description="unused")}, {
            "text": Port(PortType.TEXT, description="never given a value")
        }

    async def run(self, ctx: BlockContext, config: Config, inputs: dict[str, Any]) -> dict[str, Any]:
        return {}
