"""A real HTTP/1.1 receiver on a loopback address that records every request (for outbound and webhook tests)."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Seen:
    """One request a receiver got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    """What a receiver answers on one path; `length=False` sends the body until the connection closes."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    stall_s: float = 0.0
    length: bool = True
    content_type: str = "text/plain"


class Receiver:
    """A small HTTP/1.1 server on a loopback address that records every request it receives."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.seen: list[Seen] = []
        self.routes: dict[str, Reply] = {}
        self.scripts: dict[str, list[Reply]] = {}  # answered first, one per request, before `routes`
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            headers = {}
            for line in head[1:]:
                if line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.seen.append(Seen(method, path, headers, body))
            route = path.split("?", 1)[0]
            script = self.scripts.get(route)
            reply = script.pop(0) if script else self.routes.get(path, self.routes.get(route, Reply()))
            if reply.stall_s:
                await asyncio.sleep(reply.stall_s)
            fields = {"Connection": "close", "Content-Type": reply.content_type}
            if reply.length:
                fields["Content-Length"] = str(len(reply.body))
            fields.update(reply.headers)
            lines = [f"HTTP/1.1 {reply.status} Whatever", *(f"{k}: {v}" for k, v in fields.items())]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()
            self._tasks.discard(task)
