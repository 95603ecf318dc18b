"""The sweeper of distributed mode: every API process runs one, and one at a time sweeps.

Each sweep (every `celery.sweep_interval_s`, by whichever process holds a short lock in the broker):
  1. recovers jobs whose runner is gone — lease lapsed, or owner process on this host dead — failing them or,
     for `on_interrupt: resume` recipes, putting them back in the queue and sending them to the workers again;
  2. sends again the pending jobs whose dispatch was lost: pending for `celery.redispatch_after_s` while every
     queue of the broker is empty (a broker restarted without its data, a send that failed). A job sent twice
     runs once: the worker's claim takes only a pending job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from conveyor.executors.celery import DEFAULT_QUEUE, HIGH_QUEUE, CeleryDispatch
from conveyor.executors.local import owner_is_dead, process_owner_prefix
from conveyor.jobs.service import JobService
from conveyor.settings import CelerySettings

log = logging.getLogger("conveyor.executor")

LOCK_KEY = "conveyor:sweeper"
REDISPATCH_BATCH = 500
# Queues whose emptiness means nothing is on its way to a worker (kombu's Redis transport keeps each queue in a
# list of that name).
QUEUES = (DEFAULT_QUEUE, HIGH_QUEUE)


class Sweeper:
    """Recovers lost runs and lost dispatches; see the module docstring."""

    def __init__(
        self, jobs: JobService, dispatch: CeleryDispatch, settings: CelerySettings, *, max_resumes: int
    ) -> None:
        self.jobs = jobs
        self.dispatch = dispatch
        self.settings = settings
        self.max_resumes = max_resumes
        self.owner = f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._redis = aioredis.Redis.from_url(
            settings.broker_url.get_secret_value(), socket_connect_timeout=2, socket_timeout=5
        )
        self._task: asyncio.Task[None] | None = None
        self.sweeps = 0  # sweeps this process made (holding the lock)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):  # hand the turn on now rather than when the lock lapses
            if await self._redis.get(LOCK_KEY) == self.owner.encode():
                await self._redis.delete(LOCK_KEY)
        await self._redis.aclose()

    async def _loop(self) -> None:
        while True:
            try:
                if await self._take_turn():
                    await self.sweep()
            except Exception:
                log.exception("sweeping failed")
            await asyncio.sleep(self.settings.sweep_interval_s)

    async def _take_turn(self) -> bool:
        """Whether this process sweeps now: it holds (or just took) the lock, which lapses after two intervals."""
        ttl_ms = int(self.settings.sweep_interval_s * 2000)
        try:
            if await self._redis.set(LOCK_KEY, self.owner, nx=True, px=ttl_ms):
                return True
            if await self._redis.get(LOCK_KEY) == self.owner.encode():
                await self._redis.pexpire(LOCK_KEY, ttl_ms)
                return True
        except (RedisError, OSError) as exc:
            log.warning("the sweeper cannot reach the broker: %s", exc)
        return False

    async def sweep(self) -> dict[str, int]:
        """One sweep (see the module docstring); what it did."""
        self.sweeps += 1
        requeued: list[tuple[str, int]] = []
        counts = await self.jobs.recover(
            host_prefix=process_owner_prefix(),
            is_dead=owner_is_dead,
            max_resumes=self.max_resumes,
            requeued=requeued,
        )
        if counts["failed"] or counts["resumed"]:
            log.warning("recovered interrupted jobs: %s", counts)
        resent = await self.dispatch.send_many(requeued)
        redispatched = 0
        if await self._queues_empty():
            stale = await self.jobs.stale_pending(int(self.settings.redispatch_after_s * 1000), REDISPATCH_BATCH)
            if stale:
                redispatched = await self.dispatch.send_many([(row["id"], int(row["priority"])) for row in stale])
                log.warning("sent again %d pending jobs whose dispatch was lost", redispatched)
        return counts | {"resent": resent, "redispatched": redispatched}

    async def _queues_empty(self) -> bool:
        try:
            for queue in QUEUES:
                if await self._redis.llen(queue):
                    return False
        except (RedisError, OSError):
            return False  # the broker is away: sending again would fail anyway
        return True
