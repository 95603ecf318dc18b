"""Stored files: rows in `files` over a blob store, and turning client media values into stored files.

`FileService` is the `FileStore` blocks see on their context and the API uses for uploads. A media value may be
an http(s) URL (fetched through the guarded client), a `data:` URI, bare base64 text, `fid://<id>`, a `{"fid"}`
object or a bare file id. Large values never sit whole in memory: URLs and uploads stream to the blob store,
base64 is decoded a slice at a time. Images are checked by their content (magic bytes, then the header read
by Pillow) and bounded in pixels before anything decodes them.
"""

from __future__ import annotations

import asyncio
import binascii
import io
import mimetypes
import re
import secrets
import time
import unicodedata
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from PIL import Image

from conveyor.errors import (
    NotFoundError,
    OutboundBlockedError,
    OutboundFailedError,
    PayloadTooLargeError,
    UnsupportedMediaError,
    ValidationError,
)
from conveyor.settings import LimitsSettings
from conveyor.store.blobs import BlobStore, StoredBlob
from conveyor.store.db import Database, Row

if TYPE_CHECKING:  # the shape blocks see; only a type, so the store does not import the blocks package
    from conveyor.blocks.base import FileRef

MEDIA_KINDS = frozenset({"image", "audio", "video", "document", "file"})
OCTET_STREAM = "application/octet-stream"
IMAGE_MIMES = {"GIF": "image/gif", "PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
IMAGE_EXTENSIONS = {"GIF": ".gif", "PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}

_FID = re.compile(r"[0-9a-fA-F]{32}")
_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]{0,31}):")
_SPACE = re.compile(r"\s*")
_WHITESPACE = re.compile(r"\s+")
_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_URL_SAFE = str.maketrans("-_", "+/")
_B64_SLICE = 1 << 20  # base64 characters decoded at a time (a multiple of 4)
_MAX_URL = 8192
_HEAD = 4096
_KEY_CACHE = 10_000
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_JPEG_MAX_SEGMENTS = 1000


class StreamResponse(Protocol):
    """An answer whose body is read in chunks (`conveyor.net.NetStream`)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def aiter_bytes(self) -> AsyncIterator[bytes]: ...


class StreamingClient(Protocol):
    """The guarded outbound client's streaming call (`conveyor.net.GuardedClient.stream`)."""

    def stream(self, method: str, url: str, *, max_bytes: int) -> AbstractAsyncContextManager[StreamResponse]: ...


# ---------------------------------------------------------------------------------------------- content checks


@dataclass(frozen=True, slots=True)
class ImageFacts:
    """What an image's header says: its format (`PNG`, `JPEG`, `GIF`, `WEBP`), mime type and size in pixels."""

    format: str
    mime: str
    width: int
    height: int


_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"PK\x03\x04", "application/zip"),
    (0, b"\x1f\x8b", "application/gzip"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"OggS", "audio/ogg"),
    (0, b"fLaC", "audio/flac"),
    (0, b"\x1a\x45\xdf\xa3", "video/webm"),
    (0, b"BM", "image/bmp"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (4, b"ftyp", "video/mp4"),
)


def sniff_mime(head: bytes) -> str | None:
    """The mime type a file's first bytes reveal, or `None` when they reveal none."""
    if head[:4] == b"RIFF":
        return {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}.get(head[8:12])
    for offset, magic, mime in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return mime
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "audio/mpeg"  # an MPEG audio frame sync without an ID3 tag
    return None


def image_format(head: bytes) -> str | None:
    """`PNG`, `JPEG`, `GIF` or `WEBP` when the first bytes are one of those, else `None`."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _jpeg_size(fp: BinaryIO) -> tuple[int, int] | None:
    """Walks a JPEG's segments to its frame header, reading a few bytes per segment."""
    fp.seek(2)
    for _ in range(_JPEG_MAX_SEGMENTS):
        prefix = fp.read(2)
        if len(prefix) < 2 or prefix[0] != 0xFF:
            return None
        marker = prefix[1]
        if marker == 0xFF:  # a fill byte before the marker
            fp.seek(-1, io.SEEK_CUR)
            continue
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        length = fp.read(2)
        if len(length) < 2 or int.from_bytes(length, "big") < 2:
            return None
        if marker in _JPEG_SOF:
            frame = fp.read(5)
            return (int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big")) if len(frame) == 5 else None
        fp.seek(int.from_bytes(length, "big") - 2, io.SEEK_CUR)
    return None


def _declared_size(fmt: str, head: bytes, fp: BinaryIO) -> tuple[int, int] | None:
    """The width and height an image's header declares, read before any decoder allocates a canvas."""
    if fmt == "PNG" and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if fmt == "GIF" and len(head) >= 10:
        return int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
    if fmt == "WEBP":
        chunk = head[12:16]
        if chunk == b"VP8X" and len(head) >= 30:
            return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
        if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
            return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
    if fmt == "JPEG":
        return _jpeg_size(fp)
    return None


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """`UnsupportedMediaError` when `width * height` is over `max_pixels`."""
    if width * height > max_pixels:
        raise UnsupportedMediaError(
            f"image is {width}×{height} = {width * height:,} pixels, over the limit of {max_pixels:,}",  # noqa: RUF001
            details={"width": width, "height": height, "max_pixels": max_pixels},
        )


def probe_image(fp: BinaryIO, *, max_pixels: int) -> ImageFacts:
    """Checks that `fp` holds a GIF, PNG, JPEG or WebP image within `max_pixels`, reading only its header.

    `UnsupportedMediaError` otherwise. The declared size is checked before Pillow sees the file, and Pillow's own
    decompression-bomb guard (its global `MAX_IMAGE_PIXELS`, left untouched) is caught, not trusted alone.
    Blocking: run it in a thread.
    """
    head = fp.read(64)
    fmt = image_format(head)
    if fmt is None:
        seen = sniff_mime(head)
        hint = f" (it looks like {seen})" if seen else ""
        raise UnsupportedMediaError(f"not a GIF, PNG, JPEG or WebP image{hint}", details={"detected": seen})
    declared = _declared_size(fmt, head, fp)
    if declared is not None:
        check_pixels(*declared, max_pixels)
    fp.seek(0)
    try:
        with Image.open(fp, formats=[fmt]) as image:
            width, height = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UnsupportedMediaError(f"image is over the limit of {max_pixels:,} pixels") from None
    except Exception:  # any failure to read the header means it is not a usable image
        raise UnsupportedMediaError(f"not a readable {fmt} image (its header is damaged)") from None
    check_pixels(width, height, max_pixels)
    return ImageFacts(fmt, IMAGE_MIMES[fmt], width, height)


# ---------------------------------------------------------------------------------------------- value parsing


def clean_mime(mime: str | None) -> str | None:
    """The `type/subtype` of a mime type or Content-Type value, lower-cased, or `None` when it is not one."""
    if not mime:
        return None
    essence = mime.split(";", 1)[0].strip().lower()
    return essence if _MIME.fullmatch(essence) else None


def clean_name(name: str | None, fallback: str = "file") -> str:
    """A file name safe to store and to offer back: no directories, no control characters, at most 255 chars."""
    base = PurePosixPath((name or "").replace("\\", "/")).name
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip().lstrip(".")
    if not base:
        return fallback
    if len(base) > 255:
        stem, dot, ext = base.rpartition(".")
        base = stem[: 255 - len(ext) - 1] + dot + ext if dot and len(ext) <= 16 else base[:255]
    return base


def _extension(mime: str) -> str:
    return {"image/jpeg": ".jpg", "text/plain": ".txt"}.get(mime) or mimetypes.guess_extension(mime) or ""


async def _b64_chunks(text: str, start: int, what: str) -> AsyncIterator[bytes]:
    """Decodes base64 `text[start:]` a slice at a time, so the decoded whole is never in memory.

    Whitespace is skipped, URL-safe letters and missing padding are accepted; `ValidationError` when it is not
    base64.
    """
    carry = ""
    end = len(text)
    for pos in range(start, end, _B64_SLICE):
        piece = text[pos : pos + _B64_SLICE]
        if _WHITESPACE.search(piece):
            piece = _WHITESPACE.sub("", piece)
        if "-" in piece or "_" in piece:
            piece = piece.translate(_URL_SAFE)
        piece = carry + piece
        last = pos + _B64_SLICE >= end
        if last:
            piece = piece.rstrip("=")
            if len(piece) % 4 == 1:
                raise ValidationError(f"{what} is not valid base64 (its length is wrong)")
            piece += "=" * (-len(piece) % 4)
            carry = ""
        else:
            cut = len(piece) - len(piece) % 4
            piece, carry = piece[:cut], piece[cut:]
            if "=" in piece:
                raise ValidationError(f"{what} is not valid base64 (padding in the middle)")
        try:
            data = binascii.a2b_base64(piece, strict_mode=True)
        except (binascii.Error, ValueError):
            raise ValidationError(f"{what} is not valid base64") from None
        if data:
            yield data


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _describe_value(value: Any) -> str:
    if isinstance(value, str):
        return f"text of {len(value):,} characters starting {value[:24]!r}"
    return f"a value of type {type(value).__name__}"


def _host(url: str) -> str:
    """The scheme and host of a URL, for messages: its path and query may carry tokens."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}"


def _name_from_response(url: str, headers: Mapping[str, str]) -> str | None:
    disposition = headers.get("content-disposition", "")
    match = re.search(r"filename\*?=(?:UTF-8'')?\"?([^\";]+)", disposition, re.IGNORECASE)
    if match:
        return unquote(match.group(1))
    return unquote(PurePosixPath(urlsplit(url).path).name) or None


# ---------------------------------------------------------------------------------------------- the service


_INSERT = (
    "INSERT INTO files (id, user_id, job_id, name, mime, size, sha256, storage_key, created_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)
_SELECT = "SELECT id, user_id, job_id, name, mime, size, storage_key FROM files WHERE id = $1"


def _ref(row: Row) -> FileRef:
    return {"fid": row["id"], "name": row["name"], "mime": row["mime"], "size": int(row["size"])}


class FileService:
    """Files for blocks and the API: metadata rows in `files`, contents in a `BlobStore`.

    A view made by `bind(user_id=…, job_id=…)` stamps new files with that owner and job, and sees only files
    of that owner or of none. Every file is bounded by `limits.max_upload_bytes`, every image by
    `limits.max_image_pixels`.
    """

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        http: StreamingClient | None,
        limits: LimitsSettings,
        *,
        user_id: str | None = None,
        job_id: str | None = None,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.http = http
        self.limits = limits
        self.user_id = user_id
        self.job_id = job_id
        # fid -> storage key, so the synchronous `local_path()` can answer for files this process has seen.
        self._keys: OrderedDict[str, str] = OrderedDict()

    def bind(self, *, user_id: str | None, job_id: str | None) -> FileService:
        """A view of the same store that stamps new files with `user_id` and `job_id`."""
        view = object.__new__(FileService)  # a shallow copy (sharing the key cache), cheaper than copy.copy
        view.__dict__.update(self.__dict__)
        view.user_id = user_id
        view.job_id = job_id
        return view

    # -- rows

    def _remember(self, fid: str, key: str) -> None:
        self._keys[fid] = key
        self._keys.move_to_end(fid)
        if len(self._keys) > _KEY_CACHE:
            self._keys.popitem(last=False)

    async def _row(self, fid: str) -> Row | None:
        if not isinstance(fid, str) or not _FID.fullmatch(fid):
            return None
        row = await self.db.fetch_one(_SELECT, fid.lower())
        if row is None or (self.user_id is not None and row["user_id"] not in (None, self.user_id)):
            return None
        self._remember(row["id"], row["storage_key"])
        return row

    async def _existing(self, fid: str) -> Row:
        row = await self._row(fid)
        if row is None:
            raise NotFoundError("file", str(fid))
        return row

    async def _insert(self, blob: StoredBlob, *, name: str, mime: str) -> FileRef:
        fid = secrets.token_hex(16)
        try:
            await self.db.execute(
                _INSERT, fid, self.user_id, self.job_id, name, mime, blob.size, blob.sha256, blob.key, _now_ms()
            )
        except Exception:  # not on cancellation: the row may have been committed anyway, and an orphan blob is
            await self.blobs.delete(blob.key)  # harmless where a row without its blob is not
            raise
        self._remember(fid, blob.key)
        return {"fid": fid, "name": name, "mime": mime, "size": blob.size}

    async def read_file(self, fid: str) -> FileRef | None:
        """The reference of file `fid`, or `None` when there is none (or it is another owner's)."""
        row = await self._row(fid)
        return None if row is None else _ref(row)

    async def delete_file(self, fid: str) -> bool:
        """Deletes file `fid` (row, then blob); `False` when there was none."""
        row = await self._row(fid)
        if row is None:
            return False
        await self.db.execute("DELETE FROM files WHERE id = $1", row["id"])
        self._keys.pop(row["id"], None)
        await self.blobs.delete(row["storage_key"])
        return True

    # -- the FileStore protocol

    async def save_bytes(self, data: bytes, *, name: str, mime: str) -> FileRef:
        """Stores `data` as a new file; the mime is `mime` when valid, else sniffed from the content."""
        if len(data) > self.limits.max_upload_bytes:
            raise PayloadTooLargeError(f"file is over the limit of {self.limits.max_upload_bytes:,} bytes")
        blob = await self.blobs.put_bytes(data)
        kind = clean_mime(mime) or sniff_mime(data[:_HEAD]) or OCTET_STREAM
        return await self._insert(blob, name=clean_name(name), mime=kind)

    async def save_stream(self, chunks: AsyncIterator[bytes], *, name: str, mime: str) -> FileRef:
        """Streams chunks to a new file, refused with `PayloadTooLargeError` past `limits.max_upload_bytes`."""
        blob = await self.blobs.put_stream(chunks, max_bytes=self.limits.max_upload_bytes)
        try:
            kind = clean_mime(mime) or sniff_mime(await self._head(blob.key)) or OCTET_STREAM
        except BaseException:
            await self.blobs.delete(blob.key)
            raise
        return await self._insert(blob, name=clean_name(name), mime=kind)

    async def read_bytes(self, fid: str, *, max_bytes: int | None = None) -> bytes:
        """The whole content of file `fid`; `PayloadTooLargeError` past `max_bytes`, `NotFoundError` if none."""
        row = await self._existing(fid)
        return await self.blobs.read_bytes(row["storage_key"], max_bytes=max_bytes)

    async def open(self, fid: str) -> AsyncGenerator[bytes, None]:
        """The content of file `fid` in chunks; `NotFoundError` (on first iteration) when there is none."""
        row = await self._existing(fid)
        async with aclosing(self.blobs.open(row["storage_key"])) as chunks:
            async for chunk in chunks:
                yield chunk

    async def describe(self, fid: str) -> FileRef:
        """The reference of file `fid`; `NotFoundError` when there is none."""
        return _ref(await self._existing(fid))

    def local_path(self, fid: str) -> Path | None:
        """A local path holding the file's bytes, or `None` (then use `open()`).

        Known once this process has seen the file (saved, described, resolved or read: the protocol's method is
        synchronous, so it cannot look the row up) and when the blob store keeps files locally.
        """
        key = self._keys.get(fid.lower()) if isinstance(fid, str) else None
        return None if key is None else self.blobs.local_path(key)

    async def sniff(self, fid: str) -> str:
        """The mime type file `fid`'s content reveals (magic bytes), `application/octet-stream` when none."""
        row = await self._existing(fid)
        return sniff_mime(await self._head(row["storage_key"])) or OCTET_STREAM

    async def _head(self, key: str) -> bytes:
        path = self.blobs.local_path(key)
        if path is not None:
            return await asyncio.to_thread(_read_head, path)
        async with aclosing(self.blobs.open(key)) as chunks:
            async for chunk in chunks:
                return chunk[:_HEAD]
        return b""

    async def probe(self, fid: str) -> ImageFacts:
        """Checks that file `fid` is an image within the pixel limit (see `probe_image`)."""
        row = await self._existing(fid)
        return await self._probe_key(row["storage_key"])

    async def _probe_key(self, key: str) -> ImageFacts:
        max_pixels = self.limits.max_image_pixels
        path = self.blobs.local_path(key)
        if path is not None:
            return await asyncio.to_thread(_probe_path, path, max_pixels)
        data = await self.blobs.read_bytes(key, max_bytes=self.limits.max_upload_bytes)
        return await asyncio.to_thread(probe_image, io.BytesIO(data), max_pixels=max_pixels)

    # -- media values

    async def resolve_media(self, value: Any, *, kind: str) -> FileRef:
        """Turns a URL, `data:` URI, base64 text, `fid://…`, `{"fid"}` object or file id into a stored file.

        `kind` is `image`, `audio`, `video`, `document` or `file`. An image must really be a GIF, PNG, JPEG or
        WebP within the pixel limit (`UnsupportedMediaError`), and its mime is taken from its content. Other
        kinds take the mime the value declares (data URI, Content-Type), else the one sniffed, else
        `application/octet-stream`. A value of no accepted form raises `ValidationError`.
        """
        if kind not in MEDIA_KINDS:
            raise ValueError(f"unknown media kind {kind!r}")
        if isinstance(value, Mapping) and "fid" in value:
            return await self._resolve_fid(value["fid"], kind)
        if isinstance(value, bytes | bytearray):
            return await self._store_new(_one(bytes(value)), name=None, declared=None, kind=kind)
        if not isinstance(value, str):
            raise self._unaccepted(value, kind)
        start = _SPACE.match(value).end()  # type: ignore[union-attr]  # `\s*` always matches
        head = value[start : start + 40].lower()
        if head.startswith(("http://", "https://")):
            return await self._fetch(value, kind)
        if head.startswith("data:"):
            return await self._resolve_data_uri(value, start, kind)
        if head.startswith("fid://"):
            return await self._resolve_fid(value.strip()[6:], kind)
        if len(value) <= 64 and _FID.fullmatch(value.strip()):
            return await self._resolve_fid(value.strip(), kind)
        scheme = _SCHEME.match(head)
        if scheme:  # ':' is no base64 letter, so this is some other kind of URL or a path
            raise ValidationError(
                f"{kind} URL scheme {scheme.group(1)!r} is not supported; use http(s), data: or fid://",
                details={"kind": kind},
            )
        if start == len(value):  # empty or only whitespace
            raise self._unaccepted(value, kind)
        return await self._store_new(_b64_chunks(value, start, f"the {kind}"), name=None, declared=None, kind=kind)

    def _unaccepted(self, value: Any, kind: str) -> ValidationError:
        return ValidationError(
            f"expected {'an' if kind[0] in 'aeiou' else 'a'} {kind} as an http(s) URL, a data: URI, base64 text, "
            f'fid://<id>, {{"fid": <id>}} or a file id; got {_describe_value(value)}',
            details={"kind": kind},
        )

    async def _resolve_fid(self, fid: Any, kind: str) -> FileRef:
        if not isinstance(fid, str) or not _FID.fullmatch(fid):
            raise ValidationError(f"{fid!r} is not a file id (32 hexadecimal digits)", details={"kind": kind})
        row = await self._existing(fid)
        ref = _ref(row)
        if kind == "image":
            facts = await self._probe_key(row["storage_key"])
            ref["mime"] = facts.mime  # the content's word, whatever the file was saved as
        return ref

    async def _resolve_data_uri(self, value: str, start: int, kind: str) -> FileRef:
        comma = value.find(",", start, start + 1024)
        if comma < 0:
            raise ValidationError(f"the {kind} data: URI has no ',' after its media type", details={"kind": kind})
        params = [part.strip() for part in value[start + 5 : comma].split(";")]
        is_b64 = len(params) > 1 and params[-1].lower() == "base64"
        declared = clean_mime(params[0]) if "/" in params[0] else "text/plain"
        if is_b64:
            chunks = _b64_chunks(value, comma + 1, f"the {kind} data: URI")
        else:
            if len(value) - comma > 3 * self.limits.max_upload_bytes:
                raise PayloadTooLargeError(f"file is over the limit of {self.limits.max_upload_bytes:,} bytes")
            chunks = _one(unquote_to_bytes(value[comma + 1 :]))
        return await self._store_new(chunks, name=None, declared=declared, kind=kind)

    async def _fetch(self, url: str, kind: str) -> FileRef:
        if len(url) > _MAX_URL or len(url := url.strip()) > _MAX_URL:
            raise ValidationError(f"the {kind} URL is longer than {_MAX_URL} characters", details={"kind": kind})
        if self.http is None:
            raise OutboundBlockedError(f"refused: {kind} URLs cannot be fetched here")
        async with self.http.stream("GET", url, max_bytes=self.limits.max_upload_bytes) as response:
            if not 200 <= response.status_code < 300:
                raise OutboundFailedError(
                    f"fetching the {kind} from {_host(url)} answered HTTP {response.status_code}",
                    details={"status": response.status_code},
                )
            name = _name_from_response(url, response.headers)
            declared = clean_mime(response.headers.get("content-type"))
            return await self._store_new(response.aiter_bytes(), name=name, declared=declared, kind=kind)

    async def _store_new(
        self, chunks: AsyncIterator[bytes], *, name: str | None, declared: str | None, kind: str
    ) -> FileRef:
        """Streams a new value to the blob store, checks it for its kind, then adds its row."""
        blob = await self.blobs.put_stream(chunks, max_bytes=self.limits.max_upload_bytes)
        try:
            if blob.size == 0:
                raise ValidationError(f"the {kind} is empty", details={"kind": kind})
            if kind == "image":
                facts = await self._probe_key(blob.key)
                mime = facts.mime
                fallback = "image" + IMAGE_EXTENSIONS[facts.format]
            else:
                if declared is None or declared == OCTET_STREAM:
                    declared = sniff_mime(await self._head(blob.key))
                mime = declared or OCTET_STREAM
                fallback = kind + _extension(mime)
        except BaseException:
            await self.blobs.delete(blob.key)
            raise
        return await self._insert(blob, name=clean_name(name, fallback), mime=mime)


def _read_head(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(_HEAD)


def _probe_path(path: Path, max_pixels: int) -> ImageFacts:
    with path.open("rb") as file:
        return probe_image(file, max_pixels=max_pixels)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
