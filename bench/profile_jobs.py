"""Where a trivial job's server CPU goes: the jobs load of `http_throughput.py` against a profiled server.

Not part of `make bench`: a tool for whoever works on the hot path. It prints
  1. the server's real CPU per health request and per job, measured without the profiler;
  2. a cProfile of the server's main thread from just before the jobs load until every job is terminal, per
     job (cProfile's overhead inflates small Python functions: read the shares, not the microseconds; an
     async function's "calls" count its resumptions);
  3. every SQL statement the server ran meanwhile: how often per job, µs per job, median/p99/max per run.

    .venv/bin/python bench/profile_jobs.py --duration 5 --top 40
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from common import JOB_BODY, CpuWatch, conveyor_server, job_counts, percentile, wait_until_idle
from load import run_load


def unprofiled_cpu(duration_s: float, tool: str) -> dict[str, float]:
    """Server CPU µs per health request and per job, and the rates, without the profiler."""
    figures = {}
    with conveyor_server() as (server, _):
        run_load(
            server.port, "/api/v1/jobs", method="POST", body=JOB_BODY, duration_s=1, tool=tool, headers=server.headers
        )
        wait_until_idle(server, 60)
        for name, method, path, body, headers in (
            ("health", "GET", "/api/v1/health", None, {}),  # health takes no token
            ("job", "POST", "/api/v1/jobs", JOB_BODY, server.headers),
        ):
            watch = CpuWatch(server.pid).start()
            load = run_load(
                server.port, path, method=method, body=body, duration_s=duration_s, tool=tool, headers=headers
            )
            if load.non2xx or load.errors:
                raise RuntimeError(f"{name} load: {load.non2xx} non-2xx {load.statuses}, {load.errors} errors")
            wait_until_idle(server, 120)
            cpu = watch.stop()
            figures[f"{name}_cpu_us"] = cpu["server_s"] / max(load.requests, 1) * 1e6
            figures[f"{name}_cpu_share"] = cpu["server_s"] / cpu["wall_s"]
            figures[f"{name}_others"] = cpu["others_s"] / cpu["wall_s"]
            figures[f"{name}_per_s"] = load.rps
    return figures


def profile(duration_s: float, tool: str, out: Path) -> int:
    """Runs the jobs load against a profiled server; returns how many jobs ran while profiling."""
    with conveyor_server(profile_to=out) as (server, _):
        run_load(
            server.port, "/api/v1/jobs", method="POST", body=JOB_BODY, duration_s=1, tool=tool, headers=server.headers
        )
        wait_until_idle(server, 60)
        before = sum(job_counts(server).values())
        os.kill(server.pid, signal.SIGUSR1)
        run_load(
            server.port,
            "/api/v1/jobs",
            method="POST",
            body=JOB_BODY,
            duration_s=duration_s,
            tool=tool,
            headers=server.headers,
        )
        wait_until_idle(server, 120)
        jobs = sum(job_counts(server).values()) - before
        os.kill(server.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # let the dump finish writing
    return jobs


def _name(func: tuple[str, int, str]) -> str:
    path, line, name = func
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path}:{line})" if line else name


def report_profile(stats_path: Path, jobs: int, top: int) -> None:
    stats = pstats.Stats(str(stats_path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for _, _, tt, _, _ in raw.values())
    print(f"\nprofiled {jobs:,} jobs; main-thread time under the profiler {total / jobs * 1e6:,.0f} µs per job\n")
    print(f"top {top} by own time (µs per job, share, calls per job):")
    for func, (_, nc, tt, _, _) in sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]:
        print(f"  {tt / jobs * 1e6:8.1f}  {tt / total:5.1%}  {nc / jobs:6.2f}  {_name(func)}")
    print(f"\ntop {top} by time including callees (µs per job, share, calls per job):")
    for func, (_, nc, _, ct, _) in sorted(raw.items(), key=lambda kv: -kv[1][3])[:top]:
        print(f"  {ct / jobs * 1e6:8.1f}  {ct / total:5.1%}  {nc / jobs:6.2f}  {_name(func)}")


def report_sql(sql_path: Path, jobs: int) -> None:
    if not sql_path.exists():
        print("\n(no SQL timings: the server's database layer could not be wrapped)")
        return
    timings: dict[str, list[float]] = json.loads(sql_path.read_text())
    total = sum(sum(times) for times in timings.values())
    print(f"\nSQL statements: {total / jobs * 1e6:,.0f} µs per job in all (wall time inside sqlite3 calls)")
    print("  µs/job  runs/job  median µs  p99 µs   max µs  statement")
    for text, times in sorted(timings.items(), key=lambda kv: -sum(kv[1])):
        print(
            f"  {sum(times) / jobs * 1e6:6.1f}  {len(times) / jobs:8.2f}  {percentile(times, 50) * 1e6:9.1f}"
            f"  {percentile(times, 99) * 1e6:6.0f}  {max(times) * 1e6:7.0f}  {text[:110]}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--tool", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--keep", help="also keep the pstats file here")
    args = parser.parse_args()
    cpu = unprofiled_cpu(args.duration, args.tool)
    print(
        f"without the profiler: health {cpu['health_per_s']:,.0f}/s at {cpu['health_cpu_us']:.0f} µs server CPU each "
        f"({cpu['health_cpu_share']:.0%} of a core); jobs {cpu['job_per_s']:,.0f}/s at {cpu['job_cpu_us']:.0f} µs "
        f"server CPU each ({cpu['job_cpu_share']:.0%} of a core); other processes used "
        f"{max(cpu['health_others'], cpu['job_others']):.0%} of a core meanwhile"
    )
    with tempfile.TemporaryDirectory(prefix="conveyor-profile-") as tmp:
        out = Path(args.keep) if args.keep else Path(tmp) / "server.pstats"
        jobs = profile(args.duration, args.tool, out)
        report_profile(out, jobs, args.top)
        report_sql(Path(f"{out}.sql.json"), jobs)


if __name__ == "__main__":
    main()
