"""Fixtures for the store tests: a migrated SQLite database, a blob directory, a file service, a loopback web server."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conveyor.net import GuardedClient
from conveyor.settings import LimitsSettings, NetSettings
from conveyor.store.blobs import LocalBlobStore
from conveyor.store.db import SqliteDatabase
from conveyor.store.files import FileService
from conveyor.store.migrate import upgrade


@pytest.fixture
async def file_db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    path = tmp_path / "c.db"
    upgrade(f"sqlite:///{path}")
    database = SqliteDatabase(path)
    await database.connect()
    yield database
    await database.close()


@pytest.fixture
def blob_store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "files")


@pytest.fixture
async def loopback_http() -> AsyncIterator[GuardedClient]:
    """The guarded client with loopback opened, so it can reach the test server."""
    async with GuardedClient(NetSettings(allow_cidrs=["127.0.0.0/8"])) as client:
        yield client


@pytest.fixture
def file_service(file_db: SqliteDatabase, blob_store: LocalBlobStore, loopback_http: GuardedClient) -> FileService:
    return FileService(file_db, blob_store, loopback_http, LimitsSettings())


@dataclass
class WebServer:
    """A loopback HTTP server answering fixed responses by path."""

    base: str = ""
    routes: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)

    def add(self, path: str, body: bytes, *, content_type: str = "application/octet-stream", status: int = 200) -> str:
        self.routes[path] = (status, {"Content-Type": content_type}, body)
        return self.base + path


@pytest.fixture
def web_server() -> Iterator[WebServer]:
    server_state = WebServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, headers, body = server_state.routes.get(self.path, (404, {}, b"not found"))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    server_state.base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield server_state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
