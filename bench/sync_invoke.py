"""Latency and throughput of GPTBots' synchronous invoke (`POST /v1/workflow/invoke`) of a trivial recipe.

A real `conveyor serve` (SQLite, fresh data directory) and a recipe key (`cvy_rcp_…`) bound to the demo
`greeting` recipe (chat_input → text_template → recipe_output), made once with `POST /api/v1/keys`. Each call
sends `{"input": {"text": "bench"}}` with `Authorization: Bearer <key>` and is answered when the run ended
(`"status": "SUCCEED"`, checked on every answer). The clients are this process: raw asyncio keep-alive
HTTP/1.1 connections, each sending its next call when the last one is answered:
  1. one connection from this process: N calls one after the other (after a warm-up); p50/p99 of each call;
  2. 16 connections from the load tool (wrk `-t1 -c16` when installed, else `loadgen.py`) for a fixed time
     (after 1 s of warm-up): p50/p99 of each call and calls answered per second; wrk cannot read the answers,
     so the run then checks that every job it made succeeded.
Target (the issue's): p50 ≤ 5 ms at concurrency 16.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Mapping
from typing import Any

import orjson

from common import conveyor_server, job_counts, json_out, percentile, request, table, wait_until_idle
from load import RawConnection, new_event_loop, run_load

TARGET_P50_MS = 5.0
CONNECTIONS = 16
INVOKE = "/v1/workflow/invoke"
BODY = orjson.dumps({"input": {"text": "bench"}})
# The default per-key rate limit (600 a minute) would answer most calls 429: raised for the run.
SERVER_ENV = {"CONVEYOR_KEYS__RATE_LIMIT_PER_MIN": "1000000"}
REQUEST_TIMEOUT_S = 40.0  # above the server's 30 s sync wait: a call that hangs stops the run


def recipe_key(port: int, headers: Mapping[str, str]) -> str:
    """A recipe key bound to `greeting`, made through the API (as a user would)."""
    status, body = request(
        port, "POST", "/api/v1/keys", body=orjson.dumps({"kind": "recipe", "name": "bench", "recipe": "greeting"}),
        headers=headers,
    )  # fmt: skip
    if status != 201:
        raise RuntimeError(f"making the recipe key answered {status}: {body}")
    return str(body["key"])


async def _calls(port: int, raw: bytes, count: int) -> list[float]:
    """`count` sync invokes on one connection, one after the other; each call's seconds."""
    conn = await RawConnection.open(port)
    times: list[float] = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                status, body = await conn.send(raw)
            took = time.perf_counter() - started
            if status != 200 or orjson.loads(body).get("status") != "SUCCEED":
                raise RuntimeError(f"invoke answered {status}: {body[:300]!r}")
            times.append(took)
    finally:
        await conn.close()
    return times


async def sequential(port: int, key: str, calls: int) -> list[float]:
    """`calls` sync invokes one at a time on one connection, after a warm-up; each call's seconds."""
    raw = RawConnection.build("POST", INVOKE, BODY, {"Authorization": f"Bearer {key}"})
    await _calls(port, raw, 100)  # warm-up: lazy imports, the key's cache
    return await _calls(port, raw, calls)


def run(calls: int = 500, duration_s: float = 4.0, tool: str = "auto") -> dict[str, Any]:
    """One connection from this process, then 16 from the load tool (wrk when installed: a Python client here
    would take CPU from the server on a 2-core machine); every 16-connection run's jobs are checked to have
    succeeded, as wrk cannot read the answers."""
    with conveyor_server(dict(SERVER_ENV)) as (server, _), asyncio.Runner(loop_factory=new_event_loop) as runner:
        key = recipe_key(server.port, server.headers)
        one = runner.run(sequential(server.port, key, calls))
        auth = {"Authorization": f"Bearer {key}"}
        run_load(server.port, INVOKE, method="POST", body=BODY, connections=CONNECTIONS, duration_s=1, tool=tool,
                 headers=auth)  # fmt: skip
        before = job_counts(server)
        load = run_load(
            server.port, INVOKE, method="POST", body=BODY, connections=CONNECTIONS, duration_s=duration_s, tool=tool,
            headers=auth,
        )  # fmt: skip
        after = wait_until_idle(server, timeout_s=60)
    succeeded = after["succeeded"] - before["succeeded"]
    if load.non2xx or load.errors or succeeded < load.ok:
        raise RuntimeError(f"sync invokes did not all succeed: {load}, {succeeded} jobs succeeded")
    return {
        "calls": calls,
        "duration_s": duration_s,
        "connections": CONNECTIONS,
        "tool": load.tool,
        "target_p50_ms": TARGET_P50_MS,
        "c1_p50_ms": percentile(one, 50) * 1000,
        "c1_p99_ms": percentile(one, 99) * 1000,
        "c16_calls": load.ok,
        "c16_p50_ms": load.p50_ms,
        "c16_p99_ms": load.p99_ms,
        "c16_per_s": load.rps,
        "passed": load.p50_ms <= TARGET_P50_MS,
    }


def render(figures: dict[str, Any]) -> str:
    rows = [
        ("1 connection, one call at a time", f"{figures['c1_p50_ms']:.2f}", f"{figures['c1_p99_ms']:.2f}", ""),
        (
            f"{figures['connections']} connections",
            f"{figures['c16_p50_ms']:.2f}",
            f"{figures['c16_p99_ms']:.2f}",
            f"{figures['c16_per_s']:,.0f}",
        ),
    ]
    out = table(
        f"GPTBots sync invoke of a trivial recipe: {figures['calls']} calls on 1 connection, then "
        f"{figures['duration_s']:g} s on {figures['connections']} ({figures['tool']})",
        rows,
        ("what", "p50 ms", "p99 ms", "calls/s"),
    )
    verdict = "pass" if figures["passed"] else "MISS"
    out += (
        f"\nsync invoke p50 at {figures['connections']} connections {figures['c16_p50_ms']:.2f} ms "
        f"(target ≤ {figures['target_p50_ms']:g} ms: {verdict}); {figures['c16_calls']:,} calls answered.\n"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="calls one at a time on one connection")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of load on 16 connections")
    parser.add_argument("--tool", choices=("auto", "wrk", "python"), default="auto", help="16-connection load tool")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = run(calls=args.calls, duration_s=args.duration, tool=args.tool)
    print(render(figures))
    json_out(args.json, figures)


if __name__ == "__main__":
    main()
