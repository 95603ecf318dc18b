"""Every error path answers the one native shape, `{"error": {"code", "message", "details"}}`."""

from __future__ import annotations

from typing import Any

import pytest
from tests.api.shapes import assert_error

CASES = [
    ("GET", "/api/v1/nowhere", None, {}, 404, "not_found"),
    ("DELETE", "/api/v1/health", None, {}, 405, "method_not_allowed"),
    ("POST", "/api/v1/jobs", b"{not json", {"Content-Type": "application/json"}, 422, "validation_error"),
    ("POST", "/api/v1/jobs", b'{"inputs": {}}', {"Content-Type": "application/json"}, 422, "validation_error"),
    (
        "POST",
        "/api/v1/jobs",
        b'{"recipe": "greeting", "extra": 1}',
        {"Content-Type": "application/json"},
        422,
        "validation_error",
    ),
    (
        "POST",
        "/api/v1/jobs",
        b'{"recipe": "greeting", "priority": 1000}',
        {"Content-Type": "application/json"},
        422,
        "validation_error",
    ),
    ("POST", "/api/v1/recipes", b"{broken", {"Content-Type": "application/json"}, 400, "bad_request"),
    ("POST", "/api/v1/recipes", b"key: [unclosed", {"Content-Type": "application/yaml"}, 400, "bad_request"),
    ("POST", "/api/v1/recipes", b'{"name": ""}', {"Content-Type": "application/json"}, 422, "recipe_invalid"),
    ("POST", "/api/v1/recipes", b'"just a string"', {"Content-Type": "application/json"}, 422, "recipe_invalid"),
    ("GET", "/api/v1/recipes/missing", None, {}, 404, "not_found"),
    # The recipe is looked up (and the caller's right to change it checked) before the body is read.
    (
        "PUT",
        "/api/v1/recipes/missing",
        b'{"name": "x", "nodes": {}}',
        {"Content-Type": "application/json"},
        404,
        "not_found",
    ),
    (
        "PUT",
        "/api/v1/recipes/greeting",
        b'{"name": "x", "nodes": {}}',
        {"Content-Type": "application/json"},
        422,
        "recipe_invalid",
    ),
    ("GET", "/api/v1/recipes?limit=0", None, {}, 422, "validation_error"),
    ("GET", "/api/v1/jobs?limit=100000", None, {}, 422, "validation_error"),
    ("GET", "/api/v1/files/0123456789abcdef0123456789abcdef", None, {}, 404, "not_found"),
    ("GET", "/api/v1/jobs/x/events", None, {"Last-Event-ID": "abc"}, 404, "not_found"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "code"), CASES)
async def test_error_shape(
    client: Any, method: str, path: str, body: bytes | None, headers: dict[str, str], status: int, code: str
) -> None:
    response = await client.request(method, path, content=body, headers=headers)
    assert_error(response, status, code)


async def test_body_over_the_limit_is_413(make_settings: Any) -> None:
    from tests.conftest import LiveServer

    async with (
        LiveServer(make_settings(limits={"max_body_bytes": 2048})) as live,
        await live.authed_client() as client,
    ):
        big = {"recipe": "greeting", "inputs": {"text": "x" * 5000}}
        assert_error(await client.post("/api/v1/jobs", json=big), 413, "payload_too_large")

        async def chunks() -> Any:
            for _ in range(10):
                yield b"x" * 1000

        chunked = await client.post("/api/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
        assert_error(chunked, 413, "payload_too_large")
        assert (await client.get("/api/v1/jobs")).json()["total"] == 0


async def test_bad_last_event_id_is_400(client: Any) -> None:
    job = (await client.post("/api/v1/jobs", json={"recipe": "greeting", "inputs": {"text": "e"}})).json()
    assert_error(
        await client.get(f"/api/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "abc"}), 400, "bad_request"
    )


async def test_nul_in_a_recipe_id_is_never_a_500(client: Any, server: Any) -> None:
    postgres = str(server.settings.database.url).startswith("postgres")
    for response in (
        await client.get("/api/v1/recipes/a%00b"),
        await client.get("/api/v1/recipes", params={"name": "a\x00b"}),
    ):
        assert response.status_code != 500, response.text
    response = await client.get("/api/v1/recipes/a%00b")
    if postgres:
        found = assert_error(response, 400, "bad_request")
        assert "NUL" in found["error"]["message"]
    else:
        assert_error(response, 404, "not_found")
