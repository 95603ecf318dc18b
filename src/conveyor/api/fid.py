"""Omnitool's file routes: `GET /fid/{fid}` (bytes, descriptor or thumbnail) and `POST /fid` (upload).

Omnitool clients know a stored file by its descriptor (`{fid, url: "/fid/<fid>", furl: "fid://<fid>.<ext>",
fileName, size, mimeType, fileType, expires, meta}`), built here for uploads, `?obj=true` and job results.
The 128-bit random fid is the capability, as in Omnitool; with `CONVEYOR_FILES__SIGNED_LINKS` the server serves
only links it signed (`?exp=&sig=`, HMAC-SHA256 keyed from the server's signing secret) until they expire.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import mimetypes
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from PIL import Image, ImageOps
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from conveyor.api.auth import principal
from conveyor.api.deps import json_response, runtime
from conveyor.api.files import MAX_FILES_PER_UPLOAD, UPLOAD_CHUNK, content_disposition, is_inline_safe
from conveyor.auth.principal import Principal
from conveyor.auth.secret import load_signing_secret
from conveyor.blocks.base import FileRef
from conveyor.errors import ConveyorError, ForbiddenError, NotFoundError, ValidationError
from conveyor.runtime import Runtime
from conveyor.store.files import FileService, clean_mime

router = APIRouter(tags=["omnitool"])

MAX_SAFE_INTEGER = 2**53 - 1
"""Omnitool's `expires` for a file that never expires (JavaScript's Number.MAX_SAFE_INTEGER); ours never do."""
RESIZE_MAX = 2048
"""Largest width or height `/fid` resizes to (Omnitool's own bound is 512, in steps of 32)."""
RESIZE_MAX_PIXELS = RESIZE_MAX * RESIZE_MAX
LINK_KEY_CONTEXT = b"conveyor /fid link v1"
# A stored file never runs as a page of this origin, whatever its type (the native download sends the same).
FILE_CSP = "sandbox; default-src 'none'; img-src 'self'; media-src 'self'"
CACHE_S = 86_400

_FID_PATH = re.compile(r"([0-9a-fA-F]{32})(?:\.[A-Za-z0-9]{1,16})?")
_RESIZABLE = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}
_DOCUMENT_MIMES = frozenset(
    {
        "application/pdf",
        "application/json",
        "application/xml",
        "application/rtf",
        "application/msword",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.oasis.opendocument.text",
        "application/epub+zip",
    }
)
Fit = Literal["cover", "contain", "fill", "inside", "outside"]
Position = Literal[
    "center",
    "north",
    "northeast",
    "east",
    "southeast",
    "south",
    "southwest",
    "west",
    "northwest",
    "entropy",
    "attention",
]
# Where `cover` crops and `contain` places the image (Pillow's centering); sharp's `entropy` and `attention`
# strategies pick a spot by content, which we do not: they crop at the centre.
_CENTERING: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "north": (0.5, 0.0),
    "northeast": (1.0, 0.0),
    "east": (1.0, 0.5),
    "southeast": (1.0, 1.0),
    "south": (0.5, 1.0),
    "southwest": (0.0, 1.0),
    "west": (0.0, 0.5),
    "northwest": (0.0, 0.0),
    "entropy": (0.5, 0.5),
    "attention": (0.5, 0.5),
}


# ---------------------------------------------------------------------------------------------- signed links


class LinkSigner:
    """Signs and checks expiring `/fid` links: `sig` is HMAC-SHA256 over `<fid>.<exp>` with a key derived from the
    server's signing secret (so a link's signature is never usable as anything else)."""

    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self._key = hmac.new(secret, LINK_KEY_CONTEXT, hashlib.sha256).digest()
        self.ttl_s = ttl_s

    def _sig(self, fid: str, exp: int) -> str:
        return hmac.new(self._key, f"{fid.lower()}.{exp}".encode(), hashlib.sha256).hexdigest()

    def query(self, fid: str, now: float | None = None) -> str:
        """`exp=<epoch s>&sig=<hex>` for a link to `fid` valid for `ttl_s` from now."""
        exp = int(now if now is not None else time.time()) + self.ttl_s
        return f"exp={exp}&sig={self._sig(fid, exp)}"

    def check(self, fid: str, exp: str | None, sig: str | None) -> int:
        """The seconds a link has left; `ForbiddenError` (403) when unsigned, tampered with or expired."""
        if not exp or not sig:
            raise ForbiddenError("this server serves files by signed links only (`?exp=&sig=` from a descriptor)")
        if not (exp.isascii() and exp.isdigit() and len(exp) <= 12):
            raise ForbiddenError("the link's signature is not valid")
        if not hmac.compare_digest(self._sig(fid, int(exp)), sig.lower()):
            raise ForbiddenError("the link's signature is not valid")
        left = int(exp) - int(time.time())
        if left <= 0:
            raise ForbiddenError("the link has expired")
        return left


def link_signer(request: Request) -> LinkSigner | None:
    """The app's link signer when `CONVEYOR_FILES__SIGNED_LINKS` is on, else None (made once per app)."""
    rt: Runtime = request.app.state.runtime
    if not rt.settings.files.signed_links:
        return None
    signer: LinkSigner | None = getattr(request.app.state, "fid_link_signer", None)
    if signer is None:
        # The secret the runtime loaded at start-up (configured, or the data directory's file, created by then).
        secret = load_signing_secret(rt.settings.auth.jwt_secret.get_secret_value(), rt.settings.data_dir)
        signer = LinkSigner(secret, rt.settings.files.link_ttl_s)
        request.app.state.fid_link_signer = signer
    return signer


# ---------------------------------------------------------------------------------------------- descriptors


def file_type(mime: str) -> str:
    """Omnitool's `fileType`: image, audio, video, document (text and office/PDF types) or file."""
    top = mime.split("/", 1)[0]
    if top in ("image", "audio", "video"):
        return top
    if top == "text" or mime in _DOCUMENT_MIMES:
        return "document"
    return "file"


def extension(name: str, mime: str) -> str:
    """The extension `furl` carries: the file name's, else the mime type's, without the dot ('' when none)."""
    stem, dot, ext = name.rpartition(".")
    if dot and stem and ext.isalnum() and len(ext) <= 16:
        return ext.lower()
    guessed = {"image/jpeg": ".jpg", "text/plain": ".txt"}.get(mime) or mimetypes.guess_extension(mime) or ""
    return guessed.lstrip(".")


def descriptor(
    ref: FileRef,
    *,
    host: str,
    signer: LinkSigner | None,
    meta: dict[str, Any] | None = None,
    link_query: str | None = None,
) -> dict[str, Any]:
    """Omnitool's file descriptor of a stored file (`host` is what `ticket.url` names, as Omnitool's does).

    With signed links, `url` is signed afresh unless `link_query` (the link the caller presented) is given.
    """
    fid = ref["fid"]
    ext = extension(ref["name"], ref["mime"])
    url = f"/fid/{fid}"
    if signer is not None:
        url += "?" + (link_query or signer.query(fid))
    return {
        "fid": fid,
        "ticket": {"fid": fid, "count": 1, "url": host, "publicUrl": host},
        "url": url,
        "furl": f"fid://{fid}.{ext}" if ext else f"fid://{fid}",
        "fileName": ref["name"],
        "size": ref["size"],
        "mimeType": ref["mime"],
        "fileType": file_type(ref["mime"]),
        "expires": MAX_SAFE_INTEGER,
        "meta": meta or {},
    }


async def file_meta(files: FileService, ref: FileRef) -> dict[str, Any]:
    """Omnitool's `meta` for a file: an image's `width`, `height` and `type` (read from its header), else {}."""
    if ref["mime"] not in _RESIZABLE:
        return {}
    try:
        facts = await files.probe(ref["fid"])
    except ConveyorError:  # not readable as the image its type says: described without its size
        return {}
    return {"width": facts.width, "height": facts.height, "type": facts.format.lower()}


async def describe(
    request: Request, files: FileService, ref: FileRef, *, link_query: str | None = None
) -> dict[str, Any]:
    """The descriptor of `ref` as this request's client should see it (signed `url` when links are signed)."""
    host = request.headers.get("host") or request.url.netloc
    meta = await file_meta(files, ref)
    return descriptor(ref, host=host, signer=link_signer(request), meta=meta, link_query=link_query)


# ---------------------------------------------------------------------------------------------- GET /fid/{fid}


class _FileNotFoundError(NotFoundError):
    """Omnitool's `{"error": "File not found"}` (Omnitool answers 410 with another shape; a 404 is honest)."""

    def __init__(self, fid: str) -> None:
        super().__init__("file", fid)
        self.message = "File not found"


def parse_fid(raw: str) -> str:
    """The fid of a `/fid/<fid>[.ext]` path segment (the suffix is ignored, as Omnitool does); 404 otherwise."""
    match = _FID_PATH.fullmatch(raw)
    if match is None:
        raise _FileNotFoundError(raw[:64])
    return match.group(1).lower()


@router.get("/fid/{fid}", summary="Omnitool: a file's bytes, its descriptor (`?obj=true`) or a resized image")
async def serve_fid(
    fid: str,
    request: Request,
    rt: Runtime = Depends(runtime),
    obj: bool = Query(False, description="Answer the file's descriptor (JSON) instead of its bytes."),
    download: bool = Query(False, description="Send as an attachment."),
    width: int | None = Query(None, ge=1, le=RESIZE_MAX, description="Resize an image (pixels)."),
    height: int | None = Query(None, ge=1, le=RESIZE_MAX, description="Resize an image (pixels)."),
    fit: Fit | None = Query(None, description="How a resized image fills width x height (sharp's fits)."),
    position: Position | None = Query(None, description="Where `cover` crops and `contain` places the image."),
    exp: str | None = Query(None, max_length=20, description="A signed link's expiry (epoch seconds)."),
    sig: str | None = Query(None, max_length=128, description="A signed link's signature."),
) -> Response:
    file_id = parse_fid(fid)
    signer = link_signer(request)
    left = signer.check(file_id, exp, sig) if signer is not None else CACHE_S
    files = rt.files  # not bound to a user: the (unguessable, or signed) link is the capability
    ref = await files.read_file(file_id)
    if ref is None:
        raise _FileNotFoundError(file_id)
    if obj:
        # A signed link's descriptor carries that same link: asking for it must not renew the link's expiry.
        presented = urlencode({"exp": exp, "sig": sig}) if signer is not None else None
        body = orjson.dumps(await describe(request, files, ref, link_query=presented))
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})
    disposition = "inline" if not download and is_inline_safe(ref["mime"]) else "attachment"
    headers = {
        "Content-Disposition": content_disposition(disposition, ref["name"]),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": FILE_CSP,
        "Cache-Control": f"private, max-age={min(left, CACHE_S)}" + (", immutable" if signer is None else ""),
    }
    if width is not None or height is not None:
        thumbnails = _thumbnails(request)
        key = (file_id, width or height or 1, height or width or 1, fit or "cover", position)
        data = thumbnails.get(key)
        if data is None:
            async with thumbnails.slots:  # anyone with a link may ask: resizes take turns, not every core
                data = await resized(files, ref, key[1], key[2], key[3], position)
            thumbnails.put(key, data)
        return Response(data, media_type=ref["mime"], headers=headers)
    if fit is not None or position is not None:
        raise ValidationError("`fit` and `position` need `width` or `height`")
    headers["Content-Length"] = str(ref["size"])
    return StreamingResponse(files.open(file_id), media_type=ref["mime"], headers=headers)


class Thumbnails:
    """Resized images kept in memory (bounded in bytes, oldest out first), and a bound on resizes at once."""

    def __init__(self, max_bytes: int = 32 * 1024 * 1024, concurrent: int = 2) -> None:
        self.max_bytes = max_bytes
        self.slots = asyncio.Semaphore(concurrent)
        self._kept: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple[Any, ...]) -> bytes | None:
        data = self._kept.get(key)
        if data is not None:
            self._kept.move_to_end(key)
        return data

    def put(self, key: tuple[Any, ...], data: bytes) -> None:
        if len(data) > self.max_bytes // 8 or key in self._kept:
            return
        self._kept[key] = data
        self._bytes += len(data)
        while self._bytes > self.max_bytes:
            _, old = self._kept.popitem(last=False)
            self._bytes -= len(old)


def _thumbnails(request: Request) -> Thumbnails:
    thumbnails: Thumbnails | None = getattr(request.app.state, "fid_thumbnails", None)
    if thumbnails is None:
        thumbnails = request.app.state.fid_thumbnails = Thumbnails()
    return thumbnails


async def resized(files: FileService, ref: FileRef, width: int, height: int, fit: str, position: str | None) -> bytes:
    """The image `ref` resized to `width` x `height` as `fit` says, in its own format (422 for a non-image)."""
    fmt = _RESIZABLE.get(ref["mime"])
    if fmt is None:
        raise ValidationError(f"only images are resized; this file is {ref['mime']}")
    await files.probe(ref["fid"])  # a real image of its type, within the pixel limit, before anything decodes it
    path = files.local_path(ref["fid"])
    source: Path | bytes = path if path is not None else await files.read_bytes(ref["fid"])
    centering = _CENTERING[position or "center"]
    return await asyncio.to_thread(resize_image, source, fmt, width, height, fit, centering)


def resize_image(
    source: Path | bytes, fmt: str, width: int, height: int, fit: str, centering: tuple[float, float]
) -> bytes:
    """Resizes an image as sharp's `fit` does (`cover`, `contain`, `fill`, `inside`, `outside`); blocking."""
    with Image.open(source if isinstance(source, Path) else io.BytesIO(source), formats=[fmt]) as image:
        alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
        frame = image.convert("RGBA" if alpha and fmt != "JPEG" else "RGB")  # an animation's first frame
    w, h = frame.size
    method = Image.Resampling.LANCZOS
    if fit == "cover":
        out = ImageOps.fit(frame, (width, height), method=method, centering=centering)
    elif fit == "contain":
        color = (0, 0, 0, 0) if frame.mode == "RGBA" else (0, 0, 0)
        out = ImageOps.pad(frame, (width, height), method=method, color=color, centering=centering)
    elif fit == "fill":
        out = frame.resize((width, height), method)
    else:
        scale = (min if fit == "inside" else max)(width / w, height / h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if size[0] * size[1] > RESIZE_MAX_PIXELS:
            raise ValidationError(
                f"the resized image would be {size[0]}x{size[1]} pixels, over {RESIZE_MAX}x{RESIZE_MAX}",
                details={"width": size[0], "height": size[1]},
            )
        out = frame.resize(size, method)
    buffer = io.BytesIO()
    out.save(buffer, format=fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- POST /fid


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(UPLOAD_CHUNK):
        yield chunk


def _upload_mime(upload: UploadFile) -> str:
    """The declared type, else the one the file name suggests ('' lets the store sniff the content)."""
    declared = clean_mime(upload.content_type)
    if declared and declared != "application/octet-stream":
        return declared
    guessed, _ = mimetypes.guess_type(upload.filename or "")
    return guessed or ""


@router.post("/fid", summary="Omnitool: upload files (multipart, any field names); answers their descriptors")
async def upload_fid(request: Request, rt: Runtime = Depends(runtime), me: Principal = Depends(principal)) -> Response:
    if "multipart/form-data" not in request.headers.get("content-type", "").lower():
        raise HTTPException(415, "uploads are multipart/form-data")
    files = rt.files.bind(user_id=me.user_id, job_id=None)
    described = []
    # Omnitool stores every file part, whatever its field name; its `storageType` field (permanent or temporary)
    # has no meaning here: stored files stay until deleted.
    async with request.form(max_files=MAX_FILES_PER_UPLOAD, max_fields=100) as form:
        for _, value in form.multi_items():
            if not isinstance(value, UploadFile):
                continue
            ref = await files.save_stream(_chunks(value), name=value.filename or "file", mime=_upload_mime(value))
            described.append(await describe(request, files, ref))
    return json_response(described)
