"""Wake-ups for whoever waits on a job: a sync invoke waiting for its end, an SSE stream waiting for events.

The store stays the truth: a notice only says "read again now". Waiters keep a poll as fallback, so a notice
lost (or a change made by a process that sends none) costs latency, never correctness.

`JobService` publishes after each write that changes a job (claimed, events, ended, released) in this
process. Other processes' changes reach this one through `relay`/`deliver` when a cross-process channel is
set up; without one, the waiters' poll finds them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager


class JobNotices:
    """Per-job wake-up events for the waiters of this process."""

    def __init__(self) -> None:
        # job id -> its waiters, each with whether it wakes only when the job ends
        self._waiters: dict[str, dict[asyncio.Event, bool]] = {}
        # Sends the ids on to the other processes (a cross-process channel) with whether they ended; None: this
        # process only.
        self.relay: Callable[[list[str], bool], None] | None = None

    @contextmanager
    def watch(self, job_id: str, *, ends_only: bool = False) -> Iterator[asyncio.Event]:
        """An event set whenever `job_id` changes (with `ends_only`, only when it may have ended) while the
        block runs; clear it before each read."""
        event = asyncio.Event()
        self._waiters.setdefault(job_id, {})[event] = ends_only
        try:
            yield event
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.pop(event, None)
                if not waiters:
                    del self._waiters[job_id]

    def publish(self, job_ids: Iterable[str], *, ended: bool = False) -> None:
        """These jobs changed in this process (`ended`: to a terminal state): wake their
        waiters here, and tell the other processes."""
        ids = list(job_ids)
        self.deliver(ids, ended=ended)
        if self.relay is not None and ids:
            self.relay(ids, ended)

    def deliver(self, job_ids: Iterable[str], *, ended: bool = False) -> None:
        """Wakes this process's waiters on these jobs (the relay calls this for other processes' changes)."""
        if not self._waiters:
            return
        for job_id in job_ids:
            for event, ends_only in self._waiters.get(job_id, {}).items():
                if ended or not ends_only:
                    event.set()

    @property
    def watched(self) -> int:
        """How many jobs someone in this process is waiting on."""
        return len(self._waiters)


async def wait_for_notice(event: asyncio.Event, timeout_s: float) -> bool:
    """Waits until `event` is set or `timeout_s` passes; True if it was set."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(max(timeout_s, 0.0)):
            await event.wait()
    except TimeoutError:
        return False
    return True
