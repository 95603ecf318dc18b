"""Document blocks: `write_document` stores text as a new file."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from conveyor.blocks.base import BlockConfig, BlockContext, BlockInputError, Port, Ports, PortType
from conveyor.errors import PayloadTooLargeError


class WriteDocument:
    """Stores its input text as a new document file (UTF-8).

    Config: `file_name` (default `document.txt`; no directories) and `mime`, one of text/plain (the default),
    text/markdown, application/json or text/html. For application/json the text must be valid JSON; a value
    that is not text (an object from a JSON port) is written as JSON. Input `text`; output `document`, the
    stored file's reference.
    """

    name: ClassVar[str] = "write_document"

    class Config(BlockConfig):
        file_name: str = Field(default="document.txt", min_length=1, max_length=255)
        mime: Literal["text/plain", "text/markdown", "application/json", "text/html"] = "text/plain"

        @field_validator("file_name")
        @classmethod
        def _plain_name(cls, value: str) -> str:
            if "/" in value or "\\" in value or value.strip(". ") == "" or any(ord(ch) < 32 for ch in value):
                raise ValueError("a file name, without directories or control characters")
            return value

    def ports(self, config: Config, wired: Iterable[str]) -> tuple[Ports, Ports]:
        return (
            {"text": Port(PortType.TEXT, required=True, description="The document's content.")},
            {"document": Port(PortType.DOCUMENT, description="The stored document.")},
        )

    async def run(self, ctx: BlockContext, config: Config, inputs: dict[str, Any]) -> dict[str, Any]:
        value = inputs.get("text")
        if value is None:
            raise BlockInputError("no text to write")
        if isinstance(value, str):
            text = value
            if config.mime == "application/json":
                try:
                    json.loads(text)
                except ValueError as exc:
                    raise BlockInputError(f"the text is not valid JSON: {exc}") from None
        else:
            try:
                text = json.dumps(value, ensure_ascii=False)
            except (TypeError, ValueError) as exc:
                raise BlockInputError(f"the input cannot be written as text: {exc}") from None
        try:
            document = await ctx.files.save_bytes(text.encode("utf-8"), name=config.file_name, mime=config.mime)
        except PayloadTooLargeError as exc:
            raise BlockInputError(exc.message) from exc
        return {"document": document}
