"""The sweeper of distributed mode: every API process runs one, and one at a time sweeps.

Each sweep (every `celery.sweep_interval_s`, by whichever process holds a short lock in the broker):
  1. recovers jobs whose runner is gone — lease lapsed, or owner process on this host dead — failing them or,
     for `on_interrupt: resume` recipes, putting them back in the queue and sending them to the workers again;
  2. sends again the pending jobs whose dispatch was lost: when more jobs have been pending for
     `celery.redispatch_after_s` than the broker holds tasks (queued, or with a worker and unacknowledged) —
     a broker restarted without its data, a send that failed. A job sent twice runs once: the worker's claim
     takes only a pending job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from conveyor.executors.celery import DEFAULT_QUEUE, HIGH_QUEUE, STOP_TIMEOUT_S, CeleryDispatch
from conveyor.jobs.service import JobService
from conveyor.leases import local_owners_pattern, new_owner, owner_is_dead
from conveyor.settings import CelerySettings

log = logging.getLogger("conveyor.executor")

LOCK_KEY = "conveyor:sweeper"
REDISPATCH_BATCH = 500
# Where kombu's Redis transport keeps tasks: each queue in a list of its name (messages without a priority), and
# those handed to a worker but not yet acknowledged in one hash.
QUEUES = (DEFAULT_QUEUE, HIGH_QUEUE)
UNACKED_KEY = "unacked"


class Sweeper:
    """Recovers lost runs and lost dispatches; see the module docstring."""

    def __init__(
        self, jobs: JobService, dispatch: CeleryDispatch, settings: CelerySettings, *, max_resumes: int
    ) -> None:
        self.jobs = jobs
        self.dispatch = dispatch
        self.settings = settings
        self.max_resumes = max_resumes
        self.owner = new_owner()
        self._redis = aioredis.Redis.from_url(
            settings.broker_url.get_secret_value(), socket_connect_timeout=2, socket_timeout=5
        )
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="sweeper")

    async def stop(self) -> None:
        # The flag as well as the cancel: a client library that turns a cancellation into a connection error
        # (caught below, as any failed sweep is) must not keep the loop going on a closed client.
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=STOP_TIMEOUT_S)
        with contextlib.suppress(RedisError, OSError, TimeoutError):  # hand the turn on now, not when it lapses
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await self._redis.eval(_RELEASE_IF_OURS, 1, LOCK_KEY, self.owner)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await self._redis.aclose()

    async def _loop(self) -> None:
        while not self._stopping:
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
            return bool(await self._redis.eval(_RENEW_IF_OURS, 1, LOCK_KEY, self.owner, ttl_ms))
        except (RedisError, OSError) as exc:
            log.warning("the sweeper cannot reach the broker: %s", exc)
        return False

    async def sweep(self) -> dict[str, int]:
        """One sweep (see the module docstring); what it did."""
        requeued: list[tuple[str, int]] = []
        counts = await self.jobs.recover(
            local_owners=local_owners_pattern(),
            is_dead=owner_is_dead,
            max_resumes=self.max_resumes,
            requeued=requeued,
        )
        if counts["failed"] or counts["resumed"]:
            log.warning("recovered interrupted jobs: %s", counts)
        resent = self.dispatch.send_many(requeued)
        redispatched = 0
        older_than_ms = int(self.settings.redispatch_after_s * 1000)
        stale = await self.jobs.count_stale_pending(older_than_ms)
        if stale and stale > await self._messages_on_their_way():
            rows = await self.jobs.stale_pending(older_than_ms, REDISPATCH_BATCH)
            redispatched = self.dispatch.send_many([(row["id"], int(row["priority"])) for row in rows])
            log.warning("sent again %d pending jobs whose dispatch was lost", redispatched)
        return counts | {"resent": resent, "redispatched": redispatched}

    async def _messages_on_their_way(self) -> int:
        """Tasks the broker holds: queued, or handed to a worker and not yet acknowledged. Fewer of them than
        long-pending jobs means some jobs' tasks were lost (a broker restart, a failed send); sending all those
        jobs again is harmless, as a job's second task claims nothing. Unknown (the broker is away): a lot."""
        try:
            queued = [await self._redis.llen(queue) for queue in QUEUES]
            unacked = await self._redis.hlen(UNACKED_KEY)
        except (RedisError, OSError):
            return 1 << 62  # sending again would fail anyway
        return int(sum(queued)) + int(unacked)


# Renews the lock only if this process still holds it: a GET then a PEXPIRE could extend another's.
_RENEW_IF_OURS = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE_IF_OURS = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
