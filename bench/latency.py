"""Latency of one trivial job end to end: submit, then poll its result until 200; one job at a time.

The client is this process (one keep-alive connection over raw asyncio streams), the server a real
`conveyor serve` subprocess. After a warm-up, N jobs of the demo `greeting` recipe are run one after the
other; for each, the time from sending the submit to reading a 200 from `GET /api/v1/jobs/{id}/result`
(polled every `--poll-ms`, 0.5 ms by default) and the time of the submit alone. Both requests carry the
server's bearer token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Mapping
from typing import Any

from common import JOB_BODY, conveyor_server, json_out, percentile, table
from load import RawConnection, new_event_loop

TARGET_P50_MS = 5.0
MAX_POLLS = 20_000  # per job: a job that never finishes stops the run instead of hanging it
REQUEST_TIMEOUT_S = 10.0  # a server that stops answering stops the run too


async def measure(port: int, headers: Mapping[str, str], jobs: int, warmup: int, poll_s: float) -> dict[str, Any]:
    """Runs `warmup + jobs` jobs one after the other; p50/p99 of the last `jobs` (`headers` on every request)."""
    conn = await RawConnection.open(port)
    submit_raw = RawConnection.build("POST", "/api/v1/jobs", JOB_BODY, headers)
    end_to_end: list[float] = []
    submits: list[float] = []
    polls: list[int] = []
    try:
        for i in range(warmup + jobs):
            started = time.perf_counter()
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                status, body = await conn.send(submit_raw)
            submitted = time.perf_counter()
            if status != 202:
                raise RuntimeError(f"submit answered {status}: {body[:300]!r}")
            result_raw = RawConnection.build("GET", f"/api/v1/jobs/{json.loads(body)['id']}/result", headers=headers)
            for count in range(1, MAX_POLLS + 1):  # noqa: B007 (kept: the polls it took)
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    status, body = await conn.send(result_raw)
                if status == 200:
                    break
                if status != 202:
                    raise RuntimeError(f"result answered {status}: {body[:300]!r}")
                if poll_s:
                    await asyncio.sleep(poll_s)
            else:
                raise RuntimeError(f"job not finished after {MAX_POLLS} polls")
            done = time.perf_counter()
            if json.loads(body)["state"] != "succeeded":
                raise RuntimeError(f"job did not succeed: {body[:300]!r}")
            if i >= warmup:
                end_to_end.append(done - started)
                submits.append(submitted - started)
                polls.append(count)
    finally:
        await conn.close()
    return {
        "jobs": jobs,
        "poll_ms": poll_s * 1000,
        "target_p50_ms": TARGET_P50_MS,
        "end_to_end_p50_ms": percentile(end_to_end, 50) * 1000,
        "end_to_end_p99_ms": percentile(end_to_end, 99) * 1000,
        "end_to_end_mean_ms": statistics.fmean(end_to_end) * 1000,
        "submit_p50_ms": percentile(submits, 50) * 1000,
        "submit_p99_ms": percentile(submits, 99) * 1000,
        "polls_mean": statistics.fmean(polls),
    }


def run(jobs: int = 500, warmup: int = 50, poll_ms: float = 0.5) -> dict[str, Any]:
    with conveyor_server() as (server, _), asyncio.Runner(loop_factory=new_event_loop) as runner:
        figures = runner.run(measure(server.port, server.headers, jobs, warmup, poll_ms / 1000))
    figures["passed"] = figures["end_to_end_p50_ms"] <= TARGET_P50_MS
    return figures


def render(figures: dict[str, Any]) -> str:
    rows = [
        ("submit → result 200", f"{figures['end_to_end_p50_ms']:.2f}", f"{figures['end_to_end_p99_ms']:.2f}"),
        (
            "submit alone (`POST /api/v1/jobs` → 202)",
            f"{figures['submit_p50_ms']:.2f}",
            f"{figures['submit_p99_ms']:.2f}",
        ),
    ]
    out = table(
        f"Latency of one trivial job: {figures['jobs']} jobs one at a time, result polled every "
        f"{figures['poll_ms']:g} ms",
        rows,
        ("what", "p50 ms", "p99 ms"),
    )
    verdict = "pass" if figures["passed"] else "MISS"
    out += (
        f"\nend-to-end p50 {figures['end_to_end_p50_ms']:.2f} ms "
        f"(target ≤ {figures['target_p50_ms']:g} ms: {verdict}); "
        f"{figures['polls_mean']:.1f} result polls per job on average.\n"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--poll-ms", type=float, default=0.5, help="sleep between result polls (0: none)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = run(jobs=args.jobs, poll_ms=args.poll_ms)
    print(render(figures))
    json_out(args.json, figures)


if __name__ == "__main__":
    main()
