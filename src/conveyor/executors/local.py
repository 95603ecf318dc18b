"""The local executor: an in-process asyncio pool that claims jobs from the store and runs them.

Jobs are claimed with a lease (`owner` = host:pid:nonce) renewed while they run; on start and then every
renewal the executor recovers jobs whose lease lapsed or whose owner process on this host is gone. Node
events are buffered for `EVENT_FLUSH_DELAY_S` and written in group commits; a job that ends sooner writes its
events in the same transaction as its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from conveyor.blocks.base import UsageMeter
from conveyor.engine.runner import Engine, JobTimeoutError, NodeFailedError
from conveyor.jobs import queries as q
from conveyor.jobs.service import ClaimedJob, JobService
from conveyor.jobs.states import JobState
from conveyor.jobs.values import dumps, encode
from conveyor.leases import local_owners_pattern, new_owner, owner_is_dead
from conveyor.recipes.graph import RecipeGraph

log = logging.getLogger("conveyor.executor")

GraphSource = Callable[[str, int], Awaitable[RecipeGraph]]
FINISH_RETRY_DELAYS_S = (0.5, 2.0, 5.0)
# Node events wait this long to be written, with whatever every other job emitted meanwhile. A job that ends
# sooner (most do) writes them with its result, in one statement. A `finished` event of a job that resumes after
# a crash is written at once instead: a resumed run skips the nodes whose `finished` is in the store.
EVENT_FLUSH_DELAY_S = 0.02


class LocalExecutor:
    """Runs up to `concurrency` jobs at once in this process."""

    def __init__(
        self,
        jobs: JobService,
        engine: Engine,
        graphs: GraphSource,
        *,
        concurrency: int,
        lease_s: float,
        renew_interval_s: float,
        poll_interval_s: float,
        max_resumes: int = 3,
        claims: bool = True,
        on_requeued: Callable[[list[tuple[str, int]]], Awaitable[None]] | None = None,
    ) -> None:
        """`claims=False` runs only the jobs handed to `run_one` (a Celery worker); `on_requeued` is told of jobs
        recovery put back in the queue (a Celery process sends them to the workers again)."""
        self.jobs = jobs
        self.engine = engine
        self.graphs = graphs
        self.concurrency = concurrency
        self.lease_ms = int(lease_s * 1000)
        self.renew_interval_s = renew_interval_s
        self.poll_interval_s = poll_interval_s
        self.max_resumes = max_resumes
        self.claims = claims
        self.on_requeued = on_requeued
        self.owner = new_owner()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancel_requested: set[str] = set()
        self._lost: set[str] = set()
        self._finishing: set[str] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._events: dict[str, list[tuple[Any, ...]]] = {}
        self._flush_handle: asyncio.Handle | None = None  # the next write of buffered events
        self._flush_soon = False  # whether that write is due at once rather than after EVENT_FLUSH_DELAY_S
        self._event_writes: set[asyncio.Task[None]] = set()
        self._last_write: asyncio.Task[None] | None = None
        self._job_last_write: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        counts = await self.recover()
        if counts["failed"] or counts["resumed"]:
            log.warning("recovered interrupted jobs: %s", counts)
        self._tasks = [asyncio.create_task(self._renew_loop(), name="executor-renew")]
        if self.claims:
            self._tasks.append(asyncio.create_task(self._claim_loop(), name="executor-claim"))

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stops claiming; waits up to `grace_s` for running jobs, then releases the rest to the queue."""
        self._stopping = True
        self._wake.set()
        renew_loop, *claim_loops = self._tasks
        renew_loop.cancel()
        for claim_loop in claim_loops:
            # The claim loop is not cancelled: cut off inside a claim whose write still commits, it would leave
            # jobs `running` under this owner with no task. It sees `_stopping` and ends by itself.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(claim_loop), timeout=grace_s)
            if not claim_loop.done():
                claim_loop.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        running = list(self._running.values())
        if running:
            _, pending = await asyncio.wait(running, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        if self._event_writes:
            await asyncio.gather(*self._event_writes, return_exceptions=True)

    def notify(self) -> None:
        """A job was queued: look for work now rather than at the next poll."""
        self._wake.set()

    def cancel_local(self, job_id: str) -> bool:
        """Cancels a job this process is running; False when it runs elsewhere (its runner sees the flag)."""
        task = self._running.get(job_id)
        if task is None:
            return False
        if job_id in self._finishing:
            return True  # its result is being stored; it ends in a moment
        self._cancel_requested.add(job_id)
        task.cancel()
        return True

    async def recover(self) -> dict[str, int]:
        requeued: list[tuple[str, int]] = []
        counts = await self.jobs.recover(
            local_owners=local_owners_pattern(), is_dead=self._is_dead, max_resumes=self.max_resumes, requeued=requeued
        )
        if requeued:
            self._wake.set()
            if self.on_requeued is not None:
                await self.on_requeued(requeued)
        return counts

    async def run_one(self, job_id: str) -> str:
        """Claims and runs the job `job_id` (a Celery task's) and waits for it: `done` once its end is stored,
        `skipped` when it was not pending (a duplicate delivery, or taken or cancelled meanwhile: nothing ran),
        `released` when this process stopped it and put it back in the queue (or lost its lease)."""
        if self._stopping:
            return "released"
        job = await self.jobs.claim_one(job_id, self.owner, self.lease_ms)
        if job is None:
            return "skipped"
        if self._stopping:  # claimed while shutting down: give it straight back
            await self._release(job)
            return "released"
        task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
        self._running[job.id] = task
        task.add_done_callback(functools.partial(self._job_done, job.id))
        await asyncio.wait([task])
        return "released" if task.cancelled() else "done"

    def _is_dead(self, owner: str) -> bool:
        if owner == self.owner:
            return False
        if owner.split(":")[1:2] == [str(os.getpid())]:
            return True  # our pid, another nonce: an earlier process of ours that got the same pid
        return owner_is_dead(owner)

    def runs(self, job_id: str) -> bool:
        """Whether this executor is running the job now."""
        return job_id in self._running

    async def _claim_loop(self) -> None:
        while not self._stopping:
            free = self.concurrency - len(self._running)
            claimed: list[ClaimedJob] = []
            if free > 0:
                try:
                    claimed = await self.jobs.claim(self.owner, free, self.lease_ms)
                except Exception:
                    log.exception("claiming jobs failed")
                for job in claimed:
                    if self._stopping:  # claimed while shutting down: give it straight back
                        await self._release(job)
                        continue
                    task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
                    self._running[job.id] = task
                    task.add_done_callback(functools.partial(self._job_done, job.id))
            if claimed and len(claimed) == free:
                continue  # there may be more waiting
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval_s):
                    await self._wake.wait()

    def _job_done(self, job_id: str, _task: object = None) -> None:
        self._running.pop(job_id, None)
        self._cancel_requested.discard(job_id)
        self._lost.discard(job_id)
        self._finishing.discard(job_id)
        self._job_last_write.pop(job_id, None)
        self._events.pop(job_id, None)
        self._wake.set()

    async def _renew_loop(self) -> None:
        loop = asyncio.get_running_loop()
        renewed_at = loop.time()
        while not self._stopping:
            await asyncio.sleep(self.renew_interval_s)
            try:
                # Only jobs running before the renewal read the store: one claimed meanwhile is ours but was
                # not in that read, and must not be taken for lost.
                ids = list(self._running)
                try:
                    held = await self.jobs.renew(self.owner, ids, self.lease_ms)
                except Exception:
                    if loop.time() - renewed_at > self.lease_ms / 1000 - self.renew_interval_s:
                        self._give_up_leases()
                    raise
                renewed_at = loop.time()
                for job_id in ids:
                    task = self._running.get(job_id)
                    if task is None or job_id in self._finishing:
                        continue
                    if job_id not in held:
                        # Our lease lapsed and another process took the job: stop, and write nothing more.
                        log.warning("job %s was taken from this runner (lease lapsed); stopping it", job_id)
                        self._lost.add(job_id)
                        task.cancel()
                    elif held[job_id]:
                        self.cancel_local(job_id)
                await self.recover()
            except Exception:
                log.exception("renewing leases failed")

    def _give_up_leases(self) -> None:
        """The store has been out of reach for about a lease: our leases lapse (or have), and recovery elsewhere
        may run these jobs again. Stop them now rather than run them twice at once; write nothing more."""
        for job_id, task in list(self._running.items()):
            if job_id not in self._finishing:
                log.warning("job %s stopped: its lease could not be renewed", job_id)
                self._lost.add(job_id)
                task.cancel()

    def _emit_for(self, job: ClaimedJob) -> Callable[[str, str, dict[str, Any]], None]:
        job_id = job.id
        buffer = self._events.setdefault(job_id, [])
        resumes = job.on_interrupt == "resume"

        def emit(kind: str, node: str, data: dict[str, Any]) -> None:
            buffer.append((job_id, kind, node or None, data, q.now_ms()))
            self._request_flush(soon=resumes and kind == "finished")

        return emit

    def _request_flush(self, *, soon: bool) -> None:
        if self._flush_handle is not None:
            if not soon or self._flush_soon:
                return
            self._flush_handle.cancel()  # a delayed write becomes an immediate one
        loop = asyncio.get_running_loop()
        self._flush_soon = soon
        if soon:
            self._flush_handle = loop.call_soon(self._schedule_event_flush)
        else:
            self._flush_handle = loop.call_later(EVENT_FLUSH_DELAY_S, self._schedule_event_flush)

    def _schedule_event_flush(self) -> None:
        self._flush_handle = None
        batch: list[tuple[Any, ...]] = []
        jobs_in_batch = []
        for job_id, buffer in self._events.items():
            if buffer:
                batch.extend(buffer)
                buffer.clear()
                jobs_in_batch.append(job_id)
        if batch:
            task = asyncio.create_task(self._write_events(batch, self._last_write))
            self._last_write = task
            for job_id in jobs_in_batch:
                self._job_last_write[job_id] = task
            self._event_writes.add(task)
            task.add_done_callback(self._event_writes.discard)

    async def _write_events(self, batch: list[tuple[Any, ...]], previous: asyncio.Task[None] | None) -> None:
        """Writes a batch after the batch before it, so a job's events keep the order they happened in."""
        try:
            rows = [await self._encode_event(event) for event in batch]
            if previous is not None:
                await asyncio.wait([previous])
            await self.jobs.db.write(self.jobs.event_op(rows, self.owner))
        except Exception:
            log.exception("writing node events failed")
            return
        self.jobs.notices.publish(dict.fromkeys(row[0] for row in rows))

    async def _events_written(self, job_id: str) -> None:
        """Waits until the batches holding this job's events are in the store (its last events follow them).

        Only this job's newest batch is awaited (batches commit in order, so the earlier ones are in too):
        waiting for every batch in flight would starve a finishing job while other jobs keep emitting.
        """
        # While we wait, a flush scheduled earlier may move this job's last buffered events into a newer batch:
        # wait for that one too (the job emits nothing more, so this ends after at most one more round).
        while (last := self._job_last_write.pop(job_id, None)) is not None:
            if not last.done():
                await asyncio.wait([last])

    async def _encode_event(self, event: tuple[Any, ...]) -> tuple[Any, ...]:
        job_id, kind, node, data, at = event
        if kind == "finished" and "outputs" in data:
            outputs = (await encode(data["outputs"], self.jobs.files, self.jobs.inline_max)).decode()
            rest = dumps({k: v for k, v in data.items() if k != "outputs"}).decode()
            encoded = rest[:-1] + (',"outputs":' if len(rest) > 2 else '"outputs":') + outputs + "}"
        else:
            encoded = dumps(data).decode()
        return (job_id, kind, node, encoded, at)

    async def _drain_events(self, job_id: str) -> list[tuple[Any, ...]]:
        await self._events_written(job_id)
        buffer = self._events.pop(job_id, [])
        return [await self._encode_event(event) for event in buffer]

    async def _run(self, job: ClaimedJob) -> None:
        emit = self._emit_for(job)
        if not job.running_event_written:
            emit("state", "", {"state": "running", "attempt": job.attempts})
        usage = UsageMeter()
        state, outputs, error = JobState.FAILED, None, None
        try:
            graph = await self.graphs(job.recipe_id, job.revision)
            inputs = await self.jobs.read_inputs(job)
            completed = await self.jobs.completed_nodes(job.id) if job.attempts > 1 else {}
            outputs = await self.engine.run(
                graph,
                inputs,
                job_id=job.id,
                user_id=job.user_id,
                emit=emit,
                usage=usage,
                completed=completed,
                timeout_s=float(job.timeout_s),
            )
            state = JobState.SUCCEEDED
        except NodeFailedError as exc:
            error = {"code": "node_failed", "message": str(exc), "node": exc.node, "block": exc.block}
        except JobTimeoutError as exc:
            error = {"code": "timeout", "message": str(exc)}
        except asyncio.CancelledError:
            if job.id in self._lost:
                self._events.pop(job.id, None)
                raise
            if job.id not in self._cancel_requested:
                await self._release(job)
                raise
            state, error = JobState.CANCELLED, {"code": "cancelled", "message": "cancelled while running"}
        except Exception as exc:
            log.exception("job %s failed inside the engine", job.id)
            error = {"code": "internal_error", "message": f"internal error: {type(exc).__name__}"}
        # From here on the task is not cancelled (see `cancel_local`): a cancel arriving while the result is
        # stored must not leave the job `running`.
        self._finishing.add(job.id)
        await self._finish(job, state, outputs, error, usage)

    async def _finish(
        self,
        job: ClaimedJob,
        state: JobState,
        outputs: dict[str, Any] | None,
        error: dict[str, Any] | None,
        usage: UsageMeter,
    ) -> None:
        totals = usage.totals() | {"by_node": usage.by_node}
        events: list[tuple[Any, ...]] | None = None
        for attempt, delay in enumerate(FINISH_RETRY_DELAYS_S, start=1):
            try:
                if events is None:
                    events = await self._drain_events(job.id)
                ours = await self.jobs.finish(
                    job.id,
                    self.owner,
                    state,
                    outputs=outputs,
                    error=error,
                    usage=totals,
                    events=events,
                    webhook_count=job.webhook_count,
                )
                break
            except Exception:
                log.exception("storing the result of job %s failed (try %d)", job.id, attempt)
                await asyncio.sleep(delay)
        else:
            # Given up: the lease is no longer renewed once this task ends, so the job lapses and recovery
            # fails (or resumes) it rather than leaving it `running`.
            return
        if not ours:
            log.warning("job %s was no longer ours when it finished; its result was not stored", job.id)

    async def _release(self, job: ClaimedJob) -> None:
        events = await self._drain_events(job.id)
        with contextlib.suppress(Exception):
            await asyncio.shield(self.jobs.release(job.id, self.owner, events))
