"""Shared fixtures: real SQLite and PostgreSQL databases, a real server on loopback, an HTTP client.

PostgreSQL comes from the `pgserver` package (PostgreSQL 16 bundled), started once per test session;
each test gets its own database cloned from a migrated template. `CONVEYOR_TEST_DATABASE_URL` points the
suite at an existing server instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from conveyor.settings import Settings
from conveyor.store.db import Database, open_database
from conveyor.store.migrate import upgrade

BACKENDS = ["sqlite", "postgres"]
DEPLOYMENTS = ["embedded", "distributed"]


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A PostgreSQL server for the session: the configured one, or one started from `pgserver`."""
    configured = os.environ.get("CONVEYOR_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    import pgserver

    root = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
    os.chmod(root, 0o777)  # as root, pgserver runs PostgreSQL as its own system user
    server = pgserver.get_server(root, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def _with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    base, sep, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}{sep}{query}"


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: str) -> str:
    """A database migrated once, cloned for every test that needs PostgreSQL."""
    import psycopg

    name = f"conveyor_template_{secrets.token_hex(4)}"
    with psycopg.connect(_psycopg_url(pg_admin_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    upgrade(_with_database(pg_admin_url, name))
    return name


def _psycopg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture
def pg_url(pg_admin_url: str, pg_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test."""
    import psycopg

    name = f"conveyor_test_{secrets.token_hex(6)}"
    with psycopg.connect(_psycopg_url(pg_admin_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    try:
        yield _with_database(pg_admin_url, name)
    finally:
        with psycopg.connect(_psycopg_url(pg_admin_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated database of each back end: SQLite in `tmp_path`, and PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'data' / 'conveyor.db'}"
        upgrade(url)
        return url
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A connected `Database` on `database_url` (each back end), closed after the test."""
    database = open_database(database_url)
    await database.connect()
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str) -> Any:
    """Builds `Settings` on the test's database and data directory, with overrides."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "database": {"url": database_url},
            "executor": {"poll_interval_s": 0.2, "renew_interval_s": 0.5, "lease_s": 5.0},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key] = values[key] | value
            else:
                values[key] = value
        return Settings(**values)

    return make


class LiveServer:
    """A Conveyor app served by uvicorn on 127.0.0.1 inside the test's event loop; in distributed mode
    (`executor.kind = celery`) with a real Celery worker in the same process (`tests/celery_worker.py`)."""

    def __init__(self, settings: Settings, *, worker: bool = True) -> None:
        """`worker=False`: no in-process worker in distributed mode (the test starts `conveyor worker`s)."""
        from conveyor.app import create_app

        self.settings = settings
        self.with_worker = worker
        self._worker = contextlib.ExitStack()
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, loop="none", lifespan="on", log_level="warning")
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None
        self.url = ""

    async def __aenter__(self) -> LiveServer:
        if self.settings.executor.kind == "celery" and self.with_worker:
            from tests.celery_worker import in_process_worker

            self._worker.enter_context(in_process_worker(self.settings))
        self.task = asyncio.create_task(self.server.serve())
        for _ in range(500):
            if self.server.started or self.task.done():
                break
            await asyncio.sleep(0.01)
        if not self.server.started:
            if self.task.done():
                self.task.result()
            raise RuntimeError("server did not start")
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        try:
            if self.task is not None:
                await asyncio.wait_for(self.task, timeout=30)
        finally:
            await asyncio.to_thread(self._worker.close)

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    async def token(
        self,
        user: str | None = None,
        *,
        action: str = "manage",
        subject: str = "all",
        recipes: Sequence[str] = (),
        expires_in_ms: int = 3_600_000,
    ) -> str:
        """A real token from the server's own auth service; `user` is created (not admin) when missing."""
        from conveyor.auth.tokens import make_scope
        from conveyor.errors import NotFoundError

        auth = self.runtime.auth
        name = user or self.settings.auth.admin_name
        try:
            row = await auth.get_user(name)
        except NotFoundError:
            row = await auth.create_user(name)
        issued = await auth.issue_token(row, [make_scope(action, subject, recipes)], expires_in_ms)
        return str(issued.token)

    async def authed_client(self, token: str | None = None, **kwargs: Any) -> Any:
        """An httpx client that sends `token` (default: an admin `manage all` token); close it (`async with`)."""
        import httpx

        token = token or await self.token()
        kwargs.setdefault("timeout", 30.0)
        return httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, **kwargs)


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Valkey server for the session (`CONVEYOR_TEST_REDIS_URL` points at an existing one instead)."""
    configured = os.environ.get("CONVEYOR_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    from tests.valkey import ValkeyProcess

    broker = ValkeyProcess(tmp_path_factory.mktemp("valkey")).start()
    try:
        yield broker.url
    finally:
        broker.stop()


@pytest.fixture
def fresh_broker(broker_url: str) -> str:
    """The session's broker, emptied: no task or lock of an earlier test is left in it."""
    import redis

    with redis.Redis.from_url(broker_url) as conn:
        conn.flushdb()
    return broker_url


@pytest.fixture(params=DEPLOYMENTS)
def deployment(request: pytest.FixtureRequest) -> str:
    """`embedded` (the local executor in the server) or `distributed` (Celery workers on Valkey; PostgreSQL)."""
    return str(request.param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Distributed mode runs on PostgreSQL only: its SQLite variant is not collected."""
    kept, dropped = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        values = params.params if params is not None else {}
        if values.get("deployment") == "distributed" and values.get("database_url") == "sqlite":
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture
def server_settings(make_settings: Any, deployment: str, request: pytest.FixtureRequest) -> Any:
    """Like `make_settings`, for a server of each deployment: embedded (SQLite, PostgreSQL) and distributed
    (PostgreSQL, Valkey, a Celery worker started by `LiveServer`)."""

    def make(**overrides: Any) -> Settings:
        if deployment == "distributed":
            celery = {"broker_url": request.getfixturevalue("fresh_broker"), "sweep_interval_s": 0.5}
            overrides = {
                **overrides,
                "executor": {**overrides.get("executor", {}), "kind": "celery"},
                "celery": {**celery, "redispatch_after_s": 2.0, **overrides.get("celery", {})},
            }
        settings: Settings = make_settings(**overrides)
        return settings

    return make


@pytest.fixture
async def server(server_settings: Any) -> AsyncIterator[LiveServer]:
    """A real server on loopback: on SQLite and on PostgreSQL, and in distributed mode (PostgreSQL, Valkey, a
    Celery worker)."""
    async with LiveServer(server_settings()) as live:
        yield live


@pytest.fixture
async def client(server: LiveServer) -> AsyncIterator[Any]:
    import httpx

    # The admin with a `manage all` token: the tests of the native API before auth existed act as the admin.
    token = await server.token()
    async with httpx.AsyncClient(
        base_url=server.url, timeout=30.0, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        yield http


@pytest.fixture
async def receiver() -> AsyncIterator[Any]:
    """A real HTTP receiver on 127.0.0.1 (`tests/receiver.py`), for webhooks and outbound requests."""
    from tests.receiver import Receiver

    rec = Receiver()
    await rec.start()
    try:
        yield rec
    finally:
        await rec.close()
