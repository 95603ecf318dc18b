"""What the benchmarks share: server subprocesses, job counts, CPU accounting, RSS, machine facts, tables.

Every process started here is stopped by its own pid; every wait is bounded by time; every address is
loopback. The HTTP load itself is in `load.py`. A Conveyor server answers 401 on every route but health
without a bearer token: `conveyor_server` mints one with `conveyor token` and hands it out on the server
object (`server.headers`); every helper that calls a protected route takes that object or those headers.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from load import HOST, wrk_path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
PYTHON = sys.executable
JOB_BODY = b'{"recipe":"greeting","inputs":{"text":"bench"}}'
TERMINAL = ("succeeded", "failed", "cancelled")
# The benchmark's token: `manage all` (every route), valid for a day, longer than any run.
TOKEN_ARGV = ("token", "manage", "all", "86400000")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# --- a tiny blocking HTTP client for control calls (not for load) ---------------------------------------------


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    timeout_s: float = 10.0,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any]:
    """One HTTP request on a fresh connection; returns (status, parsed JSON body or None)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        sent = dict(headers or {})
        if body is not None:
            sent["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        raw = response.read()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        return response.status, data
    finally:
        conn.close()


# --- server subprocesses ------------------------------------------------------------------------------------


class ServerProcess:
    """A server in its own process, on a free loopback port, with its output in a log file.

    `token` is the bearer token its protected routes want (None for a server without authentication).
    """

    def __init__(self, argv: Sequence[str], *, env: dict[str, str], port: int, health: str, log: Path) -> None:
        self.argv = list(argv)
        self.env = env
        self.port = port
        self.health = health
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.token: str | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def headers(self) -> dict[str, str]:
        """The headers a request to a protected route carries: the bearer token, or none."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def start(self, timeout_s: float = 60.0) -> ServerProcess:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError):
                if request(self.port, "GET", self.health, timeout_s=1.0)[0] == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout_s} s:\n{self.tail()}")

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def rss_bytes(self) -> int:
        """The server's resident set size, from /proc (psutil when /proc is not there)."""
        status = Path(f"/proc/{self.pid}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        import psutil

        return int(psutil.Process(self.pid).memory_info().rss)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# `conveyor serve` under cProfile, switched on by SIGUSR1 and dumped by SIGUSR2 (the main thread only), with every
# SQLite statement timed on the way (a profile shows time inside sqlite3 calls but not which SQL it was).
PROFILED_SERVE = """
import cProfile, collections, json, signal, sys, time
out = sys.argv[1]
profiler = cProfile.Profile()
sql = collections.defaultdict(list)
recording = False

class TimedConnection:
    def __init__(self, conn):
        self._conn = conn
    def _timed(self, method, text, *args):
        started = time.perf_counter()
        try:
            return getattr(self._conn, method)(text, *args)
        finally:
            if recording:
                key = ("many: " if method == "executemany" else "") + " ".join(text.split())
                sql[key].append(time.perf_counter() - started)
    def execute(self, text, *args):
        return self._timed("execute", text, *args)
    def executemany(self, text, *args):
        return self._timed("executemany", text, *args)
    def __getattr__(self, name):
        return getattr(self._conn, name)

try:
    from conveyor.store.db import SqliteDatabase
    plain_connect = SqliteDatabase.connect
    async def timed_connect(self):
        await plain_connect(self)
        self._conn = TimedConnection(self._conn)
    SqliteDatabase.connect = timed_connect
except (ImportError, AttributeError):
    pass

def start(*_):
    global recording
    sql.clear()
    recording = True
    profiler.enable()

def stop(*_):
    global recording
    profiler.disable()
    recording = False
    with open(out + ".sql.json", "w") as handle:
        json.dump(sql, handle)
    profiler.dump_stats(out)

signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
from conveyor.cli import main
sys.argv = ["conveyor", "serve"]
main()
"""


def mint_token(env: Mapping[str, str], timeout_s: float = 60.0) -> str:
    """A `manage all` JWT from `python -m conveyor token` run with the server's environment (its data directory
    holds the signing secret and the admin user); the CLI prints the token alone on its last line."""
    argv = [PYTHON, "-m", "conveyor", *TOKEN_ARGV]
    try:
        done = subprocess.run(
            argv, env=dict(env), cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"`conveyor token` did not finish within {timeout_s} s") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or lines[-1].count(".") != 2:
        output = f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        raise RuntimeError(f"`conveyor token` failed ({done.returncode}):\n{output}")
    return lines[-1].strip()


@contextlib.contextmanager
def conveyor_server(
    env: dict[str, str] | None = None, *, profile_to: Path | None = None
) -> Iterator[tuple[ServerProcess, Path]]:
    """`python -m conveyor serve` on SQLite in a fresh temporary data directory (demo recipes seeded).

    The yielded server carries a `manage all` token minted once it answers (`server.token`, `server.headers`).
    With `profile_to`, the server runs under cProfile (see `PROFILED_SERVE`); the profile is written there.
    """
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        port = free_port()
        full_env = {
            **os.environ,
            "CONVEYOR_HOST": HOST,
            "CONVEYOR_PORT": str(port),
            "CONVEYOR_DATA_DIR": str(data_dir),
            "CONVEYOR_LOG_LEVEL": "warning",
            # A backlog must not turn into 429s: the figure is about throughput, not the queue bound.
            "CONVEYOR_LIMITS__MAX_PENDING_JOBS": "10000000",
            **(env or {}),
        }
        argv = [PYTHON, "-m", "conveyor", "serve"]
        if profile_to is not None:
            argv = [PYTHON, "-c", PROFILED_SERVE, str(profile_to)]
        server = ServerProcess(argv, env=full_env, port=port, health="/api/v1/health", log=Path(tmp) / "log")
        with server:
            server.token = mint_token(full_env)
            yield server, data_dir


@contextlib.contextmanager
def hello_server() -> Iterator[ServerProcess]:
    """The hello-world FastAPI app on the same uvicorn options as `conveyor serve`."""
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-hello-") as tmp:
        port = free_port()
        server = ServerProcess(
            [PYTHON, str(BENCH_DIR / "hello_app.py"), str(port)],
            env=dict(os.environ),
            port=port,
            health="/hello",
            log=Path(tmp) / "log",
        )
        with server:
            yield server


# --- jobs as the store sees them ----------------------------------------------------------------------------


def job_counts(server: ServerProcess, states: Sequence[str] = ("pending", "running", *TERMINAL)) -> dict[str, int]:
    """How many jobs are in each of `states`, through the API's list totals (with the server's token)."""
    counts = {}
    for state in states:
        status, body = request(server.port, "GET", f"/api/v1/jobs?state={state}&limit=1", headers=server.headers)
        if status != 200:
            raise RuntimeError(f"listing {state} jobs answered {status}: {body}")
        counts[state] = int(body["total"])
    return counts


def wait_until_idle(server: ServerProcess, timeout_s: float) -> dict[str, int]:
    """Polls until no job is pending or running (bounded); returns the counts of every state then."""
    deadline = time.monotonic() + timeout_s
    while sum(job_counts(server, ("pending", "running")).values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return job_counts(server)


@dataclass(frozen=True, slots=True)
class JobSpan:
    """Jobs that reached a terminal state, and the wall time from the first submit to the last finish."""

    finished: int
    succeeded: int
    first_created_ms: int
    last_finished_ms: int

    @property
    def seconds(self) -> float:
        return max(self.last_finished_ms - self.first_created_ms, 1) / 1000


def job_span(data_dir: Path, since_ms: int = 0) -> JobSpan:
    """Reads the server's SQLite file (read-only) for the jobs created at or after `since_ms`."""
    uri = f"file:{data_dir / 'conveyor.db'}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=5)
    try:
        row = conn.execute(
            "SELECT COUNT(*), SUM(state = 'succeeded'), MIN(created_at), MAX(finished_at) FROM jobs "
            "WHERE created_at >= ? AND finished_at IS NOT NULL",
            (since_ms,),
        ).fetchone()
    finally:
        conn.close()
    return JobSpan(int(row[0] or 0), int(row[1] or 0), int(row[2] or 0), int(row[3] or 0))


# --- CPU accounting: the server's, the load tool's, and everybody else's on the machine ------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (from /proc; psutil where there is no /proc)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def machine_busy_seconds() -> tuple[float, float]:
    """CPU seconds all cores have run something since boot, and seconds the hypervisor stole."""
    stat = Path("/proc/stat")
    if stat.exists():
        values = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
        tick = os.sysconf("SC_CLK_TCK")
        return (user + nice + system + irq + softirq) / tick, steal / tick
    import psutil

    times = psutil.cpu_times()
    return float(times.user + times.system), 0.0


def _own_and_children_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished load-tool runs
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class CpuWatch:
    """CPU used between `start()` and `stop()`: by one server, by us and our finished children, by the rest.

    "The rest" is other people's work on a shared machine; when it is large the figures of that run are low.
    """

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid  # None: no server, only us (an in-process benchmark)
        self._start: tuple[float, ...] = ()

    def _sample(self) -> tuple[float, ...]:
        busy, steal = machine_busy_seconds()
        server = 0.0 if self.pid is None else cpu_seconds(self.pid)
        return time.monotonic(), server, _own_and_children_seconds(), busy, steal

    def start(self) -> CpuWatch:
        self._start = self._sample()
        return self

    def stop(self) -> dict[str, float]:
        """Seconds of wall time, of our server's CPU, of ours and our children's, of others', and stolen."""
        wall, server, ours, busy, steal = (b - a for a, b in zip(self._start, self._sample(), strict=True))
        return {
            "wall_s": wall,
            "server_s": server,
            "bench_s": ours,
            "others_s": max(0.0, busy - server - ours),
            "steal_s": steal,
        }


# --- statistics, machine facts and tables -------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """The `pct` percentile by the nearest-rank method (values need not be sorted)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    facts = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(terse=True),
    }
    with contextlib.suppress(ImportError):
        import uvloop

        facts["uvloop"] = str(getattr(uvloop, "__version__", "?"))
    wrk = wrk_path()
    if wrk:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10, check=False)
            facts["wrk"] = (out.stdout or out.stderr).split("[")[0].replace("wrk", "").strip()
    return facts


def table(title: str, rows: Sequence[Sequence[str]], header: Sequence[str] = ("figure", "value")) -> str:
    """A Markdown table (it reads fine in a terminal too)."""
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def json_out(path: str | None, data: Any) -> None:
    """Writes a script's figures as JSON for `run_all.py` (when it asked for them)."""
    if path:
        Path(path).write_text(json.dumps(data, indent=2))
