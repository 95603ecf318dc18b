"""Omnitool's file routes on a real server: `POST /fid` uploads, `GET /fid/{fid}` bytes, descriptors, resizing
and signed expiring links."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image
from tests.api.test_omnitool import assert_omni_error
from tests.conftest import LiveServer

from conveyor.api.fid import LinkSigner, descriptor, extension, file_type
from conveyor.auth.secret import load_signing_secret

DESCRIPTOR_KEYS = {"fid", "ticket", "url", "furl", "fileName", "size", "mimeType", "fileType", "expires", "meta"}


def image_bytes(width: int, height: int, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), (10, 120, 200) if mode == "RGB" else (10, 120, 200, 128)).save(buffer, fmt)
    return buffer.getvalue()


async def upload(client: httpx.AsyncClient, *files: tuple[str, bytes, str]) -> list[dict[str, Any]]:
    response = await client.post("/fid", files=[("file", item) for item in files])
    assert response.status_code == 200, response.text
    described: list[dict[str, Any]] = response.json()
    return described


async def test_upload_answers_a_descriptor_per_file(server: LiveServer) -> None:
    png = image_bytes(40, 30)
    async with await server.authed_client() as client:
        # Any field names, as Omnitool reads every file part; `storageType` is accepted and has no effect.
        response = await client.post(
            "/fid",
            data={"storageType": "permanent"},
            files=[("a", ("Photo.PNG", png, "image/png")), ("b", ("notes.txt", b"some notes", "text/plain"))],
        )
        assert response.status_code == 200, response.text
        image, notes = response.json()
        host = f"127.0.0.1:{server.url.rsplit(':', 1)[1]}"
    assert set(image) == DESCRIPTOR_KEYS
    assert image["fileName"] == "Photo.PNG" and image["size"] == len(png) and image["mimeType"] == "image/png"
    assert image["url"] == f"/fid/{image['fid']}" and image["furl"] == f"fid://{image['fid']}.png"
    assert image["fileType"] == "image" and image["meta"] == {"width": 40, "height": 30, "type": "png"}
    assert image["ticket"] == {"fid": image["fid"], "count": 1, "url": host, "publicUrl": host}
    assert image["expires"] == 2**53 - 1
    assert notes["fileType"] == "document" and notes["furl"].endswith(".txt") and notes["meta"] == {}


async def test_upload_needs_a_token_and_multipart(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        assert_omni_error(await anonymous.post("/fid", files={"file": ("a.txt", b"a", "text/plain")}), 401)
    async with await server.authed_client() as client:
        assert_omni_error(await client.post("/fid", json={"file": "a"}), 415, "multipart")
        too_many = [("file", (f"{n}.txt", b"x", "text/plain")) for n in range(21)]
        assert_omni_error(await client.post("/fid", files=too_many), 400)
        # A form with no file parts stores nothing.
        body = b'--b\r\nContent-Disposition: form-data; name="storageType"\r\n\r\ntemporary\r\n--b--\r\n'
        empty = await client.post("/fid", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert empty.status_code == 200 and empty.json() == []


async def test_an_upload_over_the_file_limit_is_413(make_settings: Any) -> None:
    async with LiveServer(make_settings(limits={"max_upload_bytes": 4096})) as live:
        async with await live.authed_client() as client:
            response = await client.post("/fid", files={"file": ("big.bin", b"x" * 10_000, "application/octet-stream")})
            assert_omni_error(response, 413)


async def test_get_serves_bytes_by_fid_without_a_token(server: LiveServer) -> None:
    png = image_bytes(16, 16)
    async with await server.authed_client() as client:
        [image, page, svg] = await upload(
            client,
            ("pic.png", png, "image/png"),
            ("page.html", b"<script>alert(1)</script>", "text/html"),
            ("logo.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
        )
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        served = await anonymous.get(image["url"])
        assert served.status_code == 200 and served.content == png
        assert served.headers["content-type"] == "image/png"
        assert served.headers["content-disposition"].startswith("inline")
        assert served.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in served.headers["content-security-policy"]
        # The `.ext` suffix of a furl is ignored.
        assert (await anonymous.get(f"/fid/{image['fid']}.png")).content == png
        assert (await anonymous.get(f"/fid/{image['fid'].upper()}.whatever")).content == png
        download = await anonymous.get(image["url"], params={"download": "true"})
        assert download.headers["content-disposition"].startswith("attachment") and download.content == png
        # Types a browser would run as a page are never shown inline.
        for unsafe in (page, svg):
            response = await anonymous.get(unsafe["url"])
            assert response.headers["content-disposition"].startswith("attachment")
        described = await anonymous.get(image["url"], params={"obj": "true"})
        assert described.status_code == 200 and described.json() == image
        assert described.headers["cache-control"] == "no-store"


async def test_unknown_or_malformed_fids_are_404(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        for path in ("/fid/" + "0" * 32, "/fid/" + "0" * 32 + ".png", "/fid/01,abcdefghij", "/fid/x%00y"):
            response = await anonymous.get(path)
            assert response.status_code == 404 and response.json() == {"error": "File not found"}, path
        assert (await anonymous.get("/fid/" + "0" * 32, params={"obj": "true"})).status_code == 404


@pytest.mark.parametrize(
    ("query", "size"),
    [
        ({"width": 64, "height": 64, "fit": "cover"}, (64, 64)),
        ({"width": 64, "height": 64, "fit": "contain"}, (64, 64)),
        ({"width": 64, "height": 32, "fit": "fill"}, (64, 32)),
        ({"width": 64, "height": 64, "fit": "inside"}, (64, 32)),
        ({"width": 64, "height": 64, "fit": "outside"}, (128, 64)),
        ({"width": 50}, (50, 50)),  # one side given: the other copies it, as Omnitool does; cover by default
        ({"height": 20, "fit": "inside"}, (20, 10)),
    ],
)
async def test_images_are_resized_as_sharp_fits_them(server: LiveServer, query: dict[str, Any], size: Any) -> None:
    async with await server.authed_client() as client:
        [image] = await upload(client, ("wide.png", image_bytes(200, 100), "image/png"))
        response = await client.get(image["url"], params=query)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as resized:
        assert resized.format == "PNG" and resized.size == size


async def test_resizing_keeps_format_and_transparency(server: LiveServer) -> None:
    async with await server.authed_client() as client:
        [jpeg, webp] = await upload(
            client,
            ("p.jpg", image_bytes(30, 60, "JPEG"), "image/jpeg"),
            ("p.webp", image_bytes(30, 60, "WEBP", "RGBA"), "image/webp"),
        )
        for described, fmt in ((jpeg, "JPEG"), (webp, "WEBP")):
            response = await client.get(described["url"], params={"width": 32, "height": 32, "fit": "contain"})
            assert response.status_code == 200 and response.headers["content-type"] == described["mimeType"]
            with Image.open(io.BytesIO(response.content)) as resized:
                assert resized.format == fmt and resized.size == (32, 32)
                assert ("A" in resized.mode) == (fmt == "WEBP")


async def test_bad_resizes_are_422(server: LiveServer) -> None:
    async with await server.authed_client() as client:
        [image, text] = await upload(
            client, ("tall.png", image_bytes(1, 400), "image/png"), ("a.txt", b"text", "text/plain")
        )
        assert_omni_error(await client.get(text["url"], params={"width": 64}), 422, "only images")
        for query in ({"width": 0}, {"width": 4096}, {"width": 64, "fit": "squash"}, {"height": "tall"}):
            assert_omni_error(await client.get(image["url"], params=query), 422)
        assert_omni_error(await client.get(image["url"], params={"fit": "cover"}), 422, "width")
        # `outside` of a 1x400 image at 2048x2048 would be 2048x819200 pixels: refused, not rendered.
        response = await client.get(image["url"], params={"width": 2048, "height": 2048, "fit": "outside"})
        assert_omni_error(response, 422, "2048")


async def test_signed_links_are_required_when_configured(make_settings: Any) -> None:
    async with LiveServer(make_settings(files={"signed_links": True, "link_ttl_s": 600})) as live:
        async with await live.authed_client() as client:
            [image] = await upload(client, ("a.png", image_bytes(8, 8), "image/png"))
        link = urlsplit(image["url"])
        query = {key: values[0] for key, values in parse_qs(link.query).items()}
        assert link.path == f"/fid/{image['fid']}" and set(query) == {"exp", "sig"}
        assert 590 <= int(query["exp"]) - time.time() <= 601
        async with httpx.AsyncClient(base_url=live.url) as anonymous:
            assert (await anonymous.get(image["url"])).status_code == 200
            assert (await anonymous.get(image["url"] + "&width=4")).status_code == 200
            obj = await anonymous.get(image["url"] + "&obj=true")
            assert obj.status_code == 200 and obj.json()["fid"] == image["fid"]
            # The descriptor repeats the link presented: asking for it never renews the link's expiry.
            assert obj.json()["url"] == image["url"]
            await asyncio.sleep(1.1)
            assert (await anonymous.get(image["url"] + "&obj=true")).json()["url"] == image["url"]
            assert_omni_error(await anonymous.get(link.path), 403, "signed links only")
            tampered = {**query, "sig": "0" * 64}
            assert_omni_error(await anonymous.get(link.path, params=tampered), 403, "not valid")
            later = {**query, "exp": str(int(query["exp"]) + 1)}
            assert_omni_error(await anonymous.get(link.path, params=later), 403, "not valid")
            # A link signed with the server's key but already past its time.
            settings = live.settings
            signer = LinkSigner(load_signing_secret(settings.auth.jwt_secret.get_secret_value(), settings.data_dir), 60)
            expired = signer.query(image["fid"], now=time.time() - 3600)
            assert_omni_error(await anonymous.get(f"{link.path}?{expired}"), 403, "expired")
            fresh = signer.query(image["fid"])
            assert (await anonymous.get(f"{link.path}?{fresh}")).status_code == 200
            # A link for one file does not open another.
            other = signer.query("0" * 32)
            assert_omni_error(await anonymous.get(f"{link.path}?{other}"), 403)


def test_link_signatures_depend_on_key_fid_and_expiry() -> None:
    signer = LinkSigner(b"k" * 32, 60)
    query = dict(part.split("=") for part in signer.query("ab" * 16, now=1000.0).split("&"))
    assert query["exp"] == "1060"
    assert LinkSigner(b"j" * 32, 60).query("ab" * 16, now=1000.0) != signer.query("ab" * 16, now=1000.0)
    assert signer.query("cd" * 16, now=1000.0) != signer.query("ab" * 16, now=1000.0)


@pytest.mark.parametrize(
    ("mime", "kind"),
    [
        ("image/png", "image"),
        ("audio/mpeg", "audio"),
        ("video/mp4", "video"),
        ("text/markdown", "document"),
        ("application/pdf", "document"),
        ("application/zip", "file"),
        ("application/octet-stream", "file"),
    ],
)
def test_file_types_follow_omnitool(mime: str, kind: str) -> None:
    assert file_type(mime) == kind


def test_extension_comes_from_the_name_else_the_type() -> None:
    assert extension("photo.JPEG", "image/jpeg") == "jpeg"
    assert extension("photo", "image/jpeg") == "jpg"
    assert extension(".hidden", "text/plain") == "txt"
    assert extension("blob", "application/x-unknown-thing") == ""
    ref = {"fid": "ab" * 16, "name": "blob", "mime": "application/x-unknown-thing", "size": 3}
    assert descriptor(ref, host="h", signer=None)["furl"] == "fid://" + "ab" * 16  # type: ignore[arg-type]
