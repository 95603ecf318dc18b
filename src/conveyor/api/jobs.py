"""Native job routes: submit, list, read, result, cancel, and the Server-Sent Events stream of a job."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from conveyor.api.auth import principal
from conveyor.api.deps import decode_cursor, iso, json_response, page, parse_event_id, path_id, runtime
from conveyor.auth.principal import Principal
from conveyor.errors import NotFoundError, ValidationError
from conveyor.jobs import queries
from conveyor.jobs.inputs import prepare_inputs
from conveyor.jobs.notices import wait_for_notice
from conveyor.jobs.service import is_terminal
from conveyor.recipes.graph import RecipeGraph
from conveyor.runtime import Runtime
from conveyor.store.db import Op, Row
from conveyor.webhooks.validation import check_webhooks

router = APIRouter(tags=["jobs"])

JobStateName = Literal["pending", "running", "succeeded", "failed", "cancelled"]


class JobCreate(BaseModel):
    """A job to run: which recipe (id or name), its inputs, and optionally a revision and priority."""

    model_config = ConfigDict(extra="forbid")

    recipe: str = Field(min_length=1, max_length=200)
    inputs: dict[str, Any] = Field(default_factory=dict)
    revision: int | None = Field(default=None, ge=1)
    priority: int = Field(default=0, ge=-100, le=100)
    # `[{"url", "method"?, "headers"?}]`, checked by `check_webhooks` (shared by every dialect).
    webhooks: list[Any] | None = None

    @field_validator("recipe")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator("inputs")
    @classmethod
    def _fits_64_bits(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not fits_64_bits(value):
            raise ValueError("inputs hold a number beyond 64 bits")
        return value


INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # what orjson, which stores the inputs, can encode


def fits_64_bits(value: Any) -> bool:
    """Whether every integer in a JSON value is one orjson can encode (it refuses larger ones).

    Walked with a stack, not recursion, and without encoding: inputs may hold a 20 MB base64 image.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not INT_MIN <= item <= INT_MAX:
            return False
    return True


def job_summary(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "state": row["state"],
        "recipe": row["recipe_id"],
        "revision": row["revision"],
        "priority": row["priority"],
        "attempts": row["attempts"],
        "cancel_requested": bool(row["cancel_requested"]),
        "created_at": iso(row["created_at"]),
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
        "error": orjson.loads(row["error"]) if row["error"] else None,
        "usage": _usage(row["usage"]),
    }


def _usage(raw: str | None) -> dict[str, Any] | None:
    if not raw:
        return None
    usage: dict[str, Any] = orjson.loads(raw)
    usage.pop("by_node", None)
    return usage


JOB_CREATE_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": JobCreate.model_json_schema()}}},
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "maxLength": 255},
            "description": "A retried submit with the same key returns the first job (200) instead of a new one.",
        }
    ],
}
MAX_IDEMPOTENCY_KEY = 255


@router.post("/api/v1/jobs", status_code=202, summary="Submit a job", openapi_extra=JOB_CREATE_BODY)
async def submit_job(request: Request) -> Response:
    # The hot path: the body is validated by pydantic straight from its bytes, without FastAPI's dependency
    # and body machinery, which cost about twice the rest of a submit (bench/profile_jobs.py).
    rt: Runtime = request.app.state.runtime
    me = await principal(request)
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None:
        if not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise ValidationError(f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters")
        # A used key answers with its first job whatever this body is: looked up before the body is read,
        # so a retry is never refused for a recipe deleted or an input changed since. Keys are per user.
        existing = await queries.read_job_by_key(rt.db, me.user_id, idempotency_key)
        if existing is not None:
            return json_response(job_summary(existing), 200)
    body = JobCreate.model_validate_json(await request.body())
    job, created = await submit_for(
        rt,
        me,
        body.recipe,
        body.inputs,
        revision=body.revision,
        priority=body.priority,
        idempotency_key=idempotency_key,
        webhooks=check_webhooks(body.webhooks),
    )
    return json_response(job_summary(job), 202 if created else 200)


async def submit_for(
    rt: Runtime,
    me: Principal,
    recipe_ref: str | tuple[Row, RecipeGraph],
    raw_inputs: Any,
    *,
    revision: int | None = None,
    priority: int = 0,
    idempotency_key: str | None = None,
    webhooks: Sequence[tuple[str, str, str, str]] = (),
    job_id: str | None = None,
    extra_ops: Sequence[Op] = (),
) -> tuple[Row, bool]:
    """Submits a job of a recipe the caller sees and may run, as the caller; every dialect's submit ends here.

    `recipe_ref` is a recipe's id or name, or the recipe and graph a dialect already resolved (as the caller,
    at `revision`). `webhooks` are `(url, method, headers JSON, dialect)`, checked by the caller. `job_id` and
    `extra_ops`: rows the caller stores with the job, in its transaction (see `JobService.submit`).
    """
    if isinstance(recipe_ref, str):
        recipe, graph = await rt.recipes.resolve(recipe_ref, revision, viewer=me.user_id)
    else:
        recipe, graph = recipe_ref
    me.require_run(recipe["id"])
    inputs = await prepare_inputs(graph.contract, raw_inputs, rt.files.bind(user_id=me.user_id, job_id=None))
    job, created = await rt.jobs.submit(
        recipe_id=recipe["id"],
        revision=revision or recipe["latest_revision"],
        inputs=inputs,
        timeout_s=graph.doc.timeout_s or rt.settings.limits.job_timeout_s,
        on_interrupt=graph.doc.on_interrupt,
        idempotency_key=idempotency_key,
        priority=priority,
        user_id=me.user_id,
        api_key_id=me.api_key_id,
        key_cap=None
        if me.api_key_id is None
        else rt.auth.keys.concurrency_cap(me.api_key_id, rt.settings.keys.max_concurrent_jobs),
        webhooks=webhooks,
        job_id=job_id,
        extra_ops=extra_ops,
    )
    if created:
        await rt.job_queued(job["id"], priority)
    return job, created


async def own_job(rt: Runtime, me: Principal, job_id: str) -> Row:
    """The caller's job; another user's is as unknown as a missing one (404), so ids reveal nothing."""
    job = await rt.jobs.get(path_id("job", job_id))
    if job["user_id"] != me.user_id:
        raise NotFoundError("job", job_id)
    return job


@router.get("/api/v1/jobs", summary="List jobs")
async def list_jobs(
    rt: Runtime = Depends(runtime),
    me: Principal = Depends(principal),
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = Query(None, max_length=200),
    state: JobStateName | None = Query(None),
    recipe: str | None = Query(None, max_length=200),
) -> dict[str, Any]:
    recipe_id = await _recipe_filter(rt, me, recipe) if recipe else None
    rows, total = await rt.jobs.list(
        limit=limit, state=state, recipe_id=recipe_id, user_id=me.user_id, after=decode_cursor(cursor)
    )
    return page([job_summary(row) for row in rows], rows, total, limit)


async def _recipe_filter(rt: Runtime, me: Principal, ref: str) -> str:
    """The recipe id a list filters on: a live recipe's id or name, else the value itself as an id.

    A deleted recipe is not found by id or name, but its jobs stay and are listed by its id.
    """
    if "\x00" in ref:
        raise ValidationError("recipe must not contain NUL characters")
    try:
        row = await rt.recipes.get(ref, viewer=me.user_id)
    except NotFoundError:
        return ref
    recipe_id: str = row["id"]
    return recipe_id


@router.get("/api/v1/jobs/{job_id}", summary="Read a job: state, timings per node, error, usage")
async def read_job(job_id: str, rt: Runtime = Depends(runtime), me: Principal = Depends(principal)) -> dict[str, Any]:
    job = await own_job(rt, me, job_id)
    events = await rt.jobs.events(job_id, limit=10_000)
    usage = orjson.loads(job["usage"]) if job["usage"] else {}
    return job_summary(job) | {"nodes": node_timings(events, usage.get("by_node", {}))}


def node_timings(events: list[Row], usage_by_node: dict[str, Any]) -> dict[str, Any]:
    """Per-node state, attempts, times and usage, folded from the job's events."""
    nodes: dict[str, dict[str, Any]] = {}
    for event in events:
        node = event["node"]
        if not node:
            continue
        data = orjson.loads(event["data"])
        entry = nodes.setdefault(node, {"state": "pending", "attempts": 0, "started_at": None, "finished_at": None})
        kind = event["kind"]
        if kind == "started":
            entry.update(state="running", attempts=data.get("attempt", 1))
            entry["started_at"] = entry["started_at"] or iso(event["at"])
        elif kind in ("finished", "failed", "skipped"):
            entry.update(state=kind if kind != "finished" else "succeeded", finished_at=iso(event["at"]))
            entry["duration_ms"] = data.get("duration_ms")
            if kind == "failed":
                entry["error"] = data.get("error")
        elif kind == "retried":
            entry["last_error"] = data.get("error")
    for node, usage in usage_by_node.items():
        nodes.setdefault(node, {})["usage"] = usage
    return nodes


@router.get("/api/v1/jobs/{job_id}/result", summary="A job's outputs (202 while it runs)")
async def read_result(job_id: str, rt: Runtime = Depends(runtime), me: Principal = Depends(principal)) -> Response:
    job = await own_job(rt, me, job_id)
    if not is_terminal(job["state"]):
        return JSONResponse({"id": job_id, "state": job["state"], "outputs": None}, status_code=202)
    error = orjson.loads(job["error"]) if job["error"] else None
    return JSONResponse({"id": job_id, "state": job["state"], "outputs": await rt.jobs.outputs(job), "error": error})


@router.post("/api/v1/jobs/{job_id}/cancel", summary="Cancel a job")
async def cancel_job(job_id: str, rt: Runtime = Depends(runtime), me: Principal = Depends(principal)) -> Response:
    me.require_run((await own_job(rt, me, job_id))["recipe_id"])  # only what the token may run
    job = await rt.jobs.cancel(job_id)
    if job["state"] == "running" and rt.cancel_running(job_id):
        # The runner stops the blocks and stores the cancellation within milliseconds: answer with the end.
        job = await rt.jobs.wait_ended(job_id, CANCEL_WAIT_S)
    return JSONResponse(job_summary(job), status_code=200 if is_terminal(job["state"]) else 202)


CANCEL_WAIT_S = 1.0  # how long a cancel waits for a running job to stop before answering 202
SSE_POLL_MIN_S = 0.02
SSE_POLL_MAX_S = 1.0
SSE_HEARTBEAT_S = 15.0


LAST_EVENT_ID_HEADER = {
    "parameters": [
        {
            "name": "Last-Event-ID",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
            "description": "Resume after this event id (one this server sent); anything else is a 400.",
        }
    ]
}


@router.get(
    "/api/v1/jobs/{job_id}/events",
    summary="Server-Sent Events of a job's node and state events",
    openapi_extra=LAST_EVENT_ID_HEADER,
)
async def stream_events(
    job_id: str, request: Request, rt: Runtime = Depends(runtime), me: Principal = Depends(principal)
) -> StreamingResponse:
    job = await own_job(rt, me, job_id)
    # Read by hand rather than declared, so that every bad value is the documented 400 (not FastAPI's 422).
    after = parse_event_id(request.headers.get("last-event-id"))
    deadline = time.monotonic() + job["timeout_s"] + rt.settings.executor.lease_s * 3 + 60
    return StreamingResponse(
        _events(rt, job_id, after, deadline),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(rt: Runtime, job_id: str, after: int, deadline: float) -> AsyncIterator[bytes]:
    """Reads events from the store (any process's), ending after the terminal state event or the deadline.

    A job found already ended while nothing follows `after` (a client resuming after its terminal event)
    ends the stream at once instead of holding it open until the deadline.
    """
    with rt.jobs.notices.watch(job_id) as changed:
        async for chunk in _events_watched(rt, job_id, after, deadline, changed):
            yield chunk


async def _events_watched(
    rt: Runtime, job_id: str, after: int, deadline: float, changed: asyncio.Event
) -> AsyncIterator[bytes]:
    delay = SSE_POLL_MIN_S
    last_sent = time.monotonic()
    checked_state = False
    while time.monotonic() < deadline:
        changed.clear()
        rows = await rt.jobs.events(job_id, after_id=after)
        for row in rows:
            after = row["id"]
            data = orjson.loads(row["data"])
            yield _sse(row, data)
            if row["kind"] == "state" and data.get("state") in ("succeeded", "failed", "cancelled"):
                return
        if rows:
            delay, last_sent = SSE_POLL_MIN_S, time.monotonic()
            continue
        if not checked_state:
            # Once is enough: a job still running now writes its terminal event later, after `after`.
            checked_state = True
            if is_terminal((await rt.jobs.get(job_id))["state"]):
                # Its last events are written with its state, so one more read catches any that committed
                # between the read above and this one.
                for row in await rt.jobs.events(job_id, after_id=after):
                    yield _sse(row, orjson.loads(row["data"]))
                return
        if time.monotonic() - last_sent > SSE_HEARTBEAT_S:
            last_sent = time.monotonic()
            yield b": keep-alive\n\n"
        # A notice (events written here, or relayed) wakes the stream at once; the poll is the fallback.
        await wait_for_notice(changed, delay)
        delay = min(delay * 2, SSE_POLL_MAX_S)


def _sse(row: Row, data: dict[str, Any]) -> bytes:
    """One stored event as a Server-Sent Event."""
    payload = {"id": row["id"], "kind": row["kind"], "node": row["node"], "at": iso(row["at"]), **data}
    return f"id: {row['id']}\nevent: {row['kind']}\ndata: ".encode() + orjson.dumps(payload) + b"\n\n"
