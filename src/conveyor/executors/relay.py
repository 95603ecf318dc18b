"""Job notices between processes, over Redis (or Valkey) pub/sub: a run that a worker ends wakes the sync
invoke or SSE stream waiting on it in any API process at once; a cancel asked of any server reaches the worker
running the job; webhook deliveries a worker wrote wake the servers' dispatchers.

Two channels, so no process parses what it has no use for: job changes and "deliveries written" go to the
servers (who hold the waiters and the dispatchers), cancel requests to the workers (who run the jobs). What a
process publishes within one turn of its loop goes out merged, in one message per channel (two for changes:
ended, and the rest): under load that is one message for many jobs, not one per write. Ends, cancels and
deliveries go out at once; mere progress (new events of a running job, for SSE streams) waits up to
`PROGRESS_LINGER_S` for company, usually its job's end. Best effort by design: a
notice lost while the broker restarts costs the waiter one poll interval, never a result (waiters poll as
fallback, and read the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from conveyor.jobs.notices import JobNotices

log = logging.getLogger("conveyor.notices")

NOTICES_CHANNEL = "conveyor:job-notices"  # job changes, deliveries written: heard by servers
CANCELS_CHANNEL = "conveyor:job-cancels"  # cancel requests: heard by workers
MAX_QUEUED = 10_000  # job ids waiting to be published; past it they are dropped (waiters poll)
MAX_MESSAGE_BYTES = 64 * 1024  # anything bigger on the channel is not ours: ignored unparsed
MAX_IDS = 1000  # job ids read from one message
IDS_PER_MESSAGE = 500  # job ids sent in one message: job ids are 36 characters, so it stays far under 64 KB
RECONNECT_DELAYS_S = (0.1, 0.5, 1.0, 2.0)
PROGRESS_LINGER_S = 0.01
PUBLISH_TIMEOUT_S = 5.0


class RedisNoticeRelay:
    """Publishes this process's job notices and cancel requests, and acts on the other processes': a server
    (`runs_jobs=False`) hears job changes and deliveries written, a worker (`runs_jobs=True`) cancel requests."""

    def __init__(self, url: str, notices: JobNotices, *, runs_jobs: bool) -> None:
        self.notices = notices
        self.origin = secrets.token_hex(8)
        self.channel = CANCELS_CHANNEL if runs_jobs else NOTICES_CHANNEL
        # The subscriber has no read timeout (a subscription waits for ever), but keepalive and health checks find
        # a half-open connection, so it reconnects. Publishing has a client of its own with a timeout: a publish
        # on a half-open connection fails within seconds (the notices are dropped; waiters poll) instead of
        # stalling every later notice.
        self._redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=None, socket_keepalive=True, health_check_interval=15
        )
        self._publisher = aioredis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=PUBLISH_TIMEOUT_S, socket_keepalive=True
        )
        # What waits to be published: job id -> whether it ended; deliveries written; cancel requests.
        self._changed: dict[str, bool] = {}
        self._deliveries = False
        self._cancels: list[str] = []
        self._wake = asyncio.Event()  # something is queued
        self._urgent = asyncio.Event()  # an end, a cancel or deliveries are queued: publish without lingering
        self._publishing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.subscribed = asyncio.Event()  # set while the subscription is live (tests wait on it)
        # Called when another process wrote webhook deliveries (a server's dispatcher sends them at once).
        self.on_deliveries: Callable[[], None] | None = None
        # Called with a job id another process was asked to cancel (a worker stops it if it runs it and the
        # store holds the request).
        self.on_cancel: Callable[[str], object] | None = None

    async def start(self) -> None:
        self.notices.relay = self._enqueue
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="notices-publish"),
            asyncio.create_task(self._subscribe_loop(), name="notices-subscribe"),
        ]

    async def stop(self) -> None:
        self.notices.relay = None
        # A stopping worker's last notices (its jobs' ends, deliveries written) go out first, briefly.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                while self._publishing or self._has_queued():
                    await asyncio.sleep(0.01)
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        # Bounded: a client library that turns a cancellation into a connection error must not hold us here.
        await asyncio.wait(self._tasks, timeout=3.0)
        for client in (self._publisher, self._redis):
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(3.0):
                    await client.aclose()
        # redis-py closes a pub/sub connection without waiting for its transport (`nowait`, against a deadlock
        # with a reader): let the loop finish that, so a loop closed right after us leaves no socket open.
        await asyncio.sleep(0.05)

    def _has_queued(self) -> bool:
        return bool(self._changed or self._deliveries or self._cancels)

    def _enqueue(self, job_ids: list[str], ended: bool) -> None:
        changed = self._changed
        for job_id in job_ids:
            if job_id in changed:
                changed[job_id] = changed[job_id] or ended
            elif len(changed) < MAX_QUEUED:
                changed[job_id] = ended
        self._wake.set()
        if ended:
            self._urgent.set()

    def announce_deliveries(self) -> None:
        """This process wrote webhook deliveries but sends none (a worker): wake the servers' dispatchers."""
        self._deliveries = True
        self._wake.set()
        self._urgent.set()

    def request_cancel(self, job_id: str) -> None:
        """Asks whichever process runs `job_id` to stop it now (the job's cancel flag is already stored)."""
        if len(self._cancels) < IDS_PER_MESSAGE:
            self._cancels.append(job_id)
        self._wake.set()
        self._urgent.set()

    def _take_messages(self) -> list[tuple[str, bytes]]:
        """Everything queued, as (channel, message), and the queue emptied."""
        origin = self.origin
        ended = [job_id for job_id, done in self._changed.items() if done]
        changed = [job_id for job_id, done in self._changed.items() if not done]
        messages = [
            (NOTICES_CHANNEL, orjson.dumps({"o": origin, "ids": ids[i : i + IDS_PER_MESSAGE], "ended": flag}))
            for ids, flag in ((ended, True), (changed, False))
            for i in range(0, len(ids), IDS_PER_MESSAGE)
        ]
        if self._deliveries:
            messages.append((NOTICES_CHANNEL, orjson.dumps({"o": origin, "ids": [], "hooks": True})))
        messages += [(CANCELS_CHANNEL, orjson.dumps({"o": origin, "ids": [], "cancel": c})) for c in self._cancels]
        self._changed, self._deliveries, self._cancels = {}, False, []
        return messages

    async def _publish_loop(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            if not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PROGRESS_LINGER_S):
                        await self._urgent.wait()
            self._wake.clear()
            self._urgent.clear()
            self._publishing = True
            try:
                for channel, message in self._take_messages():
                    try:
                        await self._publisher.publish(channel, message)
                    except (RedisError, OSError) as exc:
                        log.debug("publishing a job notice failed (waiters poll): %s", exc)
            finally:
                self._publishing = False

    async def _subscribe_loop(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    self.subscribed.set()
                    failures = 0
                    async for message in pubsub.listen():
                        self._deliver(message.get("data"))
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                if self._stopping:
                    return
                delay = RECONNECT_DELAYS_S[min(failures, len(RECONNECT_DELAYS_S) - 1)]
                failures += 1
                log.debug("job notices unsubscribed (%s); again in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    def _deliver(self, data: object) -> None:
        """Acts on one message of the channel. Anyone who can reach the broker can publish on it, so nothing in
        a message is trusted: it is bounded, checked, and at worst wakes a waiter that then reads the store (a
        cancel request is acted on only when the store holds it too)."""
        if not isinstance(data, bytes) or len(data) > MAX_MESSAGE_BYTES:
            return
        try:
            message = orjson.loads(data)
            if not isinstance(message, dict) or message.get("o") == self.origin:
                return  # not ours, or our own (delivered here already)
            ids = message.get("ids")
            if isinstance(ids, list) and ids:
                self.notices.deliver(
                    [job_id[:64] for job_id in ids[:MAX_IDS] if isinstance(job_id, str)],
                    ended=bool(message.get("ended")),
                )
            if message.get("hooks") is True and self.on_deliveries is not None:
                self.on_deliveries()
            cancel = message.get("cancel")
            if isinstance(cancel, str) and self.on_cancel is not None:
                self.on_cancel(cancel[:64])
        except orjson.JSONDecodeError:
            log.warning("ignored a malformed job notice")
        except Exception:
            log.exception("acting on a job notice failed")
