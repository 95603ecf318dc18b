"""The one guarded outbound HTTP client: every request Conveyor sends to the outside goes through here.

URL inputs, webhooks, HTTP blocks and language-model calls all use `GuardedClient`. It allows only
`http` and `https`, refuses private, loopback, link-local and other non-global addresses unless
`net.allow_cidrs` opens them, follows redirects itself so each hop is checked, and bounds every exchange
in time and size.

The address check sits in the connection layer, not in front of it: a network backend resolves the host,
checks every address it got, and then connects to one of those checked addresses, never to the name again.
So a name that resolves to a public address when checked and to 127.0.0.1 a moment later (DNS rebinding)
cannot slip through, and TLS still verifies the certificate against the name because the URL keeps it.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import re
import socket
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import httpcore
import httpx

from conveyor.errors import OutboundBlockedError, OutboundFailedError
from conveyor.settings import NetSettings

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
ALLOW_HINT = "set CONVEYOR_NET__ALLOW_CIDRS to allow it"

_log = logging.getLogger(__name__)


def _table(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(cidr), reason) for cidr, reason in rows)


# Ranges refused with a reason a person can act on. The stdlib's `is_global` is the backstop, but it
# misses several of these (fec0::/10, ff00::/8 and ::a.b.c.d count as global in some Python versions),
# and its tables change between patch releases; this list does not. First match wins, so narrower
# ranges come before the ranges that hold them.
_REFUSED: tuple[tuple[IPNetwork, str], ...] = _table(
    ("0.0.0.0/8", "an unspecified ('this network') address"),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.169.254/32", "the cloud metadata address (link-local)"),
    ("169.254.0.0/16", "a link-local address"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "an IETF protocol assignment address"),
    ("192.0.2.0/24", "a documentation address"),
    ("192.88.99.0/24", "a 6to4 relay anycast address"),
    ("192.168.0.0/16", "a private address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("255.255.255.255/32", "the broadcast address"),
    ("240.0.0.0/4", "a reserved address"),
    ("::/128", "the unspecified address"),
    ("::1/128", "a loopback address"),
    ("::/96", "an IPv4-compatible address (deprecated)"),
    ("100::/64", "a discard-only address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
    ("2001::/32", "a Teredo tunnel address"),
    ("2001:db8::/32", "a documentation address"),
    ("2001::/23", "an IETF protocol assignment address"),
    ("3fff::/20", "a documentation address"),
    ("5f00::/16", "an SRv6 segment identifier address"),
    ("fc00::/7", "a private (unique local) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address (deprecated)"),
    ("ff00::/8", "a multicast address"),
)
_NAT64 = IPv6Network("64:ff9b::/96")


def parse_cidrs(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parses `net.allow_cidrs` entries (`127.0.0.0/8`, `::1/128`, a bare address); `ValueError` names a bad one."""
    networks: list[IPNetwork] = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"net.allow_cidrs: {cidr!r} is not an IP network ({exc})") from None
    return tuple(networks)


def _inside(ip: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    # `in` across IP versions compares raw integers on some Python versions, so match versions first.
    return any(ip.version == net.version and ip in net for net in networks)


def refusal_reason(ip: IPAddress, allow: Sequence[IPNetwork] = ()) -> str | None:
    """Why the guard refuses to connect to `ip` ("a loopback address"), or `None` when it may.

    Every address that is not globally reachable is refused unless it lies inside one of `allow`.
    An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) is judged as the IPv4 address it carries; a
    NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`) address is refused when the IPv4 address it embeds is.
    """
    if _inside(ip, allow):
        return None
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return refusal_reason(ip.ipv4_mapped, allow)
    for network, reason in _REFUSED:
        if ip.version == network.version and ip in network:
            return reason
    if isinstance(ip, IPv6Address):
        embedded = ip.sixtofour or (IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if embedded is not None:
            inner = refusal_reason(embedded, allow)
            # The embedded address decides: a tunnel to a global address is as good as that address.
            return None if inner is None else f"a tunnel address embedding {embedded}, {inner}"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "not a globally reachable address"
    return None


def is_address_allowed(ip: IPAddress, allow: Sequence[IPNetwork]) -> bool:
    """Whether the guard may connect to `ip`: a globally reachable address, or one inside `allow`."""
    return refusal_reason(ip, allow) is None


async def resolve_checked(host: str, port: int, allow: Sequence[IPNetwork]) -> list[IPAddress]:
    """Resolves `host` and checks every address it has; `OutboundBlockedError` when any one is refused.

    One refused address refuses the host: otherwise a name with a public and a private address would
    reach the private one whenever the public one fails to answer.
    """
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
        literal = True
    except ValueError:
        literal = False
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise OutboundFailedError(f"could not resolve {host}: {exc}") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    if not addresses:
        raise OutboundFailedError(f"could not resolve {host}: no addresses")
    for ip in addresses:
        reason = refusal_reason(ip, allow)
        if reason is not None:
            what = f"{ip} is {reason}" if literal else f"{host} resolves to {ip}, {reason}"
            raise OutboundBlockedError(f"refused: {what}; {ALLOW_HINT}", details={"host": host, "address": str(ip)})
    return addresses


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to checked addresses: resolve, check all, connect to the address itself."""

    def __init__(self, allow: Sequence[IPNetwork]) -> None:
        self._allow = allow
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await resolve_checked(host, port, self._allow)
        except TimeoutError:
            raise OutboundFailedError(f"could not resolve {host} in time") from None
        failure: Exception | None = None
        for ip in addresses:
            try:
                return await self._inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # resolve_checked returns at least one address
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise OutboundBlockedError("refused: unix sockets are not reachable through the outbound client")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@contextmanager
def _mapped_errors(host: str) -> Iterator[None]:
    """Turns the connection layer's exceptions into our two outbound errors, naming the host."""
    try:
        yield
    except httpcore.TimeoutException as exc:
        raise OutboundFailedError(f"{host}: timed out ({type(exc).__name__})") from None
    except httpcore.UnsupportedProtocol as exc:
        raise OutboundBlockedError(f"refused: {host}: {exc}") from None
    except httpcore.LocalProtocolError:
        # The h11 message may quote a header value, which may be a secret: say what, not which.
        raise OutboundBlockedError(f"{host}: the request is not valid HTTP/1.1") from None
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.ProxyError) as exc:
        raise OutboundFailedError(f"{host}: {type(exc).__name__}: {exc}") from None


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: Iterable[bytes] | AsyncIterable[bytes], host: str) -> None:
        self._stream = stream
        self._host = host

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assert isinstance(self._stream, AsyncIterable)  # an async pool answers with async streams
        with _mapped_errors(self._host):
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class _GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over an httpcore pool whose every new connection goes through `_GuardedBackend`."""

    def __init__(self, allow: Sequence[IPNetwork]) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_GuardedBackend(allow),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _mapped_errors(url.host):
            core_response = await self._pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseStream(core_response.stream, url.host),
            extensions=core_response.extensions,
            request=request,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


@dataclass(frozen=True, slots=True)
class NetResponse:
    """A whole answer: status, headers (case-insensitive), the body read within its limit, the final URL."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes
    url: str


class NetStream:
    """An answer whose body is read in chunks, still bounded in size and by the request's deadline."""

    def __init__(self, response: httpx.Response, *, limit: int, deadline: float, host: str) -> None:
        self.status_code: int = response.status_code
        self.headers: Mapping[str, str] = response.headers
        self.url: str = str(response.url)
        self._response = response
        self._limit = limit
        self._deadline = deadline
        self._host = host

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The (decoded) body in chunks; `OutboundFailedError` once it passes the limit or the deadline."""
        total = 0
        chunks = self._response.aiter_bytes()
        while True:
            async with _deadline(self._deadline, f"{self._host}: timed out reading the body"):
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                except httpx.HTTPError as exc:  # a body that does not decode (bad gzip, …)
                    raise OutboundFailedError(f"{self._host}: {type(exc).__name__}: {exc}") from None
            total += len(chunk)
            if total > self._limit:
                raise OutboundFailedError(f"{self._host}: response body is over the limit of {self._limit} bytes")
            yield chunk

    async def aread(self) -> bytes:
        """The whole body (within the limit)."""
        return b"".join([chunk async for chunk in self.aiter_bytes()])


@asynccontextmanager
async def _deadline(when: float, message: str) -> AsyncIterator[None]:
    """Bounds a step by the request's deadline; past it, `OutboundFailedError(message)`."""
    try:
        async with asyncio.timeout_at(when):
            yield
    except TimeoutError:
        raise OutboundFailedError(message) from None


_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_CLIENT_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
# Headers that may follow a redirect to another origin; everything else (Authorization, API keys,
# cookies, custom tokens) stays behind, since we cannot tell which custom header carries a secret.
_CROSS_ORIGIN_HEADERS = frozenset({"accept", "accept-encoding", "accept-language", "user-agent", "content-type"})


def _checked_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if not _TOKEN.match(name):
            raise OutboundBlockedError(f"refused: {name!r} is not a valid header name")
        if name.lower() in _CLIENT_HEADERS:
            raise OutboundBlockedError(f"refused: header {name!r} is set by the client, not by callers")
        # Name the header, never its value: values carry tokens.
        if not value.isascii() or any(c in value for c in "\r\n\0"):
            raise OutboundBlockedError(f"refused: header {name!r} has a value that is not printable ASCII")
        fields[name] = value
    return fields


def _checked_url(url: str | httpx.URL, *, hop: str = "") -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise OutboundBlockedError(f"refused: {hop}not a valid URL ({exc})") from None
    if parsed.scheme not in ALLOWED_SCHEMES:
        scheme = parsed.scheme or "(none)"
        raise OutboundBlockedError(f"refused: {hop}scheme {scheme!r} is not allowed; only http and https are")
    if not parsed.host:
        raise OutboundBlockedError(f"refused: {hop}the URL has no host")
    return parsed


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def _redirected(
    method: str, status: int, content: bytes | None, fields: dict[str, str], *, same_origin: bool
) -> tuple[str, bytes | None, dict[str, str]]:
    """The method, body and headers of the request a redirect asks for (browser rules, as httpx applies)."""
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, content = "GET", None
        fields = {k: v for k, v in fields.items() if k.lower() != "content-type"}
    if not same_origin:
        fields = {k: v for k, v in fields.items() if k.lower() in _CROSS_ORIGIN_HEADERS}
    return method, content, fields


class GuardedClient:
    """The guarded outbound HTTP client (see the module docstring). One per app; close it with `aclose()`.

    Every request is bounded by a deadline (`timeout_s`, default `net.timeout_s`) covering connection,
    redirects and the whole body, and by a size limit (`max_bytes`, never above `net.max_response_bytes`).
    Refusals raise `OutboundBlockedError`; timeouts, connection failures, bad redirects and bodies over
    the limit raise `OutboundFailedError`. Cookies are never kept between requests. On a redirect to another
    origin only harmless headers (Accept…, User-Agent, Content-Type) are sent on.
    """

    def __init__(self, settings: NetSettings | None = None, *, user_agent: str = "conveyor") -> None:
        self.settings = settings or NetSettings()
        self.allow = parse_cidrs(self.settings.allow_cidrs)
        self._user_agent = user_agent
        self._transport = _GuardedTransport(self.allow)

    async def aclose(self) -> None:
        """Closes pooled connections."""
        await self._transport.aclose()

    async def __aenter__(self) -> GuardedClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        timeout_s: float | None = None,
        max_bytes: int | None = None,
        follow_redirects: bool = True,
    ) -> NetResponse:
        """Sends one request through the guard, following checked redirects, and reads the bounded body."""
        async with self.stream(
            method,
            url,
            headers=headers,
            content=content,
            timeout_s=timeout_s,
            max_bytes=max_bytes,
            follow_redirects=follow_redirects,
        ) as response:
            body = await response.aread()
        return NetResponse(status_code=response.status_code, headers=response.headers, content=body, url=response.url)

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        timeout_s: float | None = None,
        max_bytes: int | None = None,
        follow_redirects: bool = True,
    ) -> AsyncIterator[NetStream]:
        """Like `request`, but yields the answer before its body is read, for streaming large bodies to disk.

        The body is read with `aiter_bytes()`, which stops with `OutboundFailedError` past `max_bytes` or
        the deadline; the connection is released when the block exits.
        """
        target = _checked_url(url)
        budget = self.settings.timeout_s if timeout_s is None else timeout_s
        if budget <= 0:
            raise ValueError("timeout_s must be positive")
        limit = self.settings.max_response_bytes
        if max_bytes is not None:
            limit = min(max(max_bytes, 0), limit)
        deadline = asyncio.get_running_loop().time() + budget
        async with _deadline(deadline, f"{target.host}: timed out, no answer within {budget:g} s"):
            response = await self._send(
                method.upper(), target, _checked_headers(headers), content, budget, follow_redirects
            )
        try:
            declared = response.headers.get("content-length", "")
            if "content-encoding" not in response.headers and declared.isdigit() and int(declared) > limit:
                raise OutboundFailedError(
                    f"{target.host}: response body of {declared} bytes is over the limit of {limit}"
                )
            yield NetStream(response, limit=limit, deadline=deadline, host=target.host)
        finally:
            await response.aclose()

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        fields: dict[str, str],
        content: bytes | None,
        budget: float,
        follow_redirects: bool,
    ) -> httpx.Response:
        """Sends the request and, when asked, its redirects, checking every new URL before connecting."""
        redirects = 0
        while True:
            response = await self._send_once(method, url, fields, content, budget, redirected=redirects > 0)
            location = response.headers.get("location")
            if not follow_redirects or response.status_code not in REDIRECT_STATUSES or location is None:
                return response
            await response.aclose()
            if redirects >= self.settings.max_redirects:
                raise OutboundFailedError(f"{url.host}: more than {self.settings.max_redirects} redirects")
            redirects += 1
            try:
                joined = url.join(location)
            except (httpx.InvalidURL, ValueError) as exc:
                raise OutboundFailedError(f"{url.host}: redirect to an invalid URL ({exc})") from None
            target = _checked_url(joined, hop=f"redirect from {url.host}: ")
            same = _origin(target) == _origin(url)
            method, content, fields = _redirected(method, response.status_code, content, fields, same_origin=same)
            url = target

    async def _send_once(
        self,
        method: str,
        url: httpx.URL,
        fields: dict[str, str],
        content: bytes | None,
        budget: float,
        *,
        redirected: bool,
    ) -> httpx.Response:
        headers = {"User-Agent": self._user_agent, "Accept": "*/*", "Accept-Encoding": "gzip, deflate", **fields}
        if url.userinfo and not any(k.lower() == "authorization" for k in headers):
            # httpx's Client would turn user:password@ into Basic auth; we send requests without it.
            pair = f"{url.username}:{url.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        try:
            request = httpx.Request(
                method,
                url.copy_with(username=None, password=None),
                headers=headers,
                content=content,
                extensions={"timeout": httpx.Timeout(budget).as_dict()},
            )
        except (UnicodeError, TypeError, ValueError) as exc:
            raise OutboundBlockedError(
                f"refused: {url.host}: the request cannot be built ({type(exc).__name__})"
            ) from None
        try:
            response = await self._transport.handle_async_request(request)
        except OutboundBlockedError as exc:
            if redirected:
                raise OutboundBlockedError(f"redirect to {url.host} {exc.message}", details=exc.details) from None
            raise
        _log.debug("outbound %s %s://%s:%s -> %d", method, url.scheme, url.host, url.port or "", response.status_code)
        return response


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """A `Retry-After` header in seconds (delta seconds or an HTTP date), or None."""
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return float(raw)
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
