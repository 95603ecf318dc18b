"""Tests for the guarded outbound client: the address table, and real requests to receivers on loopback."""

from __future__ import annotations

import gzip
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.receiver import Receiver, Reply

from conveyor.errors import OutboundBlockedError, OutboundFailedError
from conveyor.net import GuardedClient, is_address_allowed, parse_cidrs, refusal_reason, resolve_checked
from conveyor.settings import NetSettings

MakeReceiver = Callable[..., Awaitable[Receiver]]
MakeClient = Callable[..., GuardedClient]


@pytest.fixture
async def receiver() -> AsyncIterator[MakeReceiver]:
    made: list[Receiver] = []

    async def make(host: str = "127.0.0.1") -> Receiver:
        server = Receiver(host)
        await server.start()
        made.append(server)
        return server

    yield make
    for server in made:
        await server.close()


@pytest.fixture
async def client() -> AsyncIterator[MakeClient]:
    made: list[GuardedClient] = []

    def make(*allow: str, **settings: Any) -> GuardedClient:
        made.append(GuardedClient(NetSettings(allow_cidrs=list(allow), **settings)))
        return made[-1]

    yield make
    for guarded in made:
        await guarded.aclose()


# The address table: every class of address that is not globally reachable is refused.

REFUSED = [
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.1.1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("100.64.0.1", "shared"),
    ("100.127.255.254", "shared"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.254", "benchmarking"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("192.0.0.8", "IETF"),
    ("192.88.99.1", "6to4 relay"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("fc00::1", "unique local"),
    ("fd12:3456:789a::1", "unique local"),
    ("fd00:ec2::254", "unique local"),
    ("fe80::1", "link-local"),
    ("fe80::1%1", "link-local"),
    ("febf::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "cloud metadata"),
    ("::127.0.0.1", "IPv4-compatible"),
    ("::8.8.8.8", "IPv4-compatible"),
    ("2002:7f00:1::1", "embedding 127.0.0.1, a loopback"),
    ("2002:c0a8:101::1", "embedding 192.168.1.1, a private"),
    ("64:ff9b::7f00:1", "embedding 127.0.0.1, a loopback"),
    ("64:ff9b::a9fe:a9fe", "embedding 169.254.169.254"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("2001:2::1", "IETF"),
    ("100::1", "discard"),
    ("5f00::1", "SRv6"),
]

GLOBAL = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "151.101.1.69",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "2a00:1450:4001:80b::200e",
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_non_global_addresses_are_refused_with_a_reason(address: str, reason: str) -> None:
    ip = ip_address(address)
    assert not is_address_allowed(ip, ())
    why = refusal_reason(ip)
    assert why is not None
    assert reason.lower() in why.lower()


@pytest.mark.parametrize("address", GLOBAL)
def test_global_addresses_are_allowed(address: str) -> None:
    assert is_address_allowed(ip_address(address), ())
    assert refusal_reason(ip_address(address)) is None


@pytest.mark.parametrize(
    ("address", "allow", "expected"),
    [
        ("127.0.0.1", ["127.0.0.0/8"], True),
        ("127.0.0.2", ["127.0.0.2/32"], True),
        ("127.0.0.1", ["127.0.0.2/32"], False),
        ("::ffff:127.0.0.1", ["127.0.0.0/8"], True),
        ("10.1.2.3", ["127.0.0.0/8"], False),
        ("10.1.2.3", ["10.0.0.0/8"], True),
        ("169.254.169.254", ["10.0.0.0/8", "192.168.0.0/16"], False),
        ("::1", ["::1/128"], True),
        ("::1", ["127.0.0.0/8"], False),
        ("fd00::5", ["fd00::/8"], True),
        ("0.0.0.1", ["::/96"], False),  # an IPv4 address is never inside an IPv6 network, whatever its bits
    ],
)
def test_allow_list_opens_exactly_its_ranges(address: str, allow: list[str], expected: bool) -> None:
    assert is_address_allowed(ip_address(address), parse_cidrs(allow)) is expected


@given(st.ip_addresses(v=4))
def test_ipv4_mapped_addresses_are_judged_as_their_ipv4(ip: IPv4Address) -> None:
    mapped = IPv6Address(f"::ffff:{ip}")
    assert is_address_allowed(mapped, ()) == is_address_allowed(ip, ())


@given(st.ip_addresses(), st.integers(min_value=0, max_value=128))
def test_every_address_inside_an_allowed_network_is_allowed(ip: IPv4Address | IPv6Address, prefix: int) -> None:
    network = ip_network(f"{ip}/{min(prefix, ip.max_prefixlen)}", strict=False)
    assert is_address_allowed(ip, (network,))


def test_parse_cidrs_names_a_bad_entry() -> None:
    assert parse_cidrs([" 127.0.0.0/8 ", "::1", "10.1.2.3/8"]) == (
        ip_network("127.0.0.0/8"),
        ip_network("::1/128"),
        ip_network("10.0.0.0/8"),
    )
    with pytest.raises(ValueError, match="'nope'"):
        parse_cidrs(["127.0.0.0/8", "nope"])
    with pytest.raises(ValueError, match="nope"):
        GuardedClient(NetSettings(allow_cidrs=["nope"]))


async def test_resolve_checked_refuses_a_name_that_resolves_to_loopback() -> None:
    with pytest.raises(OutboundBlockedError, match=r"localhost resolves to 127\.0\.0\.1, a loopback address"):
        await resolve_checked("localhost", 80, ())
    assert await resolve_checked("localhost", 80, parse_cidrs(["127.0.0.0/8", "::1/128"]))
    with pytest.raises(OutboundFailedError, match="could not resolve"):
        await resolve_checked("no-such-host.invalid", 80, ())


# Real requests, to receivers on loopback only.


async def test_loopback_is_refused_by_default_and_never_reached(receiver: MakeReceiver, client: MakeClient) -> None:
    server = await receiver()
    with pytest.raises(OutboundBlockedError) as caught:
        await client().request("GET", server.url())
    assert "127.0.0.1 is a loopback address" in caught.value.message
    assert "CONVEYOR_NET__ALLOW_CIDRS" in caught.value.message
    assert caught.value.status == 422
    assert server.seen == []


@pytest.mark.parametrize(
    "template",
    [
        "http://localhost:{port}/",
        "http://LOCALHOST:{port}/",
        "http://2130706433:{port}/",
        "http://127.1:{port}/",
        "http://0x7f.0.0.1:{port}/",
        "http://0.0.0.0:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",
        "https://127.0.0.1:{port}/",
        "http://user:pw@127.0.0.1:{port}/",
    ],
)
async def test_other_spellings_of_loopback_are_refused(
    template: str, receiver: MakeReceiver, client: MakeClient
) -> None:
    server = await receiver()
    with pytest.raises(OutboundBlockedError, match="refused"):
        await client().request("GET", template.format(port=server.port))
    assert server.seen == []


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/_x", "javascript:alert(1)", "", "/rel"]
)
async def test_schemes_other_than_http_and_https_are_refused(url: str, client: MakeClient) -> None:
    with pytest.raises(OutboundBlockedError, match="refused"):
        await client("0.0.0.0/0").request("GET", url)


async def test_redirect_to_a_refused_address_is_refused_before_connecting(
    receiver: MakeReceiver, client: MakeClient
) -> None:
    inner = await receiver("127.0.0.1")
    outer = await receiver("127.0.0.2")
    outer.routes["/go"] = Reply(302, {"Location": inner.url("/secret")})
    with pytest.raises(OutboundBlockedError) as caught:
        await client("127.0.0.2/32").request("GET", outer.url("/go"))
    assert "redirect to 127.0.0.1 refused: 127.0.0.1 is a loopback address" in caught.value.message
    assert [seen.path for seen in outer.seen] == ["/go"]
    assert inner.seen == []


async def test_redirect_to_another_scheme_is_refused(receiver: MakeReceiver, client: MakeClient) -> None:
    server = await receiver()
    server.routes["/go"] = Reply(301, {"Location": "file:///etc/passwd"})
    with pytest.raises(OutboundBlockedError, match=r"redirect from 127\.0\.0\.1: scheme 'file' is not allowed"):
        await client("127.0.0.0/8").request("GET", server.url("/go"))


async def test_allowed_requests_and_redirects_work(receiver: MakeReceiver, client: MakeClient) -> None:
    first = await receiver("127.0.0.1")
    second = await receiver("127.0.0.3")
    first.routes["/start"] = Reply(302, {"Location": "/middle"})
    first.routes["/middle"] = Reply(307, {"Location": second.url("/end?x=1")})
    second.routes["/end?x=1"] = Reply(201, {"Content-Type": "text/plain", "X-Thing": "yes"}, b"made it")
    response = await client("127.0.0.0/8").request("POST", first.url("/start"), content=b"payload")
    assert (response.status_code, response.content, response.url) == (201, b"made it", second.url("/end?x=1"))
    assert response.headers["x-thing"] == "yes"
    assert response.headers["X-THING"] == "yes"
    # 302 turns a POST into a GET without body; 307 keeps the method and body as they then are.
    assert [(s.method, s.path, s.body) for s in first.seen] == [("POST", "/start", b"payload"), ("GET", "/middle", b"")]
    assert [(s.method, s.path, s.body) for s in second.seen] == [("GET", "/end?x=1", b"")]


async def test_307_and_308_keep_method_and_body_303_drops_them(receiver: MakeReceiver, client: MakeClient) -> None:
    server = await receiver()
    server.routes["/a"] = Reply(307, {"Location": "/b"})
    server.routes["/b"] = Reply(308, {"Location": "/c"})
    server.routes["/c"] = Reply(303, {"Location": "/d"})
    headers = {"Content-Type": "application/json"}
    await client("127.0.0.0/8").request("PUT", server.url("/a"), content=b"{}", headers=headers)
    assert [(s.method, s.path, s.body, s.headers.get("content-type")) for s in server.seen] == [
        ("PUT", "/a", b"{}", "application/json"),
        ("PUT", "/b", b"{}", "application/json"),
        ("PUT", "/c", b"{}", "application/json"),
        ("GET", "/d", b"", None),
    ]


async def test_redirect_to_another_origin_drops_credentials(receiver: MakeReceiver, client: MakeClient) -> None:
    home = await receiver("127.0.0.1")
    away = await receiver("127.0.0.1")  # same address, another port: another origin
    home.routes["/a"] = Reply(302, {"Location": "/b"})
    home.routes["/b"] = Reply(302, {"Location": away.url("/c")})
    secrets = {"Authorization": "Bearer s3cret", "X-Api-Key": "k3y", "Accept": "application/json"}
    await client("127.0.0.0/8").request("GET", home.url("/a"), headers=secrets)
    assert [s.headers.get("authorization") for s in home.seen] == ["Bearer s3cret", "Bearer s3cret"]
    assert [s.headers.get("x-api-key") for s in home.seen] == ["k3y", "k3y"]
    (seen,) = away.seen
    assert "authorization" not in seen.headers
    assert "x-api-key" not in seen.headers
    assert seen.headers["accept"] == "application/json"


async def test_follow_redirects_false_returns_the_redirect(receiver: MakeReceiver, client: MakeClient) -> None:
    server = await receiver()
    server.routes["/go"] = Reply(302, {"Location": "/there"})
    response = await client("127.0.0.0/8").request("GET", server.url("/go"), follow_redirects=False)
    assert response.status_code == 302
    assert response.headers["location"] == "/there"
    assert [s.path for s in server.seen] == ["/go"]


async def test_redirects_are_bounded(receiver: MakeReceiver, client: MakeClient) -> None:
    server = await receiver()
    server.routes["/loop"] = Reply(302, {"Location": "/loop"})
    with pytest.raises(OutboundFailedError, match="more than 3 redirects"):
        await client("127.0.0.0/8", max_redirects=3).request("GET", server.url("/loop"))
    assert len(server.seen) == 4


@pytest.mark.parametrize("length", [True, False])
async def test_a_body_over_the_limit_is_refused(length: bool, receiver: MakeReceiver, client: MakeClient) -> None:
    server = await receiver()
    server.routes["/big"] = Reply(body=b"x" * 5000, length=length)
    guarded = client("127.0.0.0/8")
    with pytest.raises(OutboundFailedError, match="over the limit"):
        await guarded.request("GET", server.url("/big"), max_bytes=1000)
    response = await guarded.request("GET", server.url("/big"), max_bytes=5000)
    assert len(response.content) == 5000


async def test_the_settings_limit_caps_a_larger_max_bytes(receiver: MakeReceiver, client: MakeClient) -> None:
    server = await receiver()
    server.routes["/big"] = Reply(body=b"x" * 5000, length=False)
    with pytest.raises(OutboundFailedError, match="over the limit"):
        await client("127.0.0.0/8", max_response_bytes=2048).request("GET", server.url("/big"), max_bytes=10**9)


async def test_a_compressed_body_is_limited_by_its_decoded_size(receiver: MakeReceiver, client: MakeClient) -> None:
    server = await receiver()
    server.routes["/bomb"] = Reply(headers={"Content-Encoding": "gzip"}, body=gzip.compress(b"\0" * 1_000_000))
    assert len(server.routes["/bomb"].body) < 10_000
    with pytest.raises(OutboundFailedError, match="over the limit"):
        await client("127.0.0.0/8").request("GET", server.url("/bomb"), max_bytes=100_000)


async def test_a_stalled_server_times_out(receiver: MakeReceiver, client: MakeClient) -> None:
    server = await receiver()
    server.routes["/slow"] = Reply(stall_s=10)
    started = time.monotonic()
    with pytest.raises(OutboundFailedError, match="timed out"):
        await client("127.0.0.0/8").request("GET", server.url("/slow"), timeout_s=0.3)
    assert time.monotonic() - started < 5  # gave up long before the server's 10 s stall ended


async def test_a_closed_port_fails_cleanly(client: MakeClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OutboundFailedError, match=r"127\.0\.0\.1"):
        await client("127.0.0.0/8").request("GET", f"http://127.0.0.1:{port}/")


async def test_a_name_connects_to_its_checked_address_and_keeps_its_host_header(
    receiver: MakeReceiver, client: MakeClient
) -> None:
    server = await receiver()
    response = await client("127.0.0.0/8", "::1/128").request("GET", f"http://localhost:{server.port}/x")
    assert response.status_code == 200
    assert server.seen[0].headers["host"] == f"localhost:{server.port}"


async def test_userinfo_becomes_basic_auth(receiver: MakeReceiver, client: MakeClient) -> None:
    server = await receiver()
    await client("127.0.0.0/8").request("GET", f"http://al%40x:p%3Aw@127.0.0.1:{server.port}/")
    assert server.seen[0].headers["authorization"] == "Basic YWxAeDpwOnc="  # base64 of "al@x:p:w"


async def test_cookies_are_not_kept_between_requests(receiver: MakeReceiver, client: MakeClient) -> None:
    server = await receiver()
    server.routes["/set"] = Reply(headers={"Set-Cookie": "session=abc; Path=/"})
    guarded = client("127.0.0.0/8")
    await guarded.request("GET", server.url("/set"))
    await guarded.request("GET", server.url("/next"))
    assert "cookie" not in server.seen[1].headers


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"X-Token": "s3cret\r\nX-Evil: 1"}, "'X-Token' has a value that is not printable ASCII"),
        ({"X-Token": "s3cret\u00e9"}, "'X-Token' has a value that is not printable ASCII"),
        ({"Bad Name": "s3cret"}, "not a valid header name"),
        ({"Host": "internal"}, "'Host' is set by the client"),
        ({"Transfer-Encoding": "chunked"}, "is set by the client"),
    ],
)
async def test_bad_headers_are_refused_without_echoing_values(
    headers: dict[str, str], problem: str, receiver: MakeReceiver, client: MakeClient
) -> None:
    server = await receiver()
    with pytest.raises(OutboundBlockedError) as caught:
        await client("127.0.0.0/8").request("GET", server.url(), headers=headers)
    assert problem in caught.value.message
    assert "s3cret" not in caught.value.message
    assert server.seen == []


async def test_header_values_and_urls_are_not_logged(
    receiver: MakeReceiver, client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    server = await receiver()
    caplog.set_level(logging.DEBUG)
    url = server.url("/x?token=s3cret-query")
    await client("127.0.0.0/8").request("GET", url, headers={"Authorization": "Bearer s3cret-header"})
    assert "127.0.0.1" in caplog.text
    assert "s3cret" not in caplog.text


async def test_stream_yields_chunks_and_stops_past_the_limit(receiver: MakeReceiver, client: MakeClient) -> None:
    server = await receiver()
    server.routes["/big"] = Reply(body=bytes(range(256)) * 2000, length=False)
    guarded = client("127.0.0.0/8")
    async with guarded.stream("GET", server.url("/big")) as response:
        assert response.status_code == 200
        assert response.url == server.url("/big")
        received = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert received == bytes(range(256)) * 2000
    got = 0
    with pytest.raises(OutboundFailedError, match="over the limit of 100000 bytes"):
        async with guarded.stream("GET", server.url("/big"), max_bytes=100_000) as response:
            async for chunk in response.aiter_bytes():
                got += len(chunk)
    assert 0 < got <= 100_000


async def test_stream_refuses_a_declared_length_over_the_limit(receiver: MakeReceiver, client: MakeClient) -> None:
    server = await receiver()
    server.routes["/big"] = Reply(body=b"x" * 5000)
    with pytest.raises(OutboundFailedError, match="5000 bytes is over the limit"):
        async with client("127.0.0.0/8").stream("GET", server.url("/big"), max_bytes=1000):
            pytest.fail("the stream should not open")


async def test_client_is_an_async_context_manager(receiver: MakeReceiver) -> None:
    server = await receiver()
    async with GuardedClient(NetSettings(allow_cidrs=["127.0.0.0/8"])) as guarded:
        response = await guarded.request("GET", server.url())
    assert response.content == b"ok"
