"""A small HTTP load generator, run as its own process when wrk is not installed.

`python bench/loadgen.py '{"port": 8000, "path": "/hello", "connections": 16, "duration_s": 10}'` keeps
`connections` keep-alive HTTP/1.1 connections busy (one request in flight on each, no pipelining) for
`duration_s` seconds, or until `count` requests were answered; prints one JSON line of figures. `headers`
(an object of name → value, e.g. the bearer token) go on every request.
httpx costs too much CPU per request to load a server on a 2-core machine; raw streams cost little.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

from common import percentile
from load import RawConnection, new_event_loop


async def drive(spec: dict[str, Any]) -> dict[str, Any]:
    port = int(spec["port"])
    body = spec.get("body")
    raw = RawConnection.build(
        spec.get("method", "GET"),
        spec["path"],
        None if body is None else body.encode(),
        headers=spec.get("headers") or {},
    )
    connections = int(spec.get("connections", 16))
    duration_s = float(spec.get("duration_s") or 0)
    count = int(spec.get("count") or 0)
    if not duration_s and not count:
        raise SystemExit("give duration_s or count")
    deadline = time.perf_counter() + (duration_s or 600.0)  # a count run is bounded in time too
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    errors = 0
    issued = 0

    async def worker() -> None:
        nonlocal errors, issued
        conn = await RawConnection.open(port)
        try:
            while time.perf_counter() < deadline and (not count or issued < count):
                issued += 1
                started = time.perf_counter()
                try:
                    status, _ = await conn.send(raw)
                except (OSError, asyncio.IncompleteReadError, RuntimeError):
                    errors += 1
                    await conn.close()
                    conn = await RawConnection.open(port)
                    continue
                latencies.append(time.perf_counter() - started)
                statuses[status] += 1
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    seconds = time.perf_counter() - started
    requests = sum(statuses.values())
    return {
        "requests": requests,
        "non2xx": sum(n for status, n in statuses.items() if not 200 <= status < 300),
        "errors": errors,
        "seconds": seconds,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "statuses": {str(status): n for status, n in sorted(statuses.items())},
    }


def main() -> None:
    spec = json.loads(sys.argv[1])
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        print(json.dumps(runner.run(drive(spec))))


if __name__ == "__main__":
    main()
