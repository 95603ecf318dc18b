"""The webhook dispatcher: claims due deliveries from the outbox, sends them signed, and schedules retries.

Each process runs one. A delivery is claimed with a lease (attempt timeout plus a margin), so a process that
dies mid-attempt leaves it to be claimed again once the lease lapses: delivery is at least once, and the
receiver de-duplicates on `webhook-id`, the same on every attempt. A finish that wrote deliveries wakes the
dispatcher at once (`notify`); the poll interval finds those other processes wrote and retries falling due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass

import httpx
import orjson

from conveyor.errors import OutboundBlockedError, OutboundFailedError
from conveyor.jobs.queries import now_ms
from conveyor.jobs.service import JobService
from conveyor.leases import local_owners_pattern, new_owner, owner_is_dead
from conveyor.net import GuardedClient, retry_after_s
from conveyor.settings import WebhooksSettings
from conveyor.store.db import Database, Row
from conveyor.webhooks import outbox
from conveyor.webhooks.dialects import WebhookDialects
from conveyor.webhooks.secret_store import job_secrets

log = logging.getLogger("conveyor.webhooks")

LEASE_MARGIN_S = 30.0
JITTER = 0.1
USER_AGENT = "conveyor-webhooks"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to: the receiver's status (None: no answer) and why it failed, if it did."""

    status: int | None
    error: str | None
    retry_after_s: float | None = None
    final: bool = False  # no retry can help (the guard refuses the URL)

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def is_one_shot(event: str) -> bool:
    """Best-effort events (Omni's progress events, `progress.<event id>`) get one attempt and no retry."""
    return event.startswith("progress.")


class Dispatcher:
    """Delivers the outbox's due webhooks, at most `settings.concurrency` at once."""

    def __init__(
        self,
        db: Database,
        jobs: JobService,
        http: GuardedClient,
        dialects: WebhookDialects,
        settings: WebhooksSettings,
    ) -> None:
        self.db = db
        self.jobs = jobs
        self.http = http
        self.dialects = dialects
        self.settings = settings
        self.owner = new_owner()
        self.lease_ms = int((settings.attempt_timeout_s + LEASE_MARGIN_S) * 1000)
        self._claim_sql = outbox.claim_sql(db.dialect)
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        try:
            await self.recover()
        except Exception:
            log.exception("recovering webhook deliveries of dead processes failed")
        self._loop_task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stops claiming and waits up to `grace_s` for attempts under way; the rest lapse and are sent again."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._loop_task), timeout=grace_s)
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._sending:
            _, pending = await asyncio.wait(list(self._sending), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def recover(self) -> int:
        """Frees the deliveries leased by dead processes on this host (a crash mid-attempt), so they are sent
        again now rather than when their lease lapses; returns how many."""
        rows = await self.db.fetch_all(outbox.LEASE_OWNERS_SQL, local_owners_pattern())
        freed = 0
        for row in rows:
            owner = row["lease_owner"]
            if owner != self.owner and owner_is_dead(owner):
                freed += await self.db.execute(outbox.FREE_LEASES_SQL, owner)
        if freed:
            log.warning("webhook deliveries of a stopped process sent again: %d", freed)
        return freed

    def notify(self) -> None:
        """Deliveries were written: look for them now rather than at the next poll."""
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            free = self.settings.concurrency - len(self._sending)
            claimed: list[Row] = []
            self._wake.clear()
            if free > 0:
                try:
                    args = (self.owner, now_ms(), self.lease_ms, free)
                    claimed = await self.db.execute_returning(self._claim_sql, *args)
                except Exception:
                    log.exception("claiming webhook deliveries failed")
                for row in claimed:
                    task = asyncio.create_task(self._deliver(row), name=f"webhook-{row['id']}")
                    self._sending.add(task)
                    task.add_done_callback(self._sent)
            if claimed and len(claimed) == free:
                continue  # there may be more due
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(await self._idle_wait()):
                    await self._wake.wait()

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._wake.set()  # a slot is free (and a retry may be due soon)

    async def _idle_wait(self) -> float:
        """Seconds until the next due delivery, at most the poll interval."""
        wait = self.settings.poll_interval_s
        if len(self._sending) >= self.settings.concurrency:
            return wait  # a finished attempt wakes the loop
        try:
            due = await self.db.fetch_val(outbox.NEXT_DUE_SQL, now_ms())
        except Exception:
            log.exception("reading the next due webhook delivery failed")
            return wait
        if due is not None:
            wait = min(wait, max(0.0, (int(due) - now_ms()) / 1000))
        return max(wait, 0.005)

    async def _deliver(self, row: Row) -> None:
        attempt = int(row["attempts"]) + 1
        started = now_ms()
        clock = time.monotonic()
        try:
            outcome = await self._attempt(row)
        except Exception as exc:  # a bug or the store: still logged as a failed attempt, and retried
            log.exception("webhook delivery %s failed before it was sent", row["id"])
            outcome = Outcome(None, f"internal error: {type(exc).__name__}")
        duration_ms = int((time.monotonic() - clock) * 1000)
        state, next_at = self._next(outcome, attempt, one_shot=is_one_shot(row["event"]))
        try:
            await self.db.write(
                *outbox.settle_ops(
                    row["id"],
                    self.owner,
                    state=state,
                    attempt=attempt,
                    next_attempt_at=next_at,
                    status=outcome.status,
                    error=outcome.error,
                    started_at=started,
                    duration_ms=duration_ms,
                    at=now_ms(),
                )
            )
        except Exception:
            # Its lease lapses and it is sent again: at least once.
            log.exception("recording webhook delivery %s failed", row["id"])

    def _next(self, outcome: Outcome, attempt: int, *, one_shot: bool = False) -> tuple[str, int | None]:
        """The delivery's state after `attempt` and when the next attempt is due."""
        if outcome.succeeded:
            return "succeeded", None
        delays = self.settings.retry_delays
        if outcome.status == 410 or outcome.final or attempt >= len(delays) or one_shot:
            return "failed", None
        delay = delays[attempt] * random.uniform(1 - JITTER, 1 + JITTER)
        if outcome.retry_after_s is not None:
            delay = max(delay, min(outcome.retry_after_s, self.settings.max_retry_after_s))
        return "pending", now_ms() + int(delay * 1000)

    async def _attempt(self, row: Row) -> Outcome:
        """Sends one attempt of a delivery: the dialect's payload, signed, to the job's webhook."""
        target = await self.db.fetch_one(outbox.TARGET_SQL, row["job_id"], row["position"])
        job = await self.db.fetch_one(outbox.JOB_SQL, row["job_id"])
        if target is None or job is None:
            return Outcome(None, "the job or its webhook no longer exists")
        dialect = self.dialects.get(target["dialect"])
        if dialect.secrets is not None:
            keys = await dialect.secrets(self.db, job)
        else:
            keys = await job_secrets(self.db, api_key_id=job["api_key_id"], user_id=job["user_id"])
        fields: dict[str, str] = {"User-Agent": USER_AGENT, **orjson.loads(target["headers"])}
        url = target["url"]
        if target["method"] == "GET":
            body = b""
            url = str(httpx.URL(url).copy_merge_params({"jobId": job["id"], "status": job["state"]}))
        else:
            body = orjson.dumps(await dialect.payload(self.jobs, job, row["event"]))
            fields["Content-Type"] = "application/json"
        fields.update(dialect.signer(keys).headers(row["id"], int(time.time()), body))
        try:
            async with self.http.stream(
                target["method"],
                url,
                headers=fields,
                content=body if body else None,
                timeout_s=self.settings.attempt_timeout_s,
                follow_redirects=False,
            ) as response:
                status = response.status_code
                retry_after = retry_after_s(response.headers)
        except OutboundBlockedError as exc:
            log.warning("webhook %s refused: %s", row["id"], exc)
            return Outcome(None, str(exc)[:500], final=True)
        except OutboundFailedError as exc:
            return Outcome(None, str(exc)[:500])
        if 200 <= status < 300:
            return Outcome(status, None)
        error = "redirects are not followed" if 300 <= status < 400 else f"the receiver answered {status}"
        return Outcome(status, error, retry_after)
