"""The HTTP application: `create_app(settings)` builds it; the lifespan opens and closes the runtime."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor import __version__
from conveyor.api import (
    auth,
    fid,
    files,
    gptbots,
    health,
    jobs,
    keys,
    models,
    omni,
    omni_conversations,
    omni_topics,
    omni_webhooks,
    omnitool,
    recipes,
    webhooks,
)
from conveyor.api.errors import dialect_error_body, install_error_handlers
from conveyor.recipes.seed import seed_demo_recipes
from conveyor.runtime import open_runtime
from conveyor.settings import Settings
from conveyor.webhooks.dialects import default_dialects


class BodyLimit:
    """Refuses request bodies over a limit with 413, counting bytes as they arrive (chunked bodies too).

    Uploads (`/api/v1/files`, Omnitool's `/fid`) get the file limit; every other route the JSON body limit.
    """

    def __init__(self, app: ASGIApp, *, max_body: int, max_upload: int) -> None:
        self.app = app
        self.max_body = max_body
        self.max_upload = max_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = self.max_upload if path.startswith("/api/v1/files") or path == "/fid" else self.max_body
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _too_large(send, limit, path)
                return
        received = 0
        over = False

        async def counted() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise _BodyTooLarge(limit)
            return message

        replaced = False

        async def guarded_send(message: Message) -> None:
            # Frameworks turn an exception raised while reading the body into their own 400; answer 413 instead.
            nonlocal replaced
            if over:
                if not replaced:
                    replaced = True
                    await _too_large(send, limit, path)
                return
            await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except _BodyTooLarge:
            if not replaced:
                await _too_large(send, limit, path)


class _BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit


async def _too_large(send: Send, limit: int, path: str) -> None:
    import orjson

    message = f"request body is over {limit} bytes"
    body = orjson.dumps(dialect_error_body(path, "payload_too_large", message, status=413))
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings | None = None, *, run_executor: bool = True) -> FastAPI:
    """Builds the app; nothing is opened until its lifespan starts."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        dialects = default_dialects()
        dialects.register(gptbots.DIALECT, gptbots.webhook_payload)
        omni_box = omni_webhooks.register_dialect(dialects, settings)
        async with open_runtime(settings, run_executor=run_executor, dialects=dialects) as rt:
            app.state.runtime = rt
            omni_relay = await omni.start(app, rt, omni_box)
            app.state.models = rt.analytics  # one model cache per process, shared with the blocks
            if settings.seed_demo:
                from conveyor.analytics.seed import seed_demo_model  # builds the demo DuckDB file: import when used

                await seed_demo_recipes(rt.recipes)
                await seed_demo_model(rt.db, settings.data_dir)
            # Everything alive now lives as long as the process: keep it out of the collector's full passes,
            # which otherwise walk the whole ~90 MB heap about once a second under load (60-100 ms each).
            gc.collect()
            gc.freeze()
            try:
                yield {}
            finally:
                gc.unfreeze()
                if omni_relay is not None:
                    await omni_relay.stop()

    # FastAPI's native OpenTelemetry asks the global providers on every request even when none is set up.
    telemetry = settings.telemetry
    app = FastAPI(
        telemetry={"tracing": telemetry, "metrics": telemetry, "logs": telemetry, "operation_spans": telemetry},
        title="Conveyor",
        version=__version__,
        summary="Runs AI recipes as durable jobs behind a REST API.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    # The routes go straight onto the app, hot ones first: `include_router` wraps each router in a layer that
    # matching walks through on every request (~20% of a trivial job's server CPU, bench/profile_jobs.py).
    # The dialects' run routes are hot too: code calls them as often as the native submit.
    for router in (
        jobs.router,
        gptbots.router,
        omni.router,
        omni_topics.router,
        omni_conversations.router,
        omnitool.router,
        health.router,
        recipes.router,
        files.router,
        auth.router,
        keys.router,
        fid.router,
        webhooks.router,
        models.router,
    ):
        app.router.routes.extend(router.routes)
    app.add_middleware(BodyLimit, max_body=settings.limits.max_body_bytes, max_upload=settings.limits.max_upload_bytes)
    app.state.settings = settings
    return app
