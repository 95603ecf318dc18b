"""The composition root: opens every service a server process needs, in order, and closes them in reverse.

Both the HTTP app's lifespan and the CLI use `open_runtime(settings)`; nothing here imports FastAPI.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from conveyor.auth.secret import load_signing_secret
from conveyor.auth.service import AuthService
from conveyor.auth.tokens import TokenCodec
from conveyor.blocks import default_registry
from conveyor.blocks.base import BlockRegistry
from conveyor.engine.runner import Engine
from conveyor.executors.local import LocalExecutor
from conveyor.jobs.service import JobService
from conveyor.net import GuardedClient
from conveyor.recipes.service import RecipeService
from conveyor.settings import Settings
from conveyor.store.blobs import LocalBlobStore
from conveyor.store.db import Database, open_database
from conveyor.store.files import FileService
from conveyor.webhooks.dialects import WebhookDialects, default_dialects
from conveyor.webhooks.dispatcher import Dispatcher

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
    dispatcher: Dispatcher | None = None  # runs where the executor runs


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings, *, run_executor: bool = True, dialects: WebhookDialects | None = None
) -> AsyncIterator[Runtime]:
    """Connects the store and starts the executor; everything is closed again on exit.

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
        stack.push_async_callback(db.close)
        codec = TokenCodec(secret, issuer=settings.auth.issuer, audience=settings.auth.audience)
        auth = AuthService(db, codec, max_token_ttl_s=settings.auth.max_token_ttl_s)
        await auth.ensure_admin(
            settings.auth.admin_name, settings.auth.admin_password.get_secret_value(), settings.data_dir
        )
        http = GuardedClient(settings.net)
        stack.push_async_callback(http.aclose)
        blobs = LocalBlobStore(settings.files_path)
        files = FileService(db, blobs, http, settings.limits)
        registry = default_registry()
        recipes = RecipeService(db, registry, max_nodes=settings.limits.max_recipe_nodes)
        jobs = JobService(
            db, files, max_pending=settings.limits.max_pending_jobs, inline_max=settings.files.inline_value_max_bytes
        )
        engine = Engine(files=files, http=http, limits=settings.limits, load_graph=recipes.latest_graph)
        executor = None
        dialects = default_dialects() if dialects is None else dialects
        dispatcher = None
        if run_executor:
            # Started before the executor and stopped after it, so the deliveries of jobs that finish while the
            # executor stops are sent too (or, past the grace, left in the outbox for the next start).
            dispatcher = Dispatcher(db, jobs, http, dialects, settings.webhooks)
            jobs.on_deliveries = dispatcher.notify
            await dispatcher.start()
            stack.push_async_callback(dispatcher.stop)
            executor = LocalExecutor(
                jobs,
                engine,
                recipes.graph,
                concurrency=settings.executor.concurrency,
                lease_s=settings.executor.lease_s,
                renew_interval_s=settings.executor.renew_interval_s,
                poll_interval_s=settings.executor.poll_interval_s,
                max_resumes=settings.executor.max_resumes,
            )
            await executor.start()
            stack.push_async_callback(executor.stop)
        yield Runtime(settings, db, registry, http, files, recipes, jobs, engine, executor, auth, dialects, dispatcher)
