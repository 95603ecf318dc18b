"""The job lifecycle: submit, claim, renew, finish, cancel, recover, and reads. Every dialect calls this."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from conveyor.blocks.base import FileStore
from conveyor.errors import IllegalTransitionError, NotFoundError, QueueFullError, RateLimitedError
from conveyor.jobs import queries as q
from conveyor.jobs.notices import JobNotices, wait_for_notice
from conveyor.jobs.states import TERMINAL, JobState
from conveyor.jobs.values import dumps, encode, rehydrate
from conveyor.store.db import Database, Op, Row
from conveyor.webhooks.outbox import deliveries_op

PENDING_RECOUNT_S = 0.5
PENDING_SAFE_FRACTION = 0.8


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job this process now holds the lease of."""

    id: str
    recipe_id: str
    revision: int
    user_id: str | None
    inputs: dict[str, Any]
    timeout_s: int
    on_interrupt: str
    attempts: int
    webhook_count: int = 0  # its finish writes this many webhook deliveries
    running_event_written: bool = False  # the claim wrote its `running` state event (else the runner emits it)


class JobService:
    """Reads and moves jobs in the store; holds no job in memory (any process can answer for any job)."""

    def __init__(self, db: Database, files: FileStore, *, max_pending: int, inline_max: int) -> None:
        self.db = db
        self.files = files
        self.max_pending = max_pending
        self.inline_max = inline_max
        self._claim_sql = q.claim_sql(db.dialect)
        self._claim_one_sql = q.claim_one_sql(db.dialect)
        self._claim_wrote_event = q.claim_writes_running_event(db.dialect)
        self._pending_seen = 0
        self._counted_at = float("-inf")
        self._submitted_since_count = 0
        # Called after a write that queued webhook deliveries (the dispatcher's `notify`), so they go out at once.
        self.on_deliveries: Callable[[], None] | None = None
        # Wakes this process's waiters on a job (sync invokes, SSE streams) after each write that changes it.
        self.notices = JobNotices()

    def _deliveries_written(self) -> None:
        if self.on_deliveries is not None:
            self.on_deliveries()

    async def _queue_far_from_full(self) -> bool:
        """Whether the queue is surely under its bound, judged from a count at most `PENDING_RECOUNT_S` old.

        Counting the pending jobs walks all of them, too slow for every submit when thousands wait. So the
        count is refreshed twice a second, and only near the bound does each insert count for itself (exactly,
        in the same statement). The margin covers what other processes submitted since the last count.
        """
        now = time.monotonic()
        if now - self._counted_at > PENDING_RECOUNT_S:
            self._pending_seen = int(await self.db.fetch_val(q.count_pending_sql(self.db.dialect)))
            self._counted_at = now
            self._submitted_since_count = 0
        return self._pending_seen + self._submitted_since_count < self.max_pending * PENDING_SAFE_FRACTION

    async def submit(
        self,
        *,
        recipe_id: str,
        revision: int,
        inputs: dict[str, Any],
        timeout_s: float,
        on_interrupt: str = "fail",
        user_id: str | None = None,
        idempotency_key: str | None = None,
        priority: int = 0,
        api_key_id: str | None = None,
        key_cap: int | None = None,
        webhooks: Sequence[tuple[str, str, str, str]] = (),
        job_id: str | None = None,
        extra_ops: Sequence[Op] = (),
    ) -> tuple[Row, bool]:
        """Queues a job; returns (job, created). A repeated idempotency key returns the first job.

        `job_id` (a fresh `uuid7()`) and `extra_ops` let a caller store rows of its own about the job in the same
        transaction as the job, so no executor can claim the job before they exist; the ops must check that the
        job row exists (it is not inserted when the queue is full or the key is at its cap).

        `webhooks` (`(url, method, headers JSON, dialect)`, already checked) are stored with the job, in the
        same transaction. With `key_cap`, the API key `api_key_id` may have at most that many jobs pending or
        running: counted in the insert, so concurrent submits cannot pass it together (`RateLimitedError`).
        """
        job_id = job_id or uuid7()
        at = q.now_ms()
        scope = user_id or ""
        encoded = (await encode(inputs, self.files, self.inline_max)).decode()
        bounded = not await self._queue_far_from_full()
        self._submitted_since_count += 1
        lock = q.key_lock_op(self.db.dialect, api_key_id if key_cap is not None else None)
        results = await self.db.write(
            *lock,
            *q.insert_job_ops(
                job_id=job_id,
                recipe_id=recipe_id,
                revision=revision,
                user_id=user_id,
                priority=priority,
                inputs=encoded,
                idempotency_scope=scope,
                idempotency_key=idempotency_key,
                timeout_s=max(1, round(timeout_s)),
                on_interrupt=on_interrupt,
                created_at=at,
                max_pending=self.max_pending if bounded else None,
                dialect=self.db.dialect,
                api_key_id=api_key_id,
                key_cap=key_cap,
                webhooks=webhooks,
            ),
            *extra_ops,
        )
        if results[len(lock)]:
            return _new_job_row(job_id, recipe_id, revision, user_id, priority, idempotency_key, at), True
        if idempotency_key is not None:
            existing = await q.read_job_by_key(self.db, scope, idempotency_key)
            if existing is not None:
                return existing, False
        if key_cap is not None and api_key_id is not None:
            active = await self.db.fetch_val(q.active_for_key_sql(self.db.dialect), api_key_id)
            if int(active) >= key_cap:
                raise RateLimitedError(
                    f"this API key has {key_cap} jobs pending or running, its limit; retry when one has finished",
                    retry_after_s=1,
                )
        raise QueueFullError(f"the queue is full ({self.max_pending} jobs waiting); retry later", retry_after_s=1)

    async def claim(self, owner: str, limit: int, lease_ms: int) -> list[ClaimedJob]:
        """Takes up to `limit` pending jobs, oldest first within priority, leased to `owner`."""
        rows = await self.db.execute_returning(self._claim_sql, owner, q.now_ms(), lease_ms, limit)
        return self._claimed(rows)

    async def claim_one(self, job_id: str, owner: str, lease_ms: int) -> ClaimedJob | None:
        """Takes the job `job_id` if it is pending, leased to `owner`; None when it is not (already taken, ended,
        or unknown): a task delivered twice runs its job once."""
        rows = await self.db.execute_returning(self._claim_one_sql, owner, q.now_ms(), lease_ms, job_id)
        claimed = self._claimed(rows)
        return claimed[0] if claimed else None

    def _claimed(self, rows: list[Row]) -> list[ClaimedJob]:
        jobs = [_claimed(row, self._claim_wrote_event) for row in rows]
        if jobs and self._claim_wrote_event:
            # Their `running` events are in the store: wake the streams. Cheap: the relay merges a turn's notices,
            # and a short job's ends up in the message of its end.
            self.notices.publish(job.id for job in jobs)
        return jobs

    async def count_stale_pending(self, older_than_ms: int) -> int:
        """How many jobs have been pending and untouched for `older_than_ms`."""
        return int(await self.db.fetch_val(q.COUNT_STALE_PENDING_SQL, q.now_ms() - older_than_ms))

    async def cancel_requested(self, job_id: str) -> bool:
        """Whether the store holds a cancel request for the running job `job_id`."""
        return bool(await self.db.fetch_val(q.CANCEL_REQUESTED_SQL, job_id))

    async def stale_pending(self, older_than_ms: int, limit: int) -> list[Row]:
        """Pending jobs unclaimed and untouched for `older_than_ms`, each marked as touched now."""
        now = q.now_ms()
        rows = await self.db.fetch_all(q.STALE_PENDING_SQL, now - older_than_ms, limit)
        if rows:
            await self.db.write(Op(q.TOUCH_PENDING_SQL, [(row["id"], now) for row in rows], many=True))
        return rows

    async def read_inputs(self, job: ClaimedJob) -> dict[str, Any]:
        """A claimed job's inputs with spilled values read back from the file store."""
        return await rehydrate(job.inputs, self.files)

    async def renew(self, owner: str, job_ids: Sequence[str], lease_ms: int) -> dict[str, bool]:
        """Extends the leases of the jobs `owner` still runs; returns {id: cancel_requested} of the jobs the
        store says `owner` holds. A job missing there was taken from it (its lease lapsed and was recovered)."""
        held = {row["id"]: bool(row["cancel_requested"]) for row in await self.db.fetch_all(q.OWNED_SQL, owner)}
        renew = [(job_id, q.now_ms() + lease_ms, owner) for job_id in sorted(job_ids) if job_id in held]
        if renew:
            await self.db.write(Op(q.RENEW_ONE_SQL, renew, many=True))
        return held

    def event_op(self, events: Sequence[tuple[Any, ...]], owner: str) -> Op:
        """Node events of a running job, written only while `owner` still holds its lease."""
        return Op(q.INSERT_EVENT_IF_OWNER, [(*event, owner) for event in events], many=True)

    async def finish(
        self,
        job_id: str,
        owner: str,
        state: JobState,
        *,
        outputs: dict[str, Any] | None,
        error: dict[str, Any] | None,
        usage: dict[str, Any] | None,
        events: Sequence[tuple[Any, ...]] = (),
        webhook_count: int = 0,
    ) -> bool:
        """Ends a run in one transaction: state, result, error, usage, the last events and the job's webhook
        deliveries (`webhook_count`, from the claim). False if not ours."""
        at = q.now_ms()
        result = None if outputs is None else (await encode(outputs, self.files, self.inline_max)).decode()
        extra = "" if error is None else ',"error":' + dumps(error).decode()
        all_events = [*events, q.state_event(job_id, state, at, extra)]
        results = await self.db.write(
            *q.finish_ops(
                job_id=job_id,
                owner=owner,
                state=state,
                result=result,
                error=None if error is None else dumps(error).decode(),
                usage=None if usage is None else dumps(usage).decode(),
                events=all_events,
                at=at,
                dialect=self.db.dialect,
                webhook_count=webhook_count,
            )
        )
        if results[0]:
            self.notices.publish((job_id,), ended=True)
            if webhook_count:
                self._deliveries_written()
        return bool(results[0])

    async def release(self, job_id: str, owner: str, events: Sequence[tuple[Any, ...]] = ()) -> bool:
        """Puts a claimed job back in the queue (this process is shutting down)."""
        at = q.now_ms()
        state_event = q.state_event(job_id, JobState.PENDING, at)
        results = await self.db.write(q.release_op(job_id, owner, at), q.moved_events([*events, state_event]))
        if results[0]:
            self.notices.publish((job_id,))
        return bool(results[0])

    async def cancel(self, job_id: str) -> Row:
        """Cancels a pending job at once, or asks the runner of a running one to stop it."""
        job = await self.get(job_id)
        state = JobState(job["state"])
        at = q.now_ms()
        if state == JobState.PENDING:
            error = dumps({"code": "cancelled", "message": "cancelled before it started"}).decode()
            extra = ',"error":' + error
            hooks = int(job["webhook_count"])
            count, *_ = await self.db.write(
                Op(q.CANCEL_PENDING_SQL, (job_id, error, at)),
                q.moved_events([q.state_event(job_id, JobState.CANCELLED, at, extra)]),
                *([deliveries_op(job_id, hooks, JobState.CANCELLED.value, at)] if hooks else []),
            )
            if count:
                self.notices.publish((job_id,), ended=True)
                if hooks:
                    self._deliveries_written()
                return await self.get(job_id)
            return await self.cancel(job_id)  # it was claimed meanwhile: ask its runner
        if state == JobState.RUNNING:
            await self.db.execute(q.REQUEST_CANCEL_SQL, job_id, at)
            return await self.get(job_id)
        raise IllegalTransitionError(f"job {job_id} is already {state.value}", details={"state": state.value})

    async def recover(
        self,
        *,
        local_owners: str,
        is_dead: Callable[[str], bool],
        max_resumes: int = 3,
        requeued: list[tuple[str, int]] | None = None,
    ) -> dict[str, int]:
        """Finds running jobs whose lease lapsed (or whose owner on this host died) and fails or re-queues them.

        Jobs of recipes with `on_interrupt: resume` go back to the queue and resume from their last finished
        node, at most `max_resumes` times (a job that keeps crashing its process must not loop for ever); the
        others fail with reason `interrupted`. Re-queued jobs are added to `requeued` as (id, priority) (a Celery
        sweeper sends them to the workers again).
        """
        now = q.now_ms()
        rows = await self.db.fetch_all(q.LAPSED_SQL, now, local_owners)
        counts = {"failed": 0, "resumed": 0}
        for row in rows:
            owner = row["lease_owner"] or ""
            lapsed = row["lease_expires_at"] is not None and row["lease_expires_at"] < now
            # A live runner renews every job it runs, so a lapsed lease is lost whoever holds it (even a
            # live pid: it may be a reused one); a dead runner on this host is found before its lease lapses.
            # The query matched `local_owners` (a LIKE pattern of this host's owners) or a lapsed lease.
            if not lapsed and not is_dead(owner):
                continue
            at = q.now_ms()
            if row["on_interrupt"] == "resume" and row["attempts"] <= max_resumes:
                event = q.state_event(row["id"], JobState.PENDING, at, ',"reason":"resumed"')
                done, _ = await self.db.write(q.release_op(row["id"], owner, at), q.moved_events([event]))
                counts["resumed"] += done
                if done:
                    self.notices.publish((row["id"],))
                    if requeued is not None:
                        requeued.append((row["id"], int(row["priority"])))
            else:
                error = {"code": "interrupted", "message": "the process running this job stopped before it finished"}
                extra = ',"error":' + dumps(error).decode()
                event = q.state_event(row["id"], JobState.FAILED, at, extra)
                hooks = int(row["webhook_count"])
                done, *_ = await self.db.write(
                    q.fail_lapsed_op(row["id"], owner, dumps(error).decode(), at),
                    q.moved_events([event]),
                    *([deliveries_op(row["id"], hooks, JobState.FAILED.value, at)] if hooks else []),
                )
                if done:
                    self.notices.publish((row["id"],), ended=True)
                    if hooks:
                        self._deliveries_written()
                counts["failed"] += done
        return counts

    async def completed_nodes(self, job_id: str) -> dict[str, dict[str, Any]]:
        """Outputs of the nodes a job's earlier runs finished (for resuming it)."""
        completed: dict[str, dict[str, Any]] = {}
        for row in await q.read_finished_nodes(self.db, job_id):
            data = orjson.loads(row["data"])
            completed[row["node"]] = await rehydrate(data.get("outputs") or {}, self.files)
        return completed

    async def wait_ended(
        self,
        job_id: str,
        wait_s: float,
        *,
        read: Callable[[str], Awaitable[Row | None]] | None = None,
        first_delay_s: float = 0.01,
        max_delay_s: float = 0.5,
    ) -> Row:
        """The job once it ended, or as it is after `wait_s` (it goes on); `read` reads the row (default `read`).

        The store is asked, so a job ended by any process is seen: a notice (`notices`) wakes the wait the moment
        this process, or a relayed one, ends it; a poll from `first_delay_s`, doubling to `max_delay_s`, is the
        fallback for ends no notice reports. The first read comes after the first notice or poll: callers wait
        on jobs they have just submitted or asked to stop, which have not ended yet.
        """
        read = read or self.read
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        delay = first_delay_s
        with self.notices.watch(job_id, ends_only=True) as ended:
            while True:
                await wait_for_notice(ended, min(delay, max(deadline - loop.time(), 0.0)))
                ended.clear()
                job = await read(job_id)
                if job is None:  # deleted under us
                    raise NotFoundError("job", job_id)
                if is_terminal(job["state"]) or loop.time() >= deadline:
                    return job
                delay = min(delay * 2, max_delay_s)

    async def read(self, job_id: str) -> Row | None:
        return await q.read_job(self.db, job_id)

    async def get(self, job_id: str) -> Row:
        job = await q.read_job(self.db, job_id)
        if job is None:
            raise NotFoundError("job", job_id)
        return job

    async def outputs(self, job: Row) -> dict[str, Any] | None:
        """A finished job's outputs (spilled values read back), or None."""
        if job["result"] is None:
            return None
        return await rehydrate(orjson.loads(job["result"]), self.files)

    async def events(self, job_id: str, *, after_id: int = 0, limit: int = 500) -> list[Row]:
        return await q.read_events(self.db, job_id, after_id=after_id, limit=limit)

    async def active(self, user_id: str, *, limit: int) -> list[Row]:
        """A user's pending and running jobs, newest first (id, recipe_id, state, user_id and times)."""
        return await q.read_active_jobs(self.db, user_id, limit=limit)

    async def recent(self, user_id: str, *, within_ms: int, limit: int) -> list[Row]:
        """A user's pending and running jobs, then those that ended within the last `within_ms`, newest first.

        At most `limit` of each; the active ones come first, so a cap never hides a job that still runs. Read in
        this order no job falls between them: one that ends between the two reads is found by both and listed
        once, as still active.
        """
        active = await q.read_active_jobs(self.db, user_id, limit=limit)
        ended = await q.read_jobs_finished_since(self.db, user_id, q.now_ms() - within_ms, limit=limit)
        seen = {row["id"] for row in active}
        return active + [row for row in ended if row["id"] not in seen]

    async def list(
        self,
        *,
        limit: int,
        state: str | None = None,
        recipe_id: str | None = None,
        user_id: str | None = None,
        after: tuple[int, str] | None = None,
    ) -> tuple[list[Row], int]:
        rows = await q.read_jobs(self.db, limit=limit, state=state, recipe_id=recipe_id, user_id=user_id, after=after)
        total = await q.count_jobs(self.db, state=state, recipe_id=recipe_id, user_id=user_id)
        return rows, total


def _claimed(row: Row, running_event_written: bool) -> ClaimedJob:
    # Spilled inputs are read back by the runner (`read_inputs`), so one unreadable job fails alone instead of
    # stranding the whole claimed batch.
    return ClaimedJob(
        id=row["id"],
        recipe_id=row["recipe_id"],
        revision=row["revision"],
        user_id=row["user_id"],
        inputs=orjson.loads(row["inputs"]),
        timeout_s=row["timeout_s"],
        on_interrupt=row["on_interrupt"],
        attempts=row["attempts"],
        webhook_count=row["webhook_count"],
        running_event_written=running_event_written,
    )


def uuid7() -> str:
    """A time-ordered UUID (RFC 9562 version 7): 48 bits of milliseconds, then 74 random bits.

    Job ids go into several indexes (the primary key, the events' job index); ids that grow with time land on
    the right-most pages instead of random ones, so a busy store keeps its working set small. (Python 3.11 has
    no `uuid.uuid7`; 3.14 adds one.)
    """
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    value = (
        (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | ((rand >> 62) & 0xFFF) << 64 | 0b10 << 62 | (rand & ((1 << 62) - 1))
    )
    return str(uuid.UUID(int=value))


def is_terminal(state: str) -> bool:
    return JobState(state) in TERMINAL


def _new_job_row(
    job_id: str, recipe_id: str, revision: int, user_id: str | None, priority: int, key: str | None, at: int
) -> dict[str, Any]:
    return {
        "id": job_id,
        "recipe_id": recipe_id,
        "revision": revision,
        "user_id": user_id,
        "state": "pending",
        "priority": priority,
        "idempotency_key": key,
        "error": None,
        "usage": None,
        "cancel_requested": 0,
        "attempts": 0,
        "created_at": at,
        "started_at": None,
        "finished_at": None,
        "updated_at": at,
    }
