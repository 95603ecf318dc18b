"""HTTP load for the benchmarks: wrk when it is installed, else `loadgen.py`, always in a process of its own.

Also the minimal keep-alive HTTP/1.1 client `loadgen.py` and the latency benchmark use, and the event loop
they run on. Every run is bounded in time; every address is loopback. `headers` (e.g. a server's bearer token,
`ServerProcess.headers`) go on every request of a run, whichever tool sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PYTHON = sys.executable
HOST = "127.0.0.1"


# --- load: wrk when present, else our own generator in another process --------------------------------------

WRK_DONE = """
done = function(summary, latency, requests)
  io.write(string.format("BENCH {\\"requests\\": %d, \\"duration_us\\": %d, \\"non2xx\\": %d, \\"errors\\": %d, "
    .. "\\"p50_us\\": %d, \\"p99_us\\": %d}\\n",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one load run saw: requests answered, non-2xx answers, socket errors, wall time, latency."""

    tool: str
    requests: int
    non2xx: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> int:
        return self.requests - self.non2xx


def wrk_path() -> str | None:
    return shutil.which("wrk")


def ensure_wrk() -> str | None:
    """wrk's path; when it is missing and we are root on Debian, tries `apt-get install wrk` once (bounded)."""
    found = wrk_path()
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "install", "-y", "-qq", "wrk"],
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "wrk"],
    ):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(argv, env=env, capture_output=True, timeout=180, check=False)
        if wrk_path():
            break
    return wrk_path()


def run_load(
    port: int,
    path: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    connections: int = 16,
    duration_s: float = 10.0,
    tool: str = "auto",
    headers: Mapping[str, str] | None = None,
) -> LoadResult:
    """Drives `connections` keep-alive connections at `path` for `duration_s` from a separate process."""
    if tool == "wrk" or (tool == "auto" and wrk_path()):
        return _run_wrk(
            port, path, method=method, body=body, connections=connections, duration_s=duration_s, headers=headers
        )
    return run_loadgen(
        port, path, method=method, body=body, connections=connections, duration_s=duration_s, headers=headers
    )


def lua_string(data: bytes | str) -> str:
    """`data` as a Lua string literal: printable ASCII as is, `"` and `\\` escaped, any other byte as `\\ddd`.

    Decimal escapes are valid in every Lua (wrk runs LuaJIT, which has no `\\u`), so any body fits.
    """
    raw = data.encode() if isinstance(data, str) else data
    return '"' + "".join(_LUA_BYTES[b] for b in raw) + '"'


_LUA_BYTES = ["\\" + chr(b) if chr(b) in '"\\' else chr(b) if 32 <= b < 127 else f"\\{b:03d}" for b in range(256)]


def wrk_script(method: str, body: bytes | None, headers: Mapping[str, str] | None) -> str:
    """The Lua script that makes wrk send `method` with `body` and `headers`, and print a `BENCH {json}` line."""
    script = f"wrk.method = {lua_string(method)}\n"
    if body is not None:
        script += f"wrk.body = {lua_string(body)}\n"
        script += 'wrk.headers["Content-Type"] = "application/json"\n'
    for name, value in (headers or {}).items():
        script += f"wrk.headers[{lua_string(name)}] = {lua_string(value)}\n"
    return script + WRK_DONE


def _run_wrk(
    port: int,
    path: str,
    *,
    method: str,
    body: bytes | None,
    connections: int,
    duration_s: float,
    headers: Mapping[str, str] | None,
) -> LoadResult:
    wrk = wrk_path()
    if wrk is None:
        raise RuntimeError("wrk is not installed")
    script = wrk_script(method, body, headers)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "-s", handle.name]
        done = subprocess.run(
            [*argv, f"http://{HOST}:{port}{path}"], capture_output=True, text=True, timeout=duration_s + 60, check=False
        )
    finally:
        os.unlink(handle.name)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH "):
            data = json.loads(line[6:])
            return LoadResult(
                tool="wrk",
                requests=data["requests"],
                non2xx=data["non2xx"],
                errors=data["errors"],
                seconds=data["duration_us"] / 1e6,
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
            )
    raise RuntimeError(f"wrk printed no summary (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")


def run_loadgen(
    port: int,
    path: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    connections: int = 16,
    duration_s: float = 0.0,
    count: int = 0,
    headers: Mapping[str, str] | None = None,
) -> LoadResult:
    """Our own load generator (`loadgen.py`) in a separate process: by duration, or until `count` requests."""
    spec = {
        "port": port,
        "path": path,
        "method": method,
        "body": None if body is None else body.decode(),
        "headers": dict(headers or {}),
        "connections": connections,
        "duration_s": duration_s,
        "count": count,
    }
    limit = (duration_s or 600.0) + 60
    done = subprocess.run(
        [PYTHON, str(BENCH_DIR / "loadgen.py"), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=limit,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}):\n{done.stderr[-3000:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return LoadResult(tool="python", **data)


# --- a minimal keep-alive HTTP/1.1 client over asyncio streams ----------------------------------------------


class RawConnection:
    """One keep-alive HTTP/1.1 connection; requests one at a time, bodies framed by Content-Length only."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        reader, writer = await asyncio.open_connection(HOST, port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    @staticmethod
    def build(method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None) -> bytes:
        """The bytes of one request (built once per kind of request by callers that repeat it)."""
        head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n"
        for name, value in (headers or {}).items():
            if "\r" in name + value or "\n" in name + value:
                raise ValueError(f"header {name!r} has a line break")
            head += f"{name}: {value}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return (head + "\r\n").encode() + (body or b"")

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Sends one prepared request; returns (status, body)."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = -1
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
                break
        if length < 0:
            raise RuntimeError("response without Content-Length")
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (the server runs on it), asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
