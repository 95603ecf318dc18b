"""Tests for the `http_request` block, run against a real receiver on loopback through a real GuardedClient."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pydantic
import pytest
from tests.receiver import Receiver, Reply

from conveyor.blocks.base import BlockContext, BlockError, BlockInputError, PortType, UsageMeter
from conveyor.blocks.http import HttpRequestBlock, HttpRequestConfig
from conveyor.net import GuardedClient
from conveyor.settings import LimitsSettings, NetSettings

BLOCK = HttpRequestBlock()


@pytest.fixture
async def server() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.start()
    yield receiver
    await receiver.close()


@pytest.fixture
async def http() -> AsyncIterator[GuardedClient]:
    async with GuardedClient(NetSettings(allow_cidrs=["127.0.0.0/8"])) as client:
        yield client


def context(http: GuardedClient) -> BlockContext:
    return BlockContext(
        job_id="job-1",
        node_id="node-1",
        files=None,  # type: ignore[arg-type]  # this block never touches files
        http=http,
        usage=UsageMeter(),
        logger=logging.getLogger("test"),
        limits=LimitsSettings(),
    )


async def run(http: GuardedClient, inputs: dict[str, Any] | None = None, **config: Any) -> dict[str, Any]:
    return await BLOCK.run(context(http), HttpRequestConfig(**config), inputs or {})


async def test_get_outputs_status_text_json_and_headers(server: Receiver, http: GuardedClient) -> None:
    server.routes["/data"] = Reply(
        200, content_type="application/json; charset=utf-8", body=b'{"a": [1, 2], "b": "\xc3\xa9"}'
    )
    out = await run(http, url=server.url("/data"))
    assert out["status"] == 200
    assert out["json"] == {"a": [1, 2], "b": "é"}
    assert json.loads(out["text"]) == out["json"]
    assert out["headers"]["content-type"] == "application/json; charset=utf-8"
    assert [(s.method, s.path, s.body) for s in server.seen] == [("GET", "/data", b"")]


async def test_json_is_null_unless_the_answer_is_json(server: Receiver, http: GuardedClient) -> None:
    server.routes["/plain"] = Reply(200, content_type="text/plain", body=b'{"a": 1}')
    server.routes["/broken"] = Reply(200, content_type="application/json", body=b"{not json")
    server.routes["/problem"] = Reply(200, content_type="application/problem+json", body=b'{"title": "x"}')
    assert (await run(http, url=server.url("/plain")))["json"] is None
    assert (await run(http, url=server.url("/broken")))["json"] is None
    assert (await run(http, url=server.url("/problem")))["json"] == {"title": "x"}


async def test_text_is_decoded_with_the_declared_charset(server: Receiver, http: GuardedClient) -> None:
    server.routes["/latin"] = Reply(200, content_type="text/plain; charset=iso-8859-1", body="café".encode("latin-1"))
    server.routes["/odd"] = Reply(200, content_type="text/plain; charset=no-such-charset", body="café".encode())
    assert (await run(http, url=server.url("/latin")))["text"] == "café"
    assert (await run(http, url=server.url("/odd")))["text"] == "café"


async def test_the_url_input_wins_over_the_configuration(server: Receiver, http: GuardedClient) -> None:
    await run(http, {"url": server.url("/from-input")}, url=server.url("/from-config"))
    await run(http, {"url": ""}, url=server.url("/from-config"))
    assert [s.path for s in server.seen] == ["/from-input", "/from-config"]


@pytest.mark.parametrize("inputs", [{}, {"url": ""}, {"url": None}, {"url": 5}])
async def test_a_missing_or_wrong_url_is_an_input_error(inputs: dict[str, Any], http: GuardedClient) -> None:
    with pytest.raises(BlockInputError) as caught:
        await run(http, inputs)
    assert caught.value.retryable is False


@pytest.mark.parametrize(
    ("body", "sent", "content_type"),
    [
        ({"q": "é", "n": [1]}, {"q": "é", "n": [1]}, "application/json"),
        ([1, 2], [1, 2], "application/json"),
        (3.5, 3.5, "application/json"),
        ("plain words", "plain words", "text/plain; charset=utf-8"),
    ],
)
async def test_the_body_input_is_sent_as_text_or_json(
    body: Any, sent: Any, content_type: str, server: Receiver, http: GuardedClient
) -> None:
    await run(http, {"body": body}, method="POST", url=server.url("/in"))
    (seen,) = server.seen
    assert seen.method == "POST"
    assert seen.headers["content-type"] == content_type
    assert (json.loads(seen.body) if content_type == "application/json" else seen.body.decode()) == sent


async def test_body_template_renders_the_body_input(server: Receiver, http: GuardedClient) -> None:
    template = '{"query": {{ body | tojson }}, "n": {{ body | length }}}'
    await run(http, {"body": "it's"}, method="PUT", url=server.url("/t"), body_template=template)
    await run(http, {"body": "x"}, method="PATCH", url=server.url("/t"), body_template="say {{ body }}")
    custom = {"Content-Type": "application/vnd.thing", "X-Trace": "1"}
    await run(http, {"body": "x"}, method="POST", url=server.url("/t"), body_template="{}", headers=custom)
    first, second, third = server.seen
    assert (first.method, json.loads(first.body), first.headers["content-type"]) == (
        "PUT",
        {"query": "it's", "n": 4},
        "application/json",
    )
    assert (second.method, second.body, second.headers["content-type"]) == (
        "PATCH",
        b"say x",
        "text/plain; charset=utf-8",
    )
    assert (third.body, third.headers["content-type"], third.headers["x-trace"]) == (
        b"{}",
        "application/vnd.thing",
        "1",
    )


async def test_a_template_that_fails_to_render_is_an_input_error(server: Receiver, http: GuardedClient) -> None:
    with pytest.raises(BlockInputError, match="body_template failed"):
        await run(http, {}, method="POST", url=server.url("/t"), body_template="{{ missing.thing }}")
    assert server.seen == []


@pytest.mark.parametrize(("status", "retryable"), [(404, False), (400, False), (429, True), (500, True), (503, True)])
async def test_a_status_outside_2xx_fails_by_default(
    status: int, retryable: bool, server: Receiver, http: GuardedClient
) -> None:
    server.routes["/x"] = Reply(status, body=b"went wrong")
    with pytest.raises(BlockError) as caught:
        await run(http, url=server.url("/x"))
    assert str(caught.value) == f"HTTP {status} from 127.0.0.1: went wrong"
    assert caught.value.retryable is retryable


async def test_fail_on_error_false_outputs_the_status(server: Receiver, http: GuardedClient) -> None:
    server.routes["/x"] = Reply(404, content_type="application/json", body=b'{"error": "nope"}')
    out = await run(http, url=server.url("/x"), fail_on_error=False)
    assert (out["status"], out["json"]) == (404, {"error": "nope"})


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/", "http://169.254.169.254/latest/meta-data"])
async def test_a_refused_url_is_an_input_error(url: str) -> None:
    async with GuardedClient(NetSettings()) as guarded:
        with pytest.raises(BlockInputError, match="refused") as caught:
            await run(guarded, url=url)
    assert caught.value.retryable is False


async def test_loopback_is_refused_without_the_allow_list(server: Receiver) -> None:
    async with GuardedClient(NetSettings()) as guarded:
        with pytest.raises(BlockInputError, match="loopback"):
            await run(guarded, url=server.url("/x"))
    assert server.seen == []


async def test_a_timeout_is_a_retryable_block_error(server: Receiver, http: GuardedClient) -> None:
    server.routes["/slow"] = Reply(stall_s=10)
    with pytest.raises(BlockError, match="timed out") as caught:
        await run(http, url=server.url("/slow"), timeout_s=0.3)
    assert not isinstance(caught.value, BlockInputError)
    assert caught.value.retryable is True


async def test_a_body_over_max_bytes_fails(server: Receiver, http: GuardedClient) -> None:
    server.routes["/big"] = Reply(body=b"x" * 4096)
    with pytest.raises(BlockError, match="over the limit"):
        await run(http, url=server.url("/big"), max_bytes=1024)


@pytest.mark.parametrize(
    "config",
    [
        {"method": "TRACE"},
        {"timeout_s": 0},
        {"timeout_s": 3600},
        {"max_bytes": 10**12},
        {"body_template": "{% if %}"},
        {"unknown": 1},
        {"headers": {"X": 1}},
    ],
)
def test_bad_configuration_is_refused(config: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        HttpRequestConfig(**config)


def test_ports_need_a_url_input_only_without_a_configured_url() -> None:
    inputs, outputs = BLOCK.ports(HttpRequestConfig(), [])
    assert inputs["url"].required is True
    assert inputs["body"].required is False
    assert inputs["body"].type == PortType.ANY
    assert {name: port.type for name, port in outputs.items()} == {
        "status": PortType.NUMBER,
        "text": PortType.TEXT,
        "json": PortType.JSON,
        "headers": PortType.JSON,
    }
    inputs, _ = BLOCK.ports(HttpRequestConfig(url="https://example.com/"), ["body"])
    assert inputs["url"].required is False


def test_the_block_is_documented() -> None:
    assert HttpRequestBlock.name == "http_request"
    assert HttpRequestBlock.__doc__ and HttpRequestBlock.__doc__.startswith("Sends one HTTP request")


def test_body_template_is_bounded_like_text_templates() -> None:
    """Regression: body_template used a plain sandbox, so `{{ 'a' * 10**8 }}` rendered 100 MB on the event loop."""
    from conveyor.blocks.base import BlockInputError
    from conveyor.blocks.http import _body

    config = HttpRequestConfig(url="http://127.0.0.1:1/", method="POST", body_template="{{ 'a' * 10**8 }}")
    with pytest.raises(BlockInputError):
        _body(config, None)
