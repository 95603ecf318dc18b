"""Webhook deliveries per second to a local receiver, and what webhooks cost trivial-job throughput.

A real `conveyor serve` (SQLite, fresh data directory, `CONVEYOR_NET__ALLOW_CIDRS=127.0.0.0/8` so that a
loopback receiver is allowed) and a fast receiver in its own process (`receiver_app.py`: a bare asyncio
protocol on uvloop that answers 200 at once and counts each request with its time and `webhook-id`, and the
connections opened, which shows whether the sender keeps its connections alive):
  1. deliveries/s, two ways, each with N jobs of the demo `greeting` recipe carrying one webhook
     (`POST http://127.0.0.1:<port>/hook`), submitted by `loadgen.py` over 16 connections:
     - live: deliveries go out while the jobs are submitted and run; delivered ÷ (first delivery → last
       delivery) at the receiver. Bounded by how fast jobs finish;
     - backlog: the receiver is paused (SIGSTOP) while the N jobs run, so the outbox fills (the dispatcher's
       first attempts wait on the paused receiver; the attempt timeout is raised for the run so that none
       times out), then resumed (SIGCONT); delivered ÷ (first delivery → last delivery): the dispatcher's own
       rate. The target is judged on this one.
  2. the same 16-connection load as `http_throughput.py` (wrk `-t1 -c16`, or `loadgen.py`) of `POST
     /api/v1/jobs`, without webhooks and with one webhook each, in alternating rounds on the same server;
     jobs/s = jobs finished ÷ (first job's creation → last job's finish), from the store, as there; each
     round waits (bounded) until every job is terminal and every delivery settled, and the server's CPU over
     the whole round, deliveries included, is divided by the jobs finished. Target: jobs with a webhook reach
     at least 90 % of the jobs/s without (median of the per-round ratios).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from common import (
    BENCH_DIR,
    JOB_BODY,
    PYTHON,
    CpuWatch,
    ServerProcess,
    conveyor_server,
    free_port,
    job_counts,
    job_span,
    json_out,
    request,
    table,
    wait_until_idle,
)
from load import HOST, run_load, run_loadgen

TARGET_DELIVERIES_PER_S = 1000.0
TARGET_RATIO = 0.90
CONNECTIONS = 16
SERVER_ENV = {
    "CONVEYOR_NET__ALLOW_CIDRS": "127.0.0.0/8",
    # A paused receiver must not turn first attempts into timeouts and retries in the backlog measurement.
    "CONVEYOR_WEBHOOKS__ATTEMPT_TIMEOUT_S": "300",
}


def webhook_body(receiver_port: int) -> bytes:
    """The trivial job's body with one webhook to the receiver."""
    job = orjson.loads(JOB_BODY)
    job["webhooks"] = [{"url": f"http://{HOST}:{receiver_port}/hook", "method": "POST"}]
    return orjson.dumps(job)


@contextlib.contextmanager
def receiver() -> Iterator[ServerProcess]:
    """`receiver_app.py` on a free loopback port."""
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-receiver-") as tmp:
        port = free_port()
        server = ServerProcess(
            [PYTHON, str(BENCH_DIR / "receiver_app.py"), str(port)],
            env=dict(os.environ),
            port=port,
            health="/health",
            log=Path(tmp) / "log",
        )
        with server:
            yield server


def receiver_stats(hook: ServerProcess) -> dict[str, Any]:
    status, body = request(hook.port, "GET", "/stats")
    if status != 200:
        raise RuntimeError(f"the receiver's stats answered {status}")
    return dict(body)


def reset_receiver(hook: ServerProcess) -> None:
    request(hook.port, "POST", "/reset", body=b"{}")


def outbox_counts(data_dir: Path) -> dict[str, int]:
    """Deliveries in each state, read from the server's SQLite file (read-only)."""
    conn = sqlite3.connect(f"file:{data_dir / 'conveyor.db'}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT state, COUNT(*) FROM webhook_deliveries GROUP BY state").fetchall()
    finally:
        conn.close()
    return {"pending": 0, "succeeded": 0, "failed": 0, **{str(s): int(n) for s, n in rows}}


def wait_deliveries_settled(data_dir: Path, timeout_s: float) -> dict[str, int]:
    """Polls (bounded) until no delivery is pending; returns the outbox's counts then."""
    deadline = time.monotonic() + timeout_s
    counts = outbox_counts(data_dir)
    while counts["pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
        counts = outbox_counts(data_dir)
    return counts


def wait_received(hook: ServerProcess, count: int, timeout_s: float) -> dict[str, Any]:
    """Polls the receiver (bounded) until it has counted `count` requests, or stops counting more."""
    deadline = time.monotonic() + timeout_s
    stats = receiver_stats(hook)
    while stats["count"] < count and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = receiver_stats(hook)
    return stats


# --- 1. deliveries per second -------------------------------------------------------------------------------


def _deliveries(server: ServerProcess, data_dir: Path, hook: ServerProcess, jobs: int, paused: bool) -> dict[str, Any]:
    reset_receiver(hook)
    before = outbox_counts(data_dir)
    watch = CpuWatch(server.pid).start()
    if paused:
        os.kill(hook.pid, signal.SIGSTOP)
    try:
        submit = run_loadgen(
            server.port, "/api/v1/jobs", method="POST", body=webhook_body(hook.port), connections=CONNECTIONS,
            count=jobs, headers=server.headers,
        )  # fmt: skip
        wait_until_idle(server, timeout_s=max(60.0, jobs / 50))
        backlog = outbox_counts(data_dir)["pending"] - before["pending"]
    finally:
        if paused:
            os.kill(hook.pid, signal.SIGCONT)
    expected = submit.ok
    stats = wait_received(hook, expected, timeout_s=max(60.0, expected / 50))
    settled = wait_deliveries_settled(data_dir, timeout_s=60.0)
    cpu = watch.stop()
    seconds = max((stats["last_ms"] or 0) - (stats["first_ms"] or 0), 1.0) / 1000
    delivered = int(stats["count"])
    return {
        "mode": "backlog" if paused else "live",
        "jobs": jobs,
        "submitted": submit.ok,
        "submit_rps": submit.rps,
        "backlog": backlog,
        "delivered": delivered,
        "unique_ids": int(stats["unique_ids"]),
        "connections": int(stats["connections"]),
        "seconds": seconds,
        "deliveries_per_s": delivered / seconds,
        "succeeded": settled["succeeded"] - before["succeeded"],
        "failed": settled["failed"] - before["failed"],
        "left_pending": settled["pending"],
        "server_cpu_us": cpu["server_s"] / max(delivered, 1) * 1e6,
        "others_cpu": cpu["others_s"] / cpu["wall_s"],
    }


# --- 2. the machinery's cost on trivial-job throughput ------------------------------------------------------


def _jobs_round(
    server: ServerProcess, data_dir: Path, body: bytes, duration_s: float, tool: str, hook: ServerProcess
) -> dict[str, Any]:
    reset_receiver(hook)
    since_ms = int(time.time() * 1000)
    before = outbox_counts(data_dir)
    watch = CpuWatch(server.pid).start()
    load = run_load(
        server.port, "/api/v1/jobs", method="POST", body=body, connections=CONNECTIONS, duration_s=duration_s,
        tool=tool, headers=server.headers,
    )  # fmt: skip
    after = wait_until_idle(server, timeout_s=max(60.0, duration_s * 10))
    settled = wait_deliveries_settled(data_dir, timeout_s=max(60.0, duration_s * 10))
    cpu = watch.stop()
    span = job_span(data_dir, since_ms)
    return {
        "tool": load.tool,
        "submit_rps": load.rps,
        "rejected": load.non2xx,
        "finished": span.finished,
        "jobs_per_s": span.finished / span.seconds,
        "left_unfinished": after["pending"] + after["running"],
        "deliveries": settled["succeeded"] - before["succeeded"],
        "received": int(receiver_stats(hook)["count"]),
        "server_cpu_us": cpu["server_s"] / max(span.finished, 1) * 1e6,
        "others_cpu": cpu["others_s"] / cpu["wall_s"],
    }


def run(jobs: int = 5000, rounds: int = 3, duration_s: float = 4.0, tool: str = "auto") -> dict[str, Any]:
    """Measures deliveries/s (live, then from a backlog), then plain and webhook jobs in alternating rounds."""
    figures: dict[str, Any] = {
        "jobs": jobs,
        "rounds": rounds,
        "duration_s": duration_s,
        "connections": CONNECTIONS,
        "target_deliveries_per_s": TARGET_DELIVERIES_PER_S,
        "target_ratio": TARGET_RATIO,
        "plain": [],
        "webhook": [],
    }
    with receiver() as hook, conveyor_server(dict(SERVER_ENV)) as (server, data_dir):
        body = webhook_body(hook.port)
        for warm in (JOB_BODY, body):  # warm-ups: lazy imports, the HTTP client's pool, the receiver
            run_load(
                server.port, "/api/v1/jobs", method="POST", body=warm, connections=CONNECTIONS, duration_s=1,
                tool=tool, headers=server.headers,
            )  # fmt: skip
        wait_until_idle(server, timeout_s=60)
        wait_deliveries_settled(data_dir, timeout_s=60)
        figures["live"] = _deliveries(server, data_dir, hook, jobs, paused=False)
        figures["drain"] = _deliveries(server, data_dir, hook, jobs, paused=True)
        for _ in range(rounds):
            figures["plain"].append(_jobs_round(server, data_dir, JOB_BODY, duration_s, tool, hook))
            figures["webhook"].append(_jobs_round(server, data_dir, body, duration_s, tool, hook))
        figures["failed_deliveries"] = outbox_counts(data_dir)["failed"]
        figures["totals"] = job_counts(server)
    ratios = [w["jobs_per_s"] / p["jobs_per_s"] for p, w in zip(figures["plain"], figures["webhook"], strict=True)]
    figures["tool"] = figures["plain"][0]["tool"]
    figures["ratios"] = ratios
    figures["ratio"] = statistics.median(ratios)
    figures["plain_jobs_per_s"] = statistics.median(r["jobs_per_s"] for r in figures["plain"])
    figures["webhook_jobs_per_s"] = statistics.median(r["jobs_per_s"] for r in figures["webhook"])
    figures["plain_cpu_us"] = statistics.median(r["server_cpu_us"] for r in figures["plain"])
    figures["webhook_cpu_us"] = statistics.median(r["server_cpu_us"] for r in figures["webhook"])
    figures["deliveries_per_s"] = figures["drain"]["deliveries_per_s"]
    figures["passed_deliveries"] = figures["deliveries_per_s"] >= TARGET_DELIVERIES_PER_S
    figures["passed_ratio"] = figures["ratio"] >= TARGET_RATIO
    return figures


def _verdict(passed: bool) -> str:
    return "pass" if passed else "**MISS**"


def render(figures: dict[str, Any]) -> str:
    live, drain = figures["live"], figures["drain"]

    def delivery_row(what: str, d: dict[str, Any], target: str, verdict: str) -> tuple[str, ...]:
        return (
            what,
            f"{d['deliveries_per_s']:,.0f} deliveries/s",
            f"{d['delivered']:,} received ({d['unique_ids']:,} distinct ids, over {d['connections']:,} connections) "
            f"in {d['seconds']:.2f} s; "
            f"{d['succeeded']:,} succeeded, {d['failed']} failed, {d['left_pending']} pending; "
            f"server CPU {d['server_cpu_us']:,.0f} µs per job + delivery",
            target,
            verdict,
        )

    def each(rows: list[dict[str, Any]], key: str, fmt: str) -> str:
        return " / ".join(format(r[key], fmt) for r in rows)

    rows = [
        delivery_row(
            f"deliveries/s from a backlog ({drain['backlog']:,} pending when the receiver was resumed)",
            drain,
            f"≥ {figures['target_deliveries_per_s']:,.0f}/s",
            _verdict(figures["passed_deliveries"]),
        ),
        delivery_row(
            f"deliveries/s live, while {live['jobs']:,} jobs are submitted ({live['submit_rps']:,.0f}/s) and run",
            live,
            "",
            "",
        ),
        (
            "trivial jobs/s without webhooks",
            f"{figures['plain_jobs_per_s']:,.0f} jobs/s",
            f"each round {each(figures['plain'], 'jobs_per_s', ',.0f')}; server CPU µs per job "
            f"{each(figures['plain'], 'server_cpu_us', ',.0f')}",
            "",
            "",
        ),
        (
            "trivial jobs/s with one webhook each",
            f"{figures['webhook_jobs_per_s']:,.0f} jobs/s",
            f"each round {each(figures['webhook'], 'jobs_per_s', ',.0f')}; server CPU µs per job, its delivery "
            f"included {each(figures['webhook'], 'server_cpu_us', ',.0f')}",
            "",
            "",
        ),
        (
            "**with webhook ÷ without**",
            f"**{figures['ratio']:.0%}**",
            "each round " + " / ".join(f"{r:.0%}" for r in figures["ratios"]),
            f"≥ {figures['target_ratio']:.0%}",
            _verdict(figures["passed_ratio"]),
        ),
    ]
    out = table(
        f"Webhooks: {figures['jobs']:,} jobs per delivery measurement; {figures['connections']} connections, "
        f"{figures['duration_s']:g} s per jobs measurement, {figures['rounds']} rounds, load by {figures['tool']}",
        rows,
        ("what", "median", "details", "target", "result"),
    )
    webhook_rounds = figures["webhook"]
    received = sum(r["received"] for r in webhook_rounds)
    finished = sum(r["finished"] for r in webhook_rounds)
    others = " / ".join(f"{r['others_cpu']:.0%}" for r in figures["plain"] + webhook_rounds)
    out += (
        f"\nIn the rounds with webhooks {finished:,} jobs finished and the receiver counted {received:,} "
        f"deliveries; {figures['failed_deliveries']} deliveries failed over the whole run. Server CPU per job is "
        f"{figures['plain_cpu_us']:,.0f} µs without a webhook and {figures['webhook_cpu_us']:,.0f} µs with one "
        f"(medians). Others' CPU each round (plain rounds, then webhook rounds): {others}.\n"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000, help="jobs (one webhook each) per deliveries measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of jobs without and with webhooks")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of load per jobs measurement")
    parser.add_argument("--tool", choices=("auto", "wrk", "python"), default="auto", help="load generator")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = run(jobs=max(1, args.jobs), rounds=max(1, args.rounds), duration_s=args.duration, tool=args.tool)
    print(render(figures))
    json_out(args.json, figures)


if __name__ == "__main__":
    main()
