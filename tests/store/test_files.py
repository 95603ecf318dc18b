"""Tests for `conveyor.store.files`: stored files, media values in every accepted form, images checked by content."""

from __future__ import annotations

import base64
import io
import os
import struct
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from conveyor.errors import (
    ConveyorError,
    NotFoundError,
    OutboundBlockedError,
    OutboundFailedError,
    PayloadTooLargeError,
    UnsupportedMediaError,
    ValidationError,
)
from conveyor.net import GuardedClient
from conveyor.settings import LimitsSettings
from conveyor.store.blobs import LocalBlobStore
from conveyor.store.db import SqliteDatabase, open_database
from conveyor.store.files import FileService, clean_name, sniff_mime

# ---------------------------------------------------------------------------------------------- helpers

X = "\N{MULTIPLICATION SIGN}"  # the messages write sizes as width, this sign, height


def make_image(fmt: str = "PNG", size: tuple[int, int] = (20, 10), mode: str = "RGB", **save: Any) -> bytes:
    image = Image.new(mode, size, "red" if mode != "L" else 128)
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG of one colour declaring `width` by `height` 1-bit pixels: tiny on disk, huge decoded."""
    row = bytes(1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def gif_frame_bomb() -> bytes:
    """A GIF whose screen is 10 by 10 but whose frame claims 30000 by 30000: only Pillow's frame walk sees it."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 10, 10, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, 30000, 30000, 0) + b"\x02\x01\x2c\x00"
    return screen + frame + b";"


def jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(make_image("JPEG", (16, 8)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_declaring(width: int, height: int, *, lossless: bool) -> bytes:
    data = bytearray(make_image("WEBP", (16, 8), lossless=lossless))
    chunk = bytes(data[12:16])
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little") & ~0x0FFFFFFF
        bits |= (width - 1) | ((height - 1) << 14)
        data[21:25] = bits.to_bytes(4, "little")
    else:
        assert chunk == b"VP8 "
        data[26:30] = struct.pack("<HH", width, height)
    return bytes(data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def count_rows(file_db: SqliteDatabase) -> int:
    return int(await file_db.fetch_val("SELECT count(*) FROM files"))


def blob_files(blob_store: LocalBlobStore) -> list[Path]:
    return [p for p in blob_store.root.rglob("*") if p.is_file()] if blob_store.root.exists() else []


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """About 20 MB of PNG: random noise does not compress."""
    side = 2600
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=0)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------- saving and reading


async def test_save_bytes_and_read_back(file_service: FileService, file_db: SqliteDatabase) -> None:
    ref = await file_service.save_bytes(b"hello", name="greeting.txt", mime="text/plain; charset=utf-8")
    assert ref == {"fid": ref["fid"], "name": "greeting.txt", "mime": "text/plain", "size": 5}
    assert len(ref["fid"]) == 32
    assert await file_service.read_bytes(ref["fid"]) == b"hello"
    assert await file_service.describe(ref["fid"]) == ref
    assert await file_service.read_file(ref["fid"]) == ref
    assert b"".join([chunk async for chunk in file_service.open(ref["fid"])]) == b"hello"
    path = file_service.local_path(ref["fid"])
    assert path is not None and path.read_bytes() == b"hello"
    row = await file_db.fetch_one("SELECT sha256, created_at, user_id, job_id FROM files WHERE id = $1", ref["fid"])
    assert row is not None
    assert row["sha256"] == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert row["created_at"] > 1_600_000_000_000
    assert (row["user_id"], row["job_id"]) == (None, None)


async def test_rows_on_every_backend(database_url: str, tmp_path: Path) -> None:
    db = open_database(database_url)
    await db.connect()
    try:
        service = FileService(db, LocalBlobStore(tmp_path / "blobs"), None, LimitsSettings())
        owned = service.bind(user_id="u1", job_id="j1")
        ref = await owned.resolve_media("data:text/plain;base64," + b64(b"on both"), kind="document")
        assert await service.describe(ref["fid"]) == ref
        assert await owned.read_bytes(ref["fid"]) == b"on both"
        assert await service.bind(user_id="u2", job_id=None).read_file(ref["fid"]) is None
        assert await owned.delete_file(ref["fid"]) is True
        assert await service.read_file(ref["fid"]) is None
    finally:
        await db.close()


async def test_save_stream_sniffs_when_mime_is_missing(file_service: FileService) -> None:
    pdf = b"%PDF-1.7\n" + b"x" * 200_000
    ref = await file_service.save_stream(chunks_of(pdf), name="report", mime="")
    assert ref["mime"] == "application/pdf"
    assert ref["size"] == len(pdf)
    assert await file_service.sniff(ref["fid"]) == "application/pdf"
    unknown = await file_service.save_bytes(b"\x00\x01\x02", name="x.bin", mime="not a mime")
    assert unknown["mime"] == "application/octet-stream"


async def test_sizes_over_the_upload_limit_are_refused(file_db: SqliteDatabase, blob_store: LocalBlobStore) -> None:
    small = FileService(file_db, blob_store, None, LimitsSettings(max_upload_bytes=2048))
    with pytest.raises(PayloadTooLargeError):
        await small.save_bytes(b"x" * 2049, name="a", mime="text/plain")
    with pytest.raises(PayloadTooLargeError):
        await small.save_stream(chunks_of(b"x" * 5000, 1000), name="a", mime="text/plain")
    with pytest.raises(PayloadTooLargeError):
        await small.resolve_media(b64(b"x" * 3000), kind="file")
    assert await count_rows(file_db) == 0
    assert blob_files(blob_store) == []


async def test_unknown_files(file_service: FileService) -> None:
    missing = "f" * 32
    assert await file_service.read_file(missing) is None
    assert await file_service.read_file("not-an-id") is None
    assert file_service.local_path(missing) is None
    with pytest.raises(NotFoundError) as caught:
        await file_service.describe(missing)
    assert caught.value.status == 404 and caught.value.ident == missing
    with pytest.raises(NotFoundError):
        await file_service.read_bytes(missing)
    with pytest.raises(NotFoundError):
        [chunk async for chunk in file_service.open(missing)]


async def test_delete_file(file_service: FileService, blob_store: LocalBlobStore) -> None:
    ref = await file_service.save_bytes(b"gone soon", name="a.txt", mime="text/plain")
    assert await file_service.delete_file(ref["fid"]) is True
    assert await file_service.read_file(ref["fid"]) is None
    assert blob_files(blob_store) == []
    assert await file_service.delete_file(ref["fid"]) is False


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("photo.png", "photo.png"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\cv.pdf", "cv.pdf"),
        ("a\x00b\nc.txt", "abc.txt"),
        ("", "file"),
        ("...", "file"),
        ("x" * 300 + ".txt", "x" * 251 + ".txt"),
    ],
)
def test_clean_name(given: str, stored: str) -> None:
    assert clean_name(given) == stored


async def test_bind_stamps_owner_and_job_and_hides_other_owners(
    file_service: FileService, file_db: SqliteDatabase
) -> None:
    alice = file_service.bind(user_id="alice", job_id="job-1")
    bob = file_service.bind(user_id="bob", job_id=None)
    ref = await alice.save_bytes(make_image(), name="a.png", mime="image/png")
    row = await file_db.fetch_one("SELECT user_id, job_id FROM files WHERE id = $1", ref["fid"])
    assert row == {"user_id": "alice", "job_id": "job-1"}
    assert (await alice.resolve_media({"fid": ref["fid"]}, kind="image"))["fid"] == ref["fid"]
    assert await file_service.read_file(ref["fid"]) == ref  # the unbound service sees every file
    assert await bob.read_file(ref["fid"]) is None
    with pytest.raises(NotFoundError):
        await bob.resolve_media(f"fid://{ref['fid']}", kind="image")
    shared = await file_service.save_bytes(b"shared", name="s.txt", mime="text/plain")
    assert await bob.read_bytes(shared["fid"]) == b"shared"  # a file of no owner is everyone's


# ---------------------------------------------------------------------------------------------- media values


ValueMaker = Callable[[bytes, str, Any], Any]

FORMS: dict[str, ValueMaker] = {
    "data URI": lambda data, fid, web_server: f"data:image/png;base64,{b64(data)}",
    "data URI claiming another type": lambda data, fid, web_server: f"data:image/jpeg;base64,{b64(data)}",
    "bare base64": lambda data, fid, web_server: b64(data),
    "base64 with line breaks and spaces": lambda data, fid, web_server: "  " + base64.encodebytes(data).decode() + "\n",
    "URL-safe base64 without padding": lambda data, fid, web_server: (
        base64.urlsafe_b64encode(data).decode().rstrip("=")
    ),
    "fid:// reference": lambda data, fid, web_server: f"fid://{fid}",
    "fid object": lambda data, fid, web_server: {"fid": fid, "name": "ignored.png"},
    "bare file id": lambda data, fid, web_server: fid,
    "upper-case file id": lambda data, fid, web_server: fid.upper(),
    "bytes": lambda data, fid, web_server: data,
    "http URL": lambda data, fid, web_server: web_server.add("/pics/cat.png", data, content_type="text/plain"),
}


@pytest.mark.parametrize("form", FORMS)
async def test_resolve_image_in_every_form(form: str, file_service: FileService, web_server: Any) -> None:
    # Not quite 256 bytes so its base64 gets padding, and a size whose base64 has '-' or '_' in URL-safe form.
    data = make_image("PNG", (33, 17), mode="RGBA")
    existing = await file_service.save_bytes(data, name="orig.png", mime="application/octet-stream")
    ref = await file_service.resolve_media(FORMS[form](data, existing["fid"], web_server), kind="image")
    assert ref["mime"] == "image/png"  # from the content, whatever was claimed
    assert ref["size"] == len(data)
    assert await file_service.read_bytes(ref["fid"]) == data
    if "fid" in form or "file id" in form:
        assert ref["fid"] == existing["fid"]
    else:
        assert ref["fid"] != existing["fid"]
        assert ref["name"] == ("cat.png" if form == "http URL" else "image.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
async def test_every_image_format_is_accepted(fmt: str, file_service: FileService) -> None:
    data = make_image(fmt, (12, 7))
    ref = await file_service.resolve_media(b64(data), kind="image")
    assert ref["mime"] == f"image/{fmt.lower()}"
    assert (await file_service.probe(ref["fid"])).width == 12


async def test_large_base64_spanning_many_slices(file_service: FileService) -> None:
    data = os.urandom(3 * 1024 * 1024 + 1)
    for text in (base64.encodebytes(data).decode(), base64.urlsafe_b64encode(data).decode().rstrip("=")):
        ref = await file_service.resolve_media(text, kind="file")
        assert await file_service.read_bytes(ref["fid"]) == data


@pytest.mark.parametrize(
    ("value", "kind", "mime"),
    [
        ("data:text/markdown;base64," + b64(b"# Title"), "document", "text/markdown"),
        ("data:,Hello%2C%20World", "document", "text/plain"),
        (b64(b"%PDF-1.4 whatever"), "document", "application/pdf"),
        ("data:application/octet-stream;base64," + b64(b"ID3\x03rest"), "audio", "audio/mpeg"),
        (b64(b"\x00\x01plain bytes"), "file", "application/octet-stream"),
    ],
)
async def test_mime_of_other_kinds(value: str, kind: str, mime: str, file_service: FileService) -> None:
    ref = await file_service.resolve_media(value, kind=kind)
    assert ref["mime"] == mime
    assert ref["name"].startswith(kind)


async def test_url_mime_and_name_from_response(file_service: FileService, web_server: Any) -> None:
    url = web_server.add("/get?id=7", b"ID3\x04 some audio", content_type="audio/mpeg; charset=binary")
    ref = await file_service.resolve_media(url, kind="audio")
    assert ref["mime"] == "audio/mpeg"
    assert await file_service.read_bytes(ref["fid"]) == b"ID3\x04 some audio"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ftp://example.com/a.png", "scheme 'ftp' is not supported"),
        ("file:///etc/passwd", "scheme 'file' is not supported"),
        ("C:\\images\\a.png", "scheme 'c' is not supported"),
        ("/etc/passwd", "not a GIF, PNG, JPEG or WebP image"),  # valid base64 letters, decoded, not an image
        ("this is not base64!", "not valid base64"),
        ("abcde", "not valid base64"),
        ("data:image/png;base64", "has no ','"),
        ("", "expected an image"),
        ("   ", "expected an image"),
        (42, "got a value of type int"),
        (["a"], "got a value of type list"),
        ({"url": "x"}, "got a value of type dict"),
        ({"fid": "zz"}, "not a file id"),
        ({"fid": 7}, "not a file id"),
        ("fid://nothex", "not a file id"),
        ("https://example.com/" + "a" * 9000, "URL is longer than 8192 characters"),
    ],
)
async def test_unaccepted_values_are_422(
    value: Any, message: str, file_service: FileService, file_db: SqliteDatabase
) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        await file_service.resolve_media(value, kind="image")
    assert caught.value.status == 422
    assert await count_rows(file_db) == 0


async def test_unknown_file_id_is_404(file_service: FileService) -> None:
    with pytest.raises(NotFoundError):
        await file_service.resolve_media("0123456789abcdef" * 2, kind="image")


async def test_empty_media_is_refused(file_service: FileService, blob_store: LocalBlobStore) -> None:
    with pytest.raises(ValidationError, match="the document is empty"):
        await file_service.resolve_media("data:text/plain;base64,", kind="document")
    assert blob_files(blob_store) == []


# ---------------------------------------------------------------------------------------------- image checks


async def test_fake_image_is_unsupported(
    file_service: FileService, file_db: SqliteDatabase, blob_store: LocalBlobStore
) -> None:
    text = b"I am only text, though my name ends in .png"
    saved = await file_service.save_bytes(text, name="cat.png", mime="image/png")
    before = blob_files(blob_store)
    for value in ({"fid": saved["fid"]}, f"data:image/png;base64,{b64(text)}", b64(text)):
        with pytest.raises(UnsupportedMediaError, match="not a GIF, PNG, JPEG or WebP image") as caught:
            await file_service.resolve_media(value, kind="image")
        assert caught.value.status == 422
    assert await count_rows(file_db) == 1  # only the file saved on purpose; the refused copies left nothing
    assert blob_files(blob_store) == before


async def test_other_formats_are_named(file_service: FileService) -> None:
    with pytest.raises(UnsupportedMediaError, match=r"it looks like application/pdf"):
        await file_service.resolve_media(b64(b"%PDF-1.4 ..."), kind="image")
    with pytest.raises(UnsupportedMediaError, match=r"it looks like image/bmp"):
        await file_service.resolve_media(b64(make_image("BMP")), kind="image")


async def test_truncated_header_is_unsupported(file_service: FileService) -> None:
    with pytest.raises(UnsupportedMediaError, match="not a readable PNG image"):
        await file_service.resolve_media(b64(make_image("PNG")[:30]), kind="image")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: png_bomb(30000, 30000), f"image is 30000{X}30000 = 900,000,000 pixels, over the limit of 50,000,000"),
        (lambda: jpeg_declaring(20000, 20000), f"image is 20000{X}20000 = 400,000,000 pixels"),
        (lambda: webp_declaring(16383, 16383, lossless=False), f"image is 16383{X}16383 = 268,402,689 pixels"),
        (lambda: webp_declaring(9000, 9000, lossless=True), f"image is 9000{X}9000 = 81,000,000 pixels"),
        (gif_frame_bomb, "over the limit of 50,000,000 pixels"),
    ],
    ids=["png", "jpeg", "webp-lossy", "webp-lossless", "gif-frame"],
)
async def test_decompression_bombs_are_refused(
    make: Callable[[], bytes],
    message: str,
    file_service: FileService,
    file_db: SqliteDatabase,
    blob_store: LocalBlobStore,
) -> None:
    data = make()
    assert len(data) < 1_000_000
    with pytest.raises(UnsupportedMediaError, match=message) as caught:
        await file_service.resolve_media(b64(data), kind="image")
    assert caught.value.status == 422
    assert await count_rows(file_db) == 0
    assert blob_files(blob_store) == []


async def test_pixel_limit_is_the_configured_one(file_db: SqliteDatabase, blob_store: LocalBlobStore) -> None:
    strict = FileService(file_db, blob_store, None, LimitsSettings(max_image_pixels=399))
    with pytest.raises(UnsupportedMediaError, match=f"image is 20{X}20 = 400 pixels, over the limit of 399"):
        await strict.resolve_media(b64(make_image("PNG", (20, 20))), kind="image")
    loose = FileService(file_db, blob_store, None, LimitsSettings(max_image_pixels=400))
    assert (await loose.resolve_media(b64(make_image("PNG", (20, 20))), kind="image"))["mime"] == "image/png"


def test_sniff_mime() -> None:
    assert sniff_mime(make_image("WEBP")) == "image/webp"
    assert sniff_mime(b"RIFF\x00\x00\x00\x00WAVEfmt ") == "audio/wav"
    assert sniff_mime(b"\x00\x00\x00\x18ftypmp42") == "video/mp4"
    assert sniff_mime(b"hello") is None


# ---------------------------------------------------------------------------------------------- URLs


async def test_url_errors(
    file_service: FileService, web_server: Any, file_db: SqliteDatabase, blob_store: LocalBlobStore
) -> None:
    with pytest.raises(OutboundFailedError, match="answered HTTP 404"):
        await file_service.resolve_media(web_server.base + "/missing.png", kind="image")
    big = web_server.add("/big.bin", b"x" * 5000)
    small = FileService(file_db, blob_store, file_service.http, LimitsSettings(max_upload_bytes=2048))
    with pytest.raises(ConveyorError) as caught:
        await small.resolve_media(big, kind="file")
    assert isinstance(caught.value, OutboundFailedError | PayloadTooLargeError)
    assert await count_rows(file_db) == 0
    assert blob_files(blob_store) == []


async def test_url_to_a_private_address_is_blocked(
    file_db: SqliteDatabase, blob_store: LocalBlobStore, web_server: Any
) -> None:
    url = web_server.add("/cat.png", make_image())
    async with GuardedClient() as strict_client:  # loopback not opened
        strict = FileService(file_db, blob_store, strict_client, LimitsSettings())
        with pytest.raises(OutboundBlockedError, match="loopback"):
            await strict.resolve_media(url, kind="image")
    offline = FileService(file_db, blob_store, None, LimitsSettings())
    with pytest.raises(OutboundBlockedError):
        await offline.resolve_media(url, kind="image")


# ---------------------------------------------------------------------------------------------- memory


@pytest.mark.parametrize("form", ["bare base64", "data URI"])
async def test_large_base64_image_is_decoded_in_slices(form: str, big_png: bytes, file_service: FileService) -> None:
    text = b64(big_png) if form == "bare base64" else "data:image/png;base64," + b64(big_png)
    tracemalloc.start()
    try:
        ref = await file_service.resolve_media(text, kind="image")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ref["size"] == len(big_png) and ref["mime"] == "image/png"
    # Decoding the whole text at once would alone take len(big_png); we hold a few 1 MiB slices.
    assert peak < len(big_png) // 2, f"peak {peak:,} bytes for a {len(big_png):,}-byte image"


async def test_large_uploaded_image_is_streamed(big_png: bytes, file_service: FileService) -> None:
    tracemalloc.start()
    try:
        saved = await file_service.save_stream(chunks_of(big_png), name="noise.png", mime="image/png")
        ref = await file_service.resolve_media({"fid": saved["fid"]}, kind="image")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ref == saved
    assert peak < len(big_png) // 4, f"peak {peak:,} bytes for a {len(big_png):,}-byte image"
