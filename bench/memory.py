"""Server memory: RSS of a real `conveyor serve` idle after a warm-up, and after 10,000 more trivial jobs.

The warm-up (200 jobs) gets lazy imports and caches done, so "idle" is the steady floor a user sees. The
jobs are submitted by `loadgen.py` in a separate process over 16 connections; RSS is read from /proc once
every job is terminal and the server has been quiet for a moment. A second batch of 10,000 tells warm-up
growth (allocator arenas, statement caches) from a leak, which would keep growing.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from common import JOB_BODY, ServerProcess, conveyor_server, json_out, table, wait_until_idle
from load import run_loadgen

TARGET_IDLE_MB = 100.0
TARGET_GROWTH_MB = 10.0
MB = 1024 * 1024


def _submit(server: ServerProcess, count: int) -> None:
    """Submits `count` jobs over 16 connections (with the server's token) and waits until all are terminal."""
    result = run_loadgen(
        server.port, "/api/v1/jobs", method="POST", body=JOB_BODY, connections=16, count=count, headers=server.headers
    )
    if result.non2xx or result.errors:
        raise RuntimeError(
            f"submitting {count} jobs: {result.non2xx} non-2xx {result.statuses}, {result.errors} errors"
        )
    counts = wait_until_idle(server, timeout_s=180)
    if counts["pending"] or counts["running"]:
        raise RuntimeError(f"jobs did not finish: {counts}")
    time.sleep(1.0)  # let the executor's event writes and the allocator settle


def run(jobs: int = 10_000, warmup: int = 200, batches: int = 2) -> dict[str, Any]:
    with conveyor_server() as (server, _):
        started = server.rss_bytes() / MB
        _submit(server, warmup)
        idle = server.rss_bytes() / MB
        after = []
        for _ in range(batches):
            _submit(server, jobs)
            after.append(server.rss_bytes() / MB)
    growth = after[0] - idle
    return {
        "jobs": jobs,
        "warmup": warmup,
        "started_mb": started,
        "idle_mb": idle,
        "after_mb": after,
        "growth_mb": growth,
        "target_idle_mb": TARGET_IDLE_MB,
        "target_growth_mb": TARGET_GROWTH_MB,
        "passed_idle": idle <= TARGET_IDLE_MB,
        "passed_growth": growth <= TARGET_GROWTH_MB,
    }


def render(figures: dict[str, Any]) -> str:
    jobs = figures["jobs"]
    rows = [
        ("just started", f"{figures['started_mb']:.1f}", ""),
        (
            f"idle, after {figures['warmup']} warm-up jobs",
            f"{figures['idle_mb']:.1f}",
            f"≤ {figures['target_idle_mb']:g}: {'pass' if figures['passed_idle'] else 'MISS'}",
        ),
    ]
    for i, after in enumerate(figures["after_mb"], 1):
        target = ""
        if i == 1:
            verdict = "pass" if figures["passed_growth"] else "MISS"
            target = f"growth {figures['growth_mb']:+.1f} (≤ {figures['target_growth_mb']:g}: {verdict})"
        rows.append((f"after {i * jobs:,} more jobs", f"{after:.1f}", target))
    return table("Server resident memory (RSS)", rows, ("when", "MB", "target"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=2, help="batches of --jobs after the warm-up")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = run(jobs=args.jobs, batches=max(1, args.batches))
    print(render(figures))
    json_out(args.json, figures)


if __name__ == "__main__":
    main()
