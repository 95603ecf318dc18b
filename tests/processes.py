"""A real `conveyor serve` in a subprocess on a free loopback port, stopped by its own pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """Stops a process we started: SIGTERM, then SIGKILL past `timeout_s`; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


class ServerProcess:
    """`python -m conveyor serve` with its own data directory (or a shared one) and environment."""

    def __init__(self, data_dir: Path, *, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "CONVEYOR_HOST": "127.0.0.1",
            "CONVEYOR_PORT": str(self.port),
            "CONVEYOR_DATA_DIR": str(data_dir),
            "CONVEYOR_EXECUTOR__POLL_INTERVAL_S": "0.2",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"server-{self.port}.log"

    def start(self, timeout_s: float = 30.0) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "conveyor", "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout_s} s: {self.log.read_text()[-2000:]}")

    def kill9(self) -> None:
        """Kills the server with SIGKILL, as a crash would."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, 20.0)

    def token(self, *args: str) -> str:
        """A token made by `conveyor token` on this server's data directory (default: admin, `manage all`)."""
        argv = [sys.executable, "-m", "conveyor", "token", *(args or ("manage", "all", "3600000"))]
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60, check=True)
        return done.stdout.strip().splitlines()[-1]

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        """A client sending `token` (default: a fresh admin `manage all` token)."""
        headers = {"Authorization": f"Bearer {token or self.token()}"}
        return httpx.Client(base_url=self.url, timeout=30.0, headers=headers, **kwargs)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WorkerProcess:
    """`python -m conveyor worker` with the environment given (database, broker, data directory)."""

    def __init__(self, log_dir: Path, env: dict[str, str], *, concurrency: int = 4, grace_s: float = 5.0) -> None:
        self.env = {**os.environ, **env}
        self.argv = [
            sys.executable, "-m", "conveyor", "worker", f"--concurrency={concurrency}", f"--grace={grace_s}",
        ]  # fmt: skip
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None

    def start(self, timeout_s: float = 60.0) -> WorkerProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log = self.log_dir / f"worker-{time.monotonic_ns()}.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        # Ready once Celery says so: jobs sent before then wait in the broker anyway.
        wait_for(lambda: self._ready(), timeout_s=timeout_s, interval_s=0.1)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None and self.log is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
        return " ready." in self.log.read_text(errors="replace")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (Celery's warm shutdown), then SIGKILL past `timeout_s`; the exit code."""
        if self.proc is None:
            return None
        return terminate(self.proc, timeout_s)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log is not None else ""

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(check: Any, timeout_s: float = 20.0, interval_s: float = 0.05) -> Any:
    """Calls `check()` until it returns something truthy (bounded); returns that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s")
