"""Tests for `conveyor.blocks.documents`: `write_document` stores its text as a real file."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from conveyor.blocks.base import BlockContext, BlockInputError, PortType, UsageMeter
from conveyor.blocks.documents import WriteDocument
from conveyor.settings import LimitsSettings
from conveyor.store.files import FileService


async def write(files: FileService, text: Any, **config: Any) -> dict[str, Any]:
    ctx = BlockContext(
        job_id="j1",
        node_id="n1",
        files=files,
        http=files.http,  # type: ignore[arg-type]  # the guarded client; this block never calls it
        usage=UsageMeter(),
        logger=logging.getLogger("test"),
        limits=files.limits,
    )
    return await WriteDocument().run(ctx, WriteDocument.Config(**config), {"text": text})


def test_ports() -> None:
    inputs, outputs = WriteDocument().ports(WriteDocument.Config(), [])
    assert inputs["text"].type == PortType.TEXT and inputs["text"].required
    assert outputs["document"].type == PortType.DOCUMENT


async def test_writes_text_as_a_new_file(file_service: FileService) -> None:
    text = "Grüße\nzweite Zeile 🚀"
    outputs = await write(file_service, text)
    document = outputs["document"]
    assert document == {
        "fid": document["fid"],
        "name": "document.txt",
        "mime": "text/plain",
        "size": len(text.encode()),
    }
    assert (await file_service.read_bytes(document["fid"])).decode("utf-8") == text
    row = await file_service.db.fetch_one("SELECT user_id, job_id FROM files WHERE id = $1", document["fid"])
    assert row == {"user_id": "u1", "job_id": "j1"}


@pytest.mark.parametrize("mime", ["text/markdown", "text/html", "application/json"])
async def test_mime_and_name(mime: str, file_service: FileService) -> None:
    document = (await write(file_service, '{"a": 1}', file_name="out.data", mime=mime))["document"]
    assert (document["name"], document["mime"]) == ("out.data", mime)
    assert (await file_service.describe(document["fid"]))["mime"] == mime


async def test_json_documents(file_service: FileService) -> None:
    with pytest.raises(BlockInputError, match="not valid JSON"):
        await write(file_service, "{not json", mime="application/json")
    document = (await write(file_service, {"answer": 42, "list": [1, "ü"]}, mime="application/json"))["document"]
    assert json.loads(await file_service.read_bytes(document["fid"])) == {"answer": 42, "list": [1, "ü"]}


async def test_missing_and_too_large_text(file_service: FileService) -> None:
    with pytest.raises(BlockInputError, match="no text"):
        await write(file_service, None)
    file_service.limits = LimitsSettings(max_upload_bytes=1024)
    with pytest.raises(BlockInputError, match="over the limit of 1,024 bytes"):
        await write(file_service, "x" * 1025)


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b.txt", "a\\b.txt", "..", "", "x" * 256, "bad\nname"])
def test_file_name_is_checked_at_save_time(name: str) -> None:
    with pytest.raises(ValueError):
        WriteDocument.Config(file_name=name)
    with pytest.raises(ValueError):
        WriteDocument.Config(mime="application/pdf")
