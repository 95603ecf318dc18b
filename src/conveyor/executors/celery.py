"""The Celery executor: API processes send job ids to Celery, `conveyor worker` processes run them.

The store stays the truth; Celery only carries "job X is waiting" to a worker. A worker claims the job row
itself (`JobService.claim_one`, the same lease as the local executor), so a task delivered twice, or one whose
job was cancelled or already taken, runs nothing. Tasks are acknowledged late (after the job's end is stored),
one is prefetched at a time, and a worker that dies mid-job has its task handed out again by the broker after
the visibility timeout — by then the sweeper (`executors/sweeper.py`) has usually recovered the job, and the
redelivered task finds nothing to claim. A send that never reached the broker (it was down, or restarted and
lost its queue) is made good by the sweeper too: the job is still `pending` in the store.

Inside a worker, jobs run on one asyncio loop in a thread of their own (`WorkerHost`), with the runtime and a
`LocalExecutor` that claims nothing by itself; Celery's thread pool calls `run_one` there, one job per thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from celery import Celery
from celery.exceptions import Reject
from kombu.transport import redis as kombu_redis

from conveyor.settings import Settings

if TYPE_CHECKING:
    from conveyor.runtime import Runtime

log = logging.getLogger("conveyor.executor")

TASK_NAME = "conveyor.run_job"
DEFAULT_QUEUE = "conveyor"
HIGH_QUEUE = "conveyor.high"
STOP_TIMEOUT_S = 3.0  # each step of stopping that talks to the broker gives up after this


def queue_for(priority: int) -> str:
    """The queue a job goes to: jobs with a priority above 0 have their own, so busy workers can be kept for them."""
    return HIGH_QUEUE if priority > 0 else DEFAULT_QUEUE


class _Channel(kombu_redis.Channel):
    """kombu's Redis channel, keeping one `redis.Redis` client object instead of building one per operation.

    kombu makes a new client for every publish, every delivery's bookkeeping and every ack: 58 µs each here,
    most of it redis-py copying its table of response callbacks, three times per job. A client object holds no
    connection between commands (each command takes one from the pool) and redis-py shares it between threads
    safely, so one per channel and pool serves them all. A new pool (kombu drops it after a fork or an error)
    gets a new client.
    """

    _shared_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        client = self._shared_client
        if client is None or client.connection_pool is not self.pool:
            client = self._shared_client = super()._create_client()  # type: ignore[no-untyped-call]
        return client


class _Transport(kombu_redis.Transport):
    """kombu's Redis transport with `_Channel`, for `redis://` brokers (`celery_app` leaves the others to kombu)."""

    Channel = _Channel


def celery_app(settings: Settings) -> Celery:
    """The Celery app both sides share: the broker (and result backend) from settings, late acks, prefetch 1."""
    url = settings.celery.broker_url.get_secret_value()
    app = Celery("conveyor", broker=url, backend=url, set_as_current=False)
    if urlsplit(url).scheme == "redis":  # TLS (`rediss://`) and socket URLs keep kombu's own transport set-up
        app.conf.broker_transport = _Transport
    app.conf.update(
        task_acks_late=True,  # acknowledged once the job's end is stored, so a worker dying mid-job loses nothing
        # (`task_reject_on_worker_lost` is for pools of child processes; a killed worker's job is recovered by
        # the sweeper, and its task, handed out again after the visibility timeout, then claims nothing.)
        task_ignore_result=True,  # the store holds every result; Celery's backend is not read
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.celery.visibility_timeout_s,
            # A broker that is away or hangs fails a send within seconds (kombu's Redis transport ignores
            # `broker_connection_timeout`); the sweeper sends the job again.
            "socket_timeout": 5.0,
            "socket_connect_timeout": 2.0,
            "socket_keepalive": True,
        },
        broker_connection_retry_on_startup=True,
        task_default_queue=DEFAULT_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


class CeleryDispatch:
    """Sends job ids to the workers from a queue, in batches, on one thread of its own (kombu's producers block
    on the network), so no submit ever waits for the broker.

    A batch that fails (the broker is away: its socket timeouts bound the wait) is dropped and sending pauses
    for `pause_s`: those jobs are pending in the store, and the sweeper sends them again once the broker is
    back. The queue is bounded; past `max_queued`, ids are dropped the same way.
    """

    def __init__(self, app: Celery, *, pause_s: float = 1.0, max_queued: int = 100_000, batch: int = 500) -> None:
        self.app = app
        self.pause_s = pause_s
        self.batch = batch
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(max_queued)
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-send")
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="celery-send")

    def send(self, job_id: str, priority: int = 0) -> bool:
        """Queues one job id for sending; False (logged) when the queue is full (the sweeper sends it later)."""
        try:
            self._queue.put_nowait((job_id, queue_for(priority)))
        except asyncio.QueueFull:
            log.warning("the send queue is full; job %s waits for the sweeper", job_id)
            return False
        return True

    def send_many(self, jobs: list[tuple[str, int]]) -> int:
        """Queues several job ids (id, priority); how many were queued."""
        return sum(self.send(job_id, priority) for job_id, priority in jobs)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await loop.run_in_executor(self._thread, self._send_batch, batch)
            except Exception as exc:
                log.warning("sending %d jobs to the workers failed (the sweeper sends them again): %s", len(batch), exc)
                await asyncio.sleep(self.pause_s)

    def _send_batch(self, batch: list[tuple[str, str]]) -> None:
        with self.app.producer_or_acquire() as producer:  # one connection for the whole batch
            for job_id, queue in batch:
                self.app.send_task(
                    TASK_NAME, args=[job_id], queue=queue, routing_key=queue, ignore_result=True, retry=False,
                    producer=producer, argsrepr=f"['{job_id}']",  # (else Celery's saferepr, per message)
                )  # fmt: skip

    async def drain(self, timeout_s: float) -> None:
        """Waits (bounded) until every queued id was handed to the sending thread."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not self._queue.empty():
                    await asyncio.sleep(0.01)

    async def aclose(self) -> None:
        """Sends what is queued (briefly), then stops; a send stuck on the network is left to its timeout."""
        await self.drain(1.0)
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=STOP_TIMEOUT_S)
        self._thread.shutdown(wait=False, cancel_futures=True)
        # Closing kombu's connections blocks (and may wait on a socket): off the loop, and bounded.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(self.app.close), timeout=STOP_TIMEOUT_S)


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (as `conveyor serve` runs on), asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class WorkerHost:
    """A worker process's asyncio side: the runtime and its executor, on a loop in a thread of their own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = _new_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._runtime: Runtime | None = None
        self._thread = threading.Thread(target=self._main, name="conveyor-worker-loop", daemon=True)

    def start(self, timeout_s: float = 60.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("the worker's runtime did not start in time")
        if self._failure is not None:
            raise RuntimeError(f"the worker's runtime did not start: {self._failure}") from self._failure

    def _main(self) -> None:
        # A Runner, like asyncio.run: when the runtime is closed, whatever task is left on the loop is cancelled
        # and awaited, and the default executor shut down, before the loop closes (nothing leaks a connection).
        with asyncio.Runner(loop_factory=lambda: self.loop) as runner:
            try:
                runner.run(self._serve())
            except BaseException as exc:
                self._failure = exc
                log.exception("the worker's runtime stopped")
            finally:
                self._ready.set()

    async def _serve(self) -> None:
        from conveyor.runtime import open_runtime

        self._stop = asyncio.Event()
        async with open_runtime(self.settings, worker=True) as rt:
            self._runtime = rt
            self._ready.set()
            await self._stop.wait()

    def run(self, job_id: str) -> str:
        """Runs one job on the loop and waits for it (called from Celery's pool threads)."""
        runtime = self._runtime
        if runtime is None or runtime.executor is None or self._failure is not None:
            raise RuntimeError("the worker's runtime is not running")
        future = asyncio.run_coroutine_threadsafe(runtime.executor.run_one(job_id), self.loop)
        return future.result()

    def begin_shutdown(self, grace_s: float) -> None:
        """Stops taking jobs and, after `grace_s`, releases those still running back to the queue."""
        runtime = self._runtime
        if runtime is None or runtime.executor is None or self.loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            asyncio.run_coroutine_threadsafe(runtime.executor.stop(grace_s), self.loop)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Closes the runtime (the executor releases what still runs) and ends the loop's thread."""
        if self._stop is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)


_host: WorkerHost | None = None


def run_job(task: Any, job_id: str) -> str:
    """The task: runs one job on this process's `WorkerHost`; the job id is the whole message."""
    if _host is None:
        raise RuntimeError("no worker runtime in this process")
    outcome = _host.run(job_id)
    if outcome == "released":
        # This worker is stopping: hand the message back, so another worker (or this one, restarted) runs it.
        raise Reject("the worker stopped before the job ended; it goes back to the queue", requeue=True)
    return outcome


def register_task(app: Celery) -> None:
    """Registers `run_job` on `app` only (not shared with other apps, so each test's app gets its own)."""
    app.task(name=TASK_NAME, bind=True, acks_late=True, ignore_result=True, shared=False)(run_job)


@contextlib.contextmanager
def worker_host(settings: Settings) -> Iterator[WorkerHost]:
    """Starts this process's `WorkerHost` for the task to use, and stops it at the end."""
    global _host
    host = WorkerHost(settings)
    host.start()
    _host = host
    try:
        yield host
    finally:
        _host = None
        host.stop()


def run_worker(settings: Settings, *, queues: list[str], concurrency: int, grace_s: float = 10.0) -> None:
    """`conveyor worker`: consumes `queues` with `concurrency` threads until SIGTERM/SIGINT (warm shutdown: jobs
    still running after `grace_s` are released to the queue and their messages handed back)."""
    from celery import signals

    app = celery_app(settings)
    register_task(app)
    with worker_host(settings) as host:

        def shutting_down(**_: Any) -> None:
            host.begin_shutdown(grace_s)

        signals.worker_shutting_down.connect(shutting_down, weak=False)
        argv = [
            "worker",
            "--pool=threads",
            f"--concurrency={concurrency}",
            f"--queues={','.join(queues)}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            f"--loglevel={settings.log_level.upper()}",
            f"--hostname=conveyor-{os.getpid()}@%h",
        ]
        with contextlib.suppress(SystemExit):
            app.worker_main(argv)
