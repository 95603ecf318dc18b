"""The blocks at a recipe's edges: `chat_input` (its input contract) and `recipe_output` (its outputs)."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any, ClassVar

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
