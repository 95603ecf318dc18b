"""Trivial jobs per second end to end over HTTP at concurrency 16, beside hello world on the same stack.

Both servers run side by side and are measured in turns, round after round, with the same load tool (wrk
when installed, else `loadgen.py`), connections and duration, the load always in a process of its own:
  1. hello world: FastAPI + uvicorn (uvloop, httptools, no access log) in `hello_app.py`, `GET /hello`; and
     on the same app `POST /echo` with a job-shaped body validated by pydantic (the framework's floor for a
     submit, no database);
  2. `GET /api/v1/health` on a real `conveyor serve` (SQLite, fresh data directory, demo recipes seeded);
  3. `POST /api/v1/jobs` of the demo `greeting` recipe on that server, then a bounded wait until every job is
     terminal. jobs/s = jobs finished ÷ (first job's creation → last job's finish), read from the store.
Every jobs request carries the server's bearer token (minted with `conveyor token manage all` before any
load); health and hello world need none and get none. Each figure is the median over the rounds; the ratio
is taken within each round, then its median. The queue bound is raised for the run so that a backlog shows
as fewer jobs/s, not as 429s. Server CPU per request and the CPU other processes used meanwhile (a shared
machine) are reported beside each figure.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Mapping
from typing import Any

from common import (
    JOB_BODY,
    CpuWatch,
    ServerProcess,
    conveyor_server,
    hello_server,
    job_counts,
    job_span,
    json_out,
    table,
    wait_until_idle,
)
from load import run_load

TARGET_RATIO = 0.25
CONNECTIONS = 16


def _measure(
    server: ServerProcess,
    path: str,
    *,
    duration_s: float,
    tool: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    watch = CpuWatch(server.pid).start()
    load = run_load(
        server.port, path, method="GET" if body is None else "POST", body=body, connections=CONNECTIONS,
        duration_s=duration_s, tool=tool, headers=headers,
    )  # fmt: skip
    cpu = watch.stop()
    return {
        "tool": load.tool,
        "requests": load.requests,
        "non2xx": load.non2xx,
        "errors": load.errors,
        "seconds": load.seconds,
        "rps": load.rps,
        "p50_ms": load.p50_ms,
        "p99_ms": load.p99_ms,
        "server_cpu_us": cpu["server_s"] / max(load.requests, 1) * 1e6,
        "others_cpu": cpu["others_s"] / cpu["wall_s"],
        "stolen_cpu": cpu["steal_s"] / cpu["wall_s"],
    }


def _jobs_round(server: ServerProcess, data_dir: Any, duration_s: float, tool: str) -> dict[str, Any]:
    before = job_counts(server)
    since_ms = int(time.time() * 1000)
    watch = CpuWatch(server.pid).start()
    submit = _measure(server, "/api/v1/jobs", duration_s=duration_s, tool=tool, body=JOB_BODY, headers=server.headers)
    submitted_at = time.monotonic()
    backlog = job_counts(server, ("pending",))["pending"]  # submits outrunning the executor pile up here
    after = wait_until_idle(server, timeout_s=max(60.0, duration_s * 10))
    drain_s = time.monotonic() - submitted_at
    cpu = watch.stop()
    span = job_span(data_dir, since_ms)
    return {
        "submit": submit,
        "created": sum(after.values()) - sum(before.values()),
        "finished": span.finished,
        "succeeded": span.succeeded,
        "left_unfinished": after["pending"] + after["running"],
        "rejected": submit["non2xx"],
        "seconds": span.seconds,
        "jobs_per_s": span.finished / span.seconds,
        "drain_after_load_s": drain_s,
        "backlog_at_end": backlog,
        "server_cpu_us": cpu["server_s"] / max(span.finished, 1) * 1e6,
        "others_cpu": cpu["others_s"] / cpu["wall_s"],
        "stolen_cpu": cpu["steal_s"] / cpu["wall_s"],
    }


def _sustained(server: ServerProcess, data_dir: Any, duration_s: float, tool: str, windows: int = 6) -> dict[str, Any]:
    """One long jobs load, sampled in windows: does the executor keep up, or does a backlog grow and slow it?"""
    since_ms = int(time.time() * 1000)
    loads: list[Any] = []
    thread = threading.Thread(
        target=lambda: loads.append(
            run_load(server.port, "/api/v1/jobs", method="POST", body=JOB_BODY, connections=CONNECTIONS,
                     duration_s=duration_s, tool=tool, headers=server.headers)
        )
    )  # fmt: skip
    started = time.monotonic()
    thread.start()
    samples = []
    previous = job_counts(server, ("succeeded", "failed"))
    step = duration_s / windows
    for i in range(1, windows + 1):
        time.sleep(max(0.0, started + i * step - time.monotonic()))
        counts = job_counts(server, ("pending", "succeeded", "failed"))
        done = counts["succeeded"] + counts["failed"] - previous["succeeded"] - previous["failed"]
        samples.append(
            {"at_s": time.monotonic() - started, "pending": counts["pending"], "finished_per_s": done / step}
        )
        previous = counts
    thread.join(timeout=duration_s + 120)
    wait_until_idle(server, timeout_s=max(120.0, duration_s * 10))
    span = job_span(data_dir, since_ms)
    return {
        "duration_s": duration_s,
        "windows": samples,
        "submitted_per_s": loads[0].rps if loads else 0.0,
        "jobs_per_s": span.finished / span.seconds,
    }


def _median(rounds: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rounds))


def run(duration_s: float = 4.0, rounds: int = 5, tool: str = "auto", sustained_s: float = 0.0) -> dict[str, Any]:
    """Measures hello world, health and jobs in turns for `rounds` rounds, then (optionally) a long jobs load."""
    figures: dict[str, Any] = {
        "connections": CONNECTIONS,
        "duration_s": duration_s,
        "rounds": rounds,
        "target_ratio": TARGET_RATIO,
        "hello": [],
        "echo": [],
        "health": [],
        "jobs": [],
    }
    with hello_server() as hello, conveyor_server() as (server, data_dir):
        run_load(hello.port, "/hello", connections=CONNECTIONS, duration_s=1, tool=tool)  # warm-ups
        run_load(hello.port, "/echo", method="POST", body=JOB_BODY, connections=CONNECTIONS, duration_s=1, tool=tool)
        run_load(server.port, "/api/v1/health", connections=CONNECTIONS, duration_s=1, tool=tool)
        run_load(
            server.port,
            "/api/v1/jobs",
            method="POST",
            body=JOB_BODY,
            connections=CONNECTIONS,
            duration_s=1,
            tool=tool,
            headers=server.headers,
        )
        wait_until_idle(server, timeout_s=60)
        for _ in range(rounds):
            figures["hello"].append(_measure(hello, "/hello", duration_s=duration_s, tool=tool))
            figures["echo"].append(_measure(hello, "/echo", duration_s=duration_s, tool=tool, body=JOB_BODY))
            figures["health"].append(_measure(server, "/api/v1/health", duration_s=duration_s, tool=tool))
            figures["jobs"].append(_jobs_round(server, data_dir, duration_s, tool))
        if sustained_s > 0:
            figures["sustained"] = _sustained(server, data_dir, sustained_s, tool)
    ratios = [j["jobs_per_s"] / h["rps"] for j, h in zip(figures["jobs"], figures["hello"], strict=True)]
    figures["tool"] = figures["hello"][0]["tool"]
    figures["hello_rps"] = _median(figures["hello"], "rps")
    figures["echo_rps"] = _median(figures["echo"], "rps")
    figures["health_rps"] = _median(figures["health"], "rps")
    figures["submit_rps"] = statistics.median(j["submit"]["rps"] for j in figures["jobs"])
    figures["jobs_per_s"] = _median(figures["jobs"], "jobs_per_s")
    figures["ratio"] = statistics.median(ratios)
    figures["ratios"] = ratios
    figures["passed"] = figures["ratio"] >= TARGET_RATIO
    return figures


def render(figures: dict[str, Any]) -> str:
    def cells(rows: list[dict[str, Any]], key: str, fmt: str) -> str:
        return " / ".join(format(r[key], fmt) for r in rows)

    def others(rows: list[dict[str, Any]]) -> str:
        return " / ".join(
            f"{r['others_cpu']:.0%}" + (f" +{r['stolen_cpu']:.0%}" if r["stolen_cpu"] >= 0.01 else "") for r in rows
        )

    hello, echo, health, jobs = figures["hello"], figures["echo"], figures["health"], figures["jobs"]
    submits = [j["submit"] for j in jobs]
    rows = [
        (
            "hello world `GET /hello` (FastAPI, same uvicorn options)",
            f"{figures['hello_rps']:,.0f} req/s",
            cells(hello, "rps", ",.0f"),
            cells(hello, "p99_ms", ".1f"),
            cells(hello, "server_cpu_us", ".0f"),
            others(hello),
        ),
        (
            "the same app, `POST /echo` with a job-shaped body (pydantic, no database)",
            f"{figures['echo_rps']:,.0f} req/s",
            cells(echo, "rps", ",.0f"),
            cells(echo, "p99_ms", ".1f"),
            cells(echo, "server_cpu_us", ".0f"),
            others(echo),
        ),
        (
            "Conveyor `GET /api/v1/health`",
            f"{figures['health_rps']:,.0f} req/s",
            cells(health, "rps", ",.0f"),
            cells(health, "p99_ms", ".1f"),
            cells(health, "server_cpu_us", ".0f"),
            others(health),
        ),
        (
            "Conveyor `POST /api/v1/jobs`, submit answered (executor busy meanwhile)",
            f"{figures['submit_rps']:,.0f} req/s",
            cells(submits, "rps", ",.0f"),
            cells(submits, "p99_ms", ".1f"),
            "",
            others(submits),
        ),
        (
            "**trivial jobs finished, submit → succeeded**",
            f"**{figures['jobs_per_s']:,.0f} jobs/s**",
            cells(jobs, "jobs_per_s", ",.0f"),
            "",
            cells(jobs, "server_cpu_us", ".0f"),
            others(jobs),
        ),
    ]
    out = table(
        f"HTTP throughput: {figures['connections']} connections, {figures['duration_s']:g} s per measurement, "
        f"{figures['rounds']} rounds, load by {figures['tool']}",
        rows,
        ("what", "median", "each round", "p99 ms each round", "server CPU µs per request/job", "others' CPU (+stolen)"),
    )
    verdict = "pass" if figures["passed"] else "MISS"
    rejected = sum(j["rejected"] for j in jobs)
    unfinished = sum(j["left_unfinished"] for j in jobs)
    finished = sum(j["finished"] for j in jobs)
    drain = max(j["drain_after_load_s"] for j in jobs)
    backlog = " / ".join(f"{j['backlog_at_end']:,}" for j in jobs)
    out += (
        f"\njobs/s ÷ hello-world req/s = **{figures['ratio']:.0%}** (each round: "
        f"{' / '.join(f'{r:.0%}' for r in figures['ratios'])}; target ≥ {figures['target_ratio']:.0%}: {verdict}). "
        f"{finished:,} jobs finished, {unfinished} left unfinished, {rejected} submits refused (429 or other); "
        f"jobs still pending when the load stopped: {backlog} (each round); the queue drained within "
        f"{drain:.1f} s after that.\n"
    )
    if "sustained" in figures:
        out += "\n" + _render_sustained(figures["sustained"])
    return out


def _render_sustained(sustained: dict[str, Any]) -> str:
    rows = [(f"{w['at_s']:.0f}", f"{w['pending']:,}", f"{w['finished_per_s']:,.0f}") for w in sustained["windows"]]
    out = table(
        f"Sustained jobs load: {sustained['duration_s']:g} s without a break",
        rows,
        ("seconds into the load", "jobs pending", "jobs finished per s in the window before"),
    )
    return out + (
        f"\nsubmits answered {sustained['submitted_per_s']:,.0f}/s; jobs finished {sustained['jobs_per_s']:,.0f}/s "
        "from the first submit to the last finish. A growing backlog that slows the executor means submits "
        "outrun it and queue operations cost more as the queue grows.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of load per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of hello, health and jobs measurements")
    parser.add_argument("--tool", choices=("auto", "wrk", "python"), default="auto", help="load generator")
    parser.add_argument("--sustained", type=float, default=30.0, help="seconds of one long jobs load (0: none)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = run(duration_s=args.duration, rounds=max(1, args.rounds), tool=args.tool, sustained_s=args.sustained)
    print(render(figures))
    json_out(args.json, figures)


if __name__ == "__main__":
    main()
