"""The composition root: opens every service a server process needs, in order, and closes them in reverse.

Both the HTTP app's lifespan and the CLI use `open_runtime(settings)`; nothing here imports FastAPI.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from conveyor.analytics.seed import demo_generators
from conveyor.analytics.store import ModelService
from conveyor.auth.secret import load_signing_secret
from conveyor.auth.service import AuthService
from conveyor.auth.tokens import TokenCodec
from conveyor.blocks import default_registry
from conveyor.blocks.base import BlockRegistry
from conveyor.engine.runner import Engine
from conveyor.executors.local import LocalExecutor
from conveyor.jobs.service import JobService
from conveyor.llm.models import LanguageModels
from conveyor.net import GuardedClient
from conveyor.recipes.service import RecipeService
from conveyor.settings import Settings
from conveyor.store.blobs import open_blob_store
from conveyor.store.db import Database, open_database
from conveyor.store.files import FileService
from conveyor.webhooks.dialects import WebhookDialects, default_dialects
from conveyor.webhooks.dispatcher import Dispatcher

if TYPE_CHECKING:
    from conveyor.executors.celery import CeleryDispatch
    from conveyor.executors.relay import RedisNoticeRelay

log = logging.getLogger("conveyor")


@dataclass(slots=True)
class Runtime:
    """Everything a request handler or command may use, built once per process."""

    settings: Settings
    db: Database
    registry: BlockRegistry
    http: GuardedClient
    files: FileService
    recipes: RecipeService
    jobs: JobService
    engine: Engine
    executor: LocalExecutor | None
    auth: AuthService
    webhook_dialects: WebhookDialects = field(default_factory=default_dialects)
    dispatcher: Dispatcher | None = None  # webhooks: in every server process, and in workers
    celery: CeleryDispatch | None = None  # distributed mode: sends queued jobs to the workers
    relay: RedisNoticeRelay | None = None  # distributed mode: job notices and cancel requests between processes
    llm: LanguageModels | None = None  # language models by provider, for blocks and the AI API
    analytics: ModelService | None = None  # data models, for `ask_data`, the models API and the AI API

    async def job_queued(self, job_id: str, priority: int = 0) -> None:
        """A job was just queued: wake this process's executor, or send it to the Celery workers."""
        if self.celery is not None:
            self.celery.send(job_id, priority)
        elif self.executor is not None:
            self.executor.notify()

    def cancel_running(self, job_id: str) -> bool:
        """Stops a running job now: here if this process runs it, else by asking the workers over the relay;
        False when neither can (its runner sees the job's cancel flag when it next renews its lease)."""
        if self.executor is not None and self.executor.cancel_local(job_id):
            return True
        if self.relay is not None:
            self.relay.request_cancel(job_id)
            return True
        return False


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    run_executor: bool = True,
    worker: bool = False,
    dialects: WebhookDialects | None = None,
) -> AsyncIterator[Runtime]:
    """Connects the store and starts what this process runs; everything is closed again on exit.

    A server (`run_executor`, not `worker`) runs the webhook dispatcher and, by `executor.kind`, either the local
    executor or, in distributed mode, the Celery dispatch, the sweeper and the notice relay. A Celery worker
    (`worker`) runs a local executor that claims only the jobs its tasks name, and the relay (which also tells
    servers of the webhook deliveries its jobs wrote); no dispatcher, as the dialects' payloads are built in
    `api/`. A command-line tool
    (neither) runs none of them.

    `dialects` are the webhook dialects the dispatcher delivers in (default: the native one); the app adds the API
    dialects' before the dispatcher starts, so no delivery of theirs is ever built in another shape.
    """
    async with contextlib.AsyncExitStack() as stack:
        db = open_database(
            settings.database_url,
            busy_timeout_ms=settings.database.busy_timeout_ms,
            pool_size=settings.database.pool_size,
        )
        secret = load_signing_secret(settings.auth.jwt_secret.get_secret_value(), settings.data_dir)
        await db.connect()
        stack.push_async_callback(_timed, db.close)
        codec = TokenCodec(secret, issuer=settings.auth.issuer, audience=settings.auth.audience)
        auth = AuthService(db, codec, max_token_ttl_s=settings.auth.max_token_ttl_s)
        if not worker:
            await auth.ensure_admin(
                settings.auth.admin_name, settings.auth.admin_password.get_secret_value(), settings.data_dir
            )
        http = GuardedClient(settings.net)
        stack.push_async_callback(_timed, http.aclose)
        blobs = open_blob_store(settings)
        if (close_blobs := getattr(blobs, "aclose", None)) is not None:
            stack.push_async_callback(_timed, close_blobs)
        files = FileService(db, blobs, http, settings.limits)
        registry = default_registry()
        recipes = RecipeService(db, registry, max_nodes=settings.limits.max_recipe_nodes)
        jobs = JobService(
            db, files, max_pending=settings.limits.max_pending_jobs, inline_max=settings.files.inline_value_max_bytes
        )
        llm = LanguageModels(settings.llm, http)  # providers are made, and weights loaded, on first use
        stack.push_async_callback(_timed, llm.aclose)
        analytics = ModelService(
            db, check_timeout_s=settings.analytics.check_timeout_s, generated=demo_generators(settings.data_dir)
        )
        engine = Engine(
            files=files,
            http=http,
            limits=settings.limits,
            load_graph=recipes.latest_graph,
            llm=llm,
            analytics=analytics,
        )
        dialects = default_dialects() if dialects is None else dialects
        runtime = Runtime(settings, db, registry, http, files, recipes, jobs, engine, None, auth, dialects)
        runtime.llm, runtime.analytics = llm, analytics
        distributed = settings.executor.kind == "celery"
        serving = run_executor and not worker
        if serving:
            # Started before the executor and stopped after it, so the deliveries of jobs that finish while the
            # executor stops are sent too (or, past the grace, left in the outbox for the next start). Workers run
            # none: the webhook dialects' payloads are built by the API layer, so servers deliver what workers end.
            runtime.dispatcher = Dispatcher(db, jobs, http, dialects, settings.webhooks)
            jobs.on_deliveries = runtime.dispatcher.notify
            await runtime.dispatcher.start()
            stack.push_async_callback(_timed, runtime.dispatcher.stop)
        if (serving or worker) and distributed:
            await _start_distributed(runtime, stack, worker=worker)
        if worker or (serving and not distributed):
            runtime.executor = LocalExecutor(
                jobs,
                engine,
                recipes.graph,
                concurrency=settings.executor.concurrency,
                lease_s=settings.executor.lease_s,
                renew_interval_s=settings.executor.renew_interval_s,
                poll_interval_s=settings.executor.poll_interval_s,
                max_resumes=settings.executor.max_resumes,
                claims=not worker,
                on_requeued=_resend(runtime.celery) if worker else None,
            )
            await runtime.executor.start()
            stack.push_async_callback(_timed, runtime.executor.stop)
            if runtime.relay is not None:
                runtime.relay.on_cancel = _cancel_when_requested(runtime.jobs, runtime.executor)
        yield runtime


async def _start_distributed(runtime: Runtime, stack: contextlib.AsyncExitStack, *, worker: bool) -> None:
    """Distributed mode's parts: the Celery dispatch, the notice relay and, in servers, the sweeper."""
    from conveyor.executors.celery import CeleryDispatch, celery_app
    from conveyor.executors.relay import RedisNoticeRelay
    from conveyor.executors.sweeper import Sweeper

    settings = runtime.settings
    runtime.celery = CeleryDispatch(celery_app(settings))
    await runtime.celery.start()
    stack.push_async_callback(_timed, runtime.celery.aclose)
    broker_url = settings.celery.broker_url.get_secret_value()
    relay = runtime.relay = RedisNoticeRelay(broker_url, runtime.jobs.notices, runs_jobs=worker)
    if runtime.dispatcher is not None:
        relay.on_deliveries = runtime.dispatcher.notify  # a worker wrote deliveries: send them now
    else:
        runtime.jobs.on_deliveries = relay.announce_deliveries
    await relay.start()
    stack.push_async_callback(_timed, relay.stop)
    if not worker:
        sweeper = Sweeper(runtime.jobs, runtime.celery, settings.celery, max_resumes=settings.executor.max_resumes)
        await sweeper.start()
        stack.push_async_callback(_timed, sweeper.stop)


SLOW_STOP_S = 2.0


async def _timed(stop: Callable[[], Awaitable[object]]) -> None:
    """Runs one step of closing the runtime, and says so when it is slow (a stuck shutdown names its step)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await stop()
    finally:
        took = loop.time() - started
        if took > SLOW_STOP_S:
            log.warning("stopping %s took %.1f s", getattr(stop, "__qualname__", stop), took)


def _cancel_when_requested(jobs: JobService, executor: LocalExecutor) -> Callable[[str], None]:
    """Stops a job this worker runs when another process relays a cancel for it, once the store confirms the
    request: anyone who can reach the broker can publish on the channel."""
    checks: set[asyncio.Task[None]] = set()

    async def check(job_id: str) -> None:
        try:
            if await jobs.cancel_requested(job_id):
                executor.cancel_local(job_id)
        except Exception:
            log.exception("checking a relayed cancel of job %s failed", job_id)

    def on_cancel(job_id: str) -> None:
        if executor.runs(job_id):
            task = asyncio.create_task(check(job_id))
            checks.add(task)
            task.add_done_callback(checks.discard)

    return on_cancel


def _resend(dispatch: CeleryDispatch | None) -> Callable[[list[tuple[str, int]]], Awaitable[None]] | None:
    """Sends jobs that recovery put back in the queue ((id, priority)) to the workers again."""
    if dispatch is None:
        return None

    async def resend(jobs: list[tuple[str, int]]) -> None:
        dispatch.send_many(jobs)

    return resend
