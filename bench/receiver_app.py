"""A fast webhook receiver for the benchmarks: answers 200 at once and counts what it received, and when.

`python bench/receiver_app.py PORT` serves on 127.0.0.1:PORT, HTTP/1.1 keep-alive, on a bare asyncio protocol
(uvloop when installed) so that the receiver costs as little as can be and the figure is the sender's:
  - any request but the two below (e.g. `POST /hook`): read whole (Content-Length body), counted with its
    `webhook-id` and the wall-clock time it was read, answered `200` with an empty body;
  - `GET /stats`: `{"count", "unique_ids", "connections", "first_ms", "last_ms"}` (times in epoch ms, floats,
    null before the first request; `connections` counts every connection opened, the stats' own included);
  - `POST /reset`: forgets everything counted so far;
  - `GET /health`: `200`, not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time

from load import new_event_loop

HOST = "127.0.0.1"
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
MAX_HEAD = 64 * 1024  # a head larger than this is not a webhook: the connection is closed


class Counter:
    """What the receiver saw since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.connections = 0  # connections opened: far fewer than requests when the sender keeps them alive
        self.ids: set[bytes] = set()
        self.first_ms: float | None = None
        self.last_ms: float | None = None

    def hit(self, webhook_id: bytes | None) -> None:
        at = time.time() * 1000
        if self.first_ms is None:
            self.first_ms = at
        self.last_ms = at
        self.count += 1
        if webhook_id is not None:
            self.ids.add(webhook_id)

    def stats(self) -> bytes:
        data = {
            "count": self.count,
            "unique_ids": len(self.ids),
            "connections": self.connections,
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
        }
        return json.dumps(data).encode()


COUNTER = Counter()


def _header(head: bytes, name: bytes) -> bytes | None:
    """One header's value from a request head (`name` lower case), or None."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


class Receiver(asyncio.Protocol):
    """One keep-alive connection: parses requests out of the byte stream (pipelining allowed) and answers each."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes
        COUNTER.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        for _ in range(10_000):  # bounded: at most this many pipelined requests per read
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self._close()
                return
            head = self.buffer[:end]
            length = int(_header(head, b"content-length") or 0)
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            self._answer(head)

    def _answer(self, head: bytes) -> None:
        assert self.transport is not None
        request_line = head.split(b"\r\n", 1)[0]
        parts = request_line.split(b" ")
        method, path = (parts[0], parts[1]) if len(parts) >= 2 else (b"", b"")
        if method == b"GET" and path == b"/stats":
            body = COUNTER.stats()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
        elif method == b"POST" and path == b"/reset":
            COUNTER.reset()
            self.transport.write(OK)
        elif path == b"/health":
            self.transport.write(OK)
        else:
            COUNTER.hit(_header(head, b"webhook-id"))
            self.transport.write(OK)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Receiver, HOST, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    port = int(sys.argv[1])
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(serve(port))


if __name__ == "__main__":
    main()
