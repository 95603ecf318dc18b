"""File routes: upload, streamed download, and serving that can never act as a page of this origin."""

from __future__ import annotations

from typing import Any

import pytest
from tests.api.shapes import assert_error


async def test_upload_and_download_round_trip(client: Any) -> None:
    payload = bytes(range(256)) * 1000
    response = await client.post("/api/v1/files", files={"file": ("blob.bin", payload, "application/octet-stream")})
    assert response.status_code == 201
    item = response.json()["items"][0]
    assert item["size"] == len(payload) and len(item["fid"]) == 32
    downloaded = await client.get(f"/api/v1/files/{item['fid']}")
    assert downloaded.content == payload
    assert downloaded.headers["content-disposition"].startswith("attachment")


@pytest.mark.parametrize(
    ("name", "mime", "inline"),
    [
        ("page.html", "text/html", False),
        ("pic.svg", "image/svg+xml", False),
        ("script.js", "application/javascript", False),
        ("notes.txt", "text/plain", True),
        ("data.json", "application/json", True),
    ],
)
async def test_only_passive_types_are_served_inline(client: Any, name: str, mime: str, inline: bool) -> None:
    body = b"<script>alert(1)</script>" if not inline else b'{"a": 1}'
    fid = (await client.post("/api/v1/files", files={"file": (name, body, mime)})).json()["items"][0]["fid"]
    response = await client.get(f"/api/v1/files/{fid}")
    assert response.headers["content-disposition"].startswith("inline" if inline else "attachment")
    assert "sandbox" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    forced = await client.get(f"/api/v1/files/{fid}", params={"download": "true"})
    assert forced.headers["content-disposition"].startswith("attachment")


async def test_upload_over_the_limit_is_413_and_stores_nothing(make_settings: Any) -> None:
    from tests.conftest import LiveServer

    async with LiveServer(make_settings(limits={"max_upload_bytes": 4096})) as live:
        async with await live.authed_client() as client:
            response = await client.post("/api/v1/files", files={"file": ("big.bin", b"x" * 10_000)})
            assert_error(response, 413, "payload_too_large")
        rows = await live.runtime.db.fetch_val("SELECT COUNT(*) FROM files")
        assert rows == 0


async def test_upload_without_a_file_is_422(client: Any) -> None:
    assert_error(await client.post("/api/v1/files", data={"x": "y"}), 422, "validation_error")


async def test_a_non_ascii_name_is_served_per_rfc_6266(client: Any) -> None:
    response = await client.post("/api/v1/files", files={"file": ("日本語.txt", b"hello", "text/plain")})
    assert response.status_code == 201, response.text
    fid = response.json()["items"][0]["fid"]
    downloaded = await client.get(f"/api/v1/files/{fid}", params={"download": "true"})
    assert downloaded.status_code == 200 and downloaded.content == b"hello"
    disposition = downloaded.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="')
    assert "filename*=UTF-8''%E6%97%A5%E6%9C%AC%E8%AA%9E.txt" in disposition
    disposition.encode("ascii")
