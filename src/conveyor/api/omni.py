"""Omni's AI jobs API (`/api/v1/ai/jobs*`): submit a question about a data model, poll it, read its result and
chart, cancel it; and what the other Omni modules share. `pick-topic` and `generate-query` are `api.omni_topics`,
conversations and the chat page `omniChatUrl` opens `api.omni_conversations`, the `omni` webhook dialect
`api.omni_webhooks`, the chart `api.omni_vis`.

An AI job is a native job of the built-in recipe `omni-ai-job` (one `ask_data` node), submitted through
`api.jobs.submit_for` as the acting user; `analytics.ai_jobs` keeps Omni's extra rows. States map from the job's:
pending → QUEUED, running → EXECUTING, succeeded → DELIVERING while its terminal webhook is still to be delivered,
then COMPLETE; failed → FAILED, cancelled → CANCELLED. Errors on these paths are `{"detail", "status"}`
(`api.errors`), and a body that fails validation is a 400, as in Omni.

Design choices, documented here because clients depend on them:
- Results are kept `omni.retention_days` (default 14) after the job ended, checked when read: `GET .../result`,
  `.../vis` and the chat page's answers say 404 / leave them out afterwards (the job row itself stays).
- `webhookMetadata` is stored as the exact JSON text the client sent and spliced into each webhook body as is
  (`orjson.Fragment`), so key order, spacing and number formatting survive byte for byte.
- The signing secret is sealed at rest (`SecretBox`), never returned or logged; without one webhooks go unsigned.
- Progress webhooks: each `progress` node event of a job with `progressWebhookEnabled` becomes an outbox row with
  event `progress.<event id>` and a deterministic id (so several server processes write it once); the dispatcher
  gives `progress.*` events a single attempt and no retry. Found by `ProgressRelay`, a poll of the job events.
- The chat page (`GET /chat/{conversationId}`, `api.omni_conversations`) shows nothing without the owner's
  credentials.
- Per-key rate limit: `omni.rate_limit_per_min` submits a minute per API key (per user for JWT callers), per
  process, on top of the keys' general request limit.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError

from conveyor.analytics.ai_jobs import (
    NIL_ORG,
    AiJobService,
    AiRecipe,
    NewAiJob,
    SecretBox,
    ensure_ai_recipe,
)
from conveyor.analytics.store import ModelService
from conveyor.api.auth import principal
from conveyor.api.deps import iso, json_response
from conveyor.api.jobs import CANCEL_WAIT_S, submit_for
from conveyor.api.omni_webhooks import DIALECT, ProgressRelay
from conveyor.auth.keys import RateLimiter
from conveyor.auth.principal import Principal
from conveyor.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    IllegalTransitionError,
    NotFoundError,
    RateLimitedError,
    ValidationError,
)
from conveyor.jobs.queries import now_ms
from conveyor.jobs.service import uuid7
from conveyor.runtime import Runtime
from conveyor.store.db import Row
from conveyor.webhooks.validation import check_url

router = APIRouter(tags=["omni"])
log = logging.getLogger("conveyor.omni")

MAX_SECRET = 512
MAX_METADATA_BYTES = 16_384
MAX_PAGE_SIZE = 100
STATES = {"pending": "QUEUED", "running": "EXECUTING", "failed": "FAILED", "cancelled": "CANCELLED"}
DAY_MS = 86_400_000


class AiJobSubmitBody(BaseModel):
    """Omni's `AiJobSubmitBody`."""

    # Omni's camelCase names only: a snake_case key (`webhook_metadata`) is an unknown field (400), never an alias
    # of one, so what the client sent is exactly what is read (the raw `webhookMetadata` text, for one).
    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(alias="modelId", max_length=64)
    prompt: str = Field(min_length=1, max_length=10_000)
    conversation_id: str | None = Field(default=None, alias="conversationId", max_length=64)
    branch_id: str | None = Field(default=None, alias="branchId", max_length=64)
    topic_name: str | None = Field(default=None, alias="topicName", min_length=1, max_length=256)
    webhook_url: str | None = Field(default=None, alias="webhookUrl", max_length=2048)
    webhook_signing_secret: str | None = Field(
        default=None, alias="webhookSigningSecret", min_length=1, max_length=MAX_SECRET, repr=False
    )
    webhook_metadata: dict[str, Any] | None = Field(default=None, alias="webhookMetadata")
    progress_webhook_enabled: bool = Field(default=False, alias="progressWebhookEnabled")

    @field_validator("prompt", "topic_name")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        if value is not None and not value.strip():
            raise ValueError("must not be blank")
        return value


def _body_schema() -> dict[str, Any]:
    schema = AiJobSubmitBody.model_json_schema(by_alias=True)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# --- helpers ----------------------------------------------------------------------------------------------------


def check_uuid(value: str, name: str) -> str:
    """A UUID in its canonical lower-case form; anything else is a 400 naming the field."""
    try:
        parsed = uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise BadRequestError(f"Bad Request: {name}: Invalid uuid") from None
    if len(value) != 36:
        raise BadRequestError(f"Bad Request: {name}: Invalid uuid")
    return str(parsed)


def raw_member(body: bytes, name: str) -> str | None:
    """The exact JSON text of the top-level member `name` of a JSON object (the last one, as parsers keep), or
    None. `body` must already have parsed as JSON: this only finds where each member's value starts and ends."""
    text = body.decode()
    i = text.index("{") + 1
    found: str | None = None
    n = len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "}":
            break
        key_end = _string_end(text, i)
        key = orjson.loads(text[i:key_end])
        i = text.index(":", key_end) + 1
        while text[i] in " \t\r\n":
            i += 1
        end = _value_end(text, i)
        if key == name:
            found = text[i:end]
        i = end
    return found


def _string_end(text: str, start: int) -> int:
    i = start + 1
    while text[i] != '"':
        i += 2 if text[i] == "\\" else 1
    return i + 1


def _value_end(text: str, start: int) -> int:
    if text[start] == '"':
        return _string_end(text, start)
    if text[start] not in "[{":
        i = start
        while i < len(text) and text[i] not in ",}] \t\r\n":
            i += 1
        return i
    depth, i = 0, start
    while True:
        char = text[i]
        if char == '"':
            i = _string_end(text, i)
            continue
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1


def omni_services(request: Request) -> tuple[AiJobService, ModelService]:
    state = request.app.state
    models: ModelService | None = state.runtime.analytics
    assert models is not None, "the runtime of a server has its data models"
    return state.omni_jobs, models


def chat_url(request: Request, conversation_id: str) -> str:
    base = request.app.state.settings.omni.chat_url_base.rstrip("/") or str(request.base_url).rstrip("/")
    return f"{base}/chat/{conversation_id}"


async def _ai_recipe(request: Request, rt: Runtime) -> AiRecipe:
    """The built-in recipe, made or found once per process."""
    state = request.app.state
    async with state.omni_recipe_lock:
        if state.omni_recipe is None:
            omni = rt.settings.omni
            config = {"provider": omni.provider, "sql_mode": omni.sql_mode}
            state.omni_recipe = await ensure_ai_recipe(rt.recipes, config)
    recipe: AiRecipe = state.omni_recipe
    return recipe


def admit(request: Request, me: Principal) -> None:
    """Omni's per-key submit limit (per user for JWT callers): 429 with Retry-After past it."""
    per_min = request.app.state.settings.omni.rate_limit_per_min
    limiter: RateLimiter = request.app.state.omni_limiter
    bucket = f"key:{me.api_key_id}" if me.api_key_id is not None else f"user:{me.user_id}"
    wait = limiter.take(bucket, per_min)
    if wait > 0:
        raise RateLimitedError(
            f"Too many AI job requests: the limit is {per_min} a minute", retry_after_s=max(1, int(wait + 0.999))
        )


def omni_state(row: Row, delivering: bool) -> str:
    if row["state"] == "succeeded":
        return "DELIVERING" if delivering else "COMPLETE"
    return STATES[row["state"]]


async def ai_state(ai: AiJobService, row: Row) -> str:
    return omni_state(row, row["state"] == "succeeded" and await ai.delivering(row["id"]))


def expired(request: Request, row: Row) -> bool:
    """Whether a finished job's result is past its retention (`omni.retention_days`), checked when read."""
    days = request.app.state.settings.omni.retention_days
    return row["finished_at"] is not None and row["finished_at"] < now_ms() - days * DAY_MS


async def _own_ai_job(request: Request, me: Principal, job_id: str) -> Row:
    ai, _ = omni_services(request)
    row = await ai.get(check_uuid(job_id, "jobId"))
    if row is None or row["user_id"] != me.user_id:
        raise NotFoundError("job", job_id)
    return row


def _organization(org_id: str | None) -> str:
    return org_id or NIL_ORG


# --- submit -----------------------------------------------------------------------------------------------------


def parse_body(model: type[BaseModel], raw: bytes) -> Any:
    """The JSON object `raw` validated as `model`; a 400 naming up to five problems otherwise (as Omni)."""
    try:
        data = orjson.loads(raw or b"null")
    except orjson.JSONDecodeError:
        raise BadRequestError("Bad Request: body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequestError("Bad Request: body must be a JSON object")
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ())) or 'body'}: {_problem(model, err)}"
            for err in exc.errors(include_url=False)[:5]
        )
        raise BadRequestError(f"Bad Request: {problems}") from None


def _problem(model: type[BaseModel], err: Any) -> str:
    if err.get("type") != "extra_forbidden":
        return str(err.get("msg", ""))
    names = sorted(f.alias or name for name, f in model.model_fields.items())
    return f"unknown field (the fields are {', '.join(names)})"


def _parse_submit(raw: bytes) -> tuple[AiJobSubmitBody, str | None]:
    """The body, and the exact text of its `webhookMetadata`; 400 for anything malformed."""
    body: AiJobSubmitBody = parse_body(AiJobSubmitBody, raw)
    metadata = None
    if body.webhook_metadata is not None:
        metadata = raw_member(raw, "webhookMetadata")
        if metadata is None or len(metadata.encode()) > MAX_METADATA_BYTES:
            raise BadRequestError(f"Bad Request: webhookMetadata: at most {MAX_METADATA_BYTES} bytes of JSON")
    return body, metadata


def _webhooks(body: AiJobSubmitBody) -> list[tuple[str, str, str, str]]:
    if body.webhook_url is None:
        if body.progress_webhook_enabled:
            raise BadRequestError("Bad Request: progressWebhookEnabled: requires webhookUrl")
        return []
    try:
        url = check_url(body.webhook_url, "webhookUrl")
    except ValidationError as exc:
        raise BadRequestError(f"Bad Request: {exc.message}") from None
    return [(url, "POST", "{}", DIALECT)]


@router.post("/api/v1/ai/jobs", status_code=201, summary="Omni: submit an AI job", openapi_extra=_body_schema())
async def submit_ai_job(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    me = await principal(request)
    admit(request, me)
    body, metadata = _parse_submit(await request.body())
    model_id = check_uuid(body.model_id, "modelId")
    branch_id = check_uuid(body.branch_id, "branchId") if body.branch_id is not None else None
    conversation_id = check_uuid(body.conversation_id, "conversationId") if body.conversation_id else None
    webhooks = _webhooks(body)
    ai, models = omni_services(request)
    resolved = await models.resolve(model_id, branch_id)
    if body.topic_name is not None and body.topic_name not in resolved.semantic.topics:
        raise NotFoundError("topic", body.topic_name)
    recipe = await _ai_recipe(request, rt)
    conversation_id, token = await ai.reserve(
        conversation_id, user_id=me.user_id, org_id=me.org_id, model_id=model_id, prompt=body.prompt
    )
    try:
        inputs: dict[str, Any] = {"model_id": model_id, "question": body.prompt}
        inputs["history"] = await ai.history(conversation_id)
        if branch_id is not None:
            inputs["branch_id"] = branch_id
        if body.topic_name is not None:
            inputs["topic_name"] = body.topic_name
        box: SecretBox = request.app.state.omni_box
        sealed = box.seal(body.webhook_signing_secret) if body.webhook_signing_secret and webhooks else None
        new = NewAiJob(
            conversation_id=conversation_id,
            user_id=me.user_id,
            org_id=me.org_id,
            model_id=model_id,
            branch_id=branch_id,
            topic_name=body.topic_name,
            prompt=body.prompt,
            webhook_secret=sealed,
            webhook_metadata=metadata,
            progress_webhook=body.progress_webhook_enabled,
        )
        # The AI job row is written in the job's own transaction: an executor may claim a pending job at its next
        # poll, and the relay and the webhook dispatcher read this row (progress flag, signing secret).
        job_id = uuid7()
        job, _ = await submit_for(
            rt, me, (recipe.row, recipe.graph), inputs, revision=recipe.revision, webhooks=webhooks,
            job_id=job_id, extra_ops=ai.attach_ops(job_id, token, new),
        )  # fmt: skip
    except BaseException:
        await ai.release(conversation_id, token)
        raise
    answer = {"jobId": job["id"], "conversationId": conversation_id, "omniChatUrl": chat_url(request, conversation_id)}
    return json_response(answer, 201)


# --- status, result, cancel, vis --------------------------------------------------------------------------------


async def status_body(request: Request, ai: AiJobService, row: Row) -> dict[str, Any]:
    """Omni's `AiJobStatusResponse`: the fields always present, then those of the state."""
    state = await ai_state(ai, row)
    body: dict[str, Any] = {
        "id": row["id"],
        "state": state,
        "prompt": row["prompt"],
        "conversationId": row["conversation_id"],
        "modelId": row["model_id"],
        "branchId": row["branch_id"],
        "organizationId": _organization(row["org_id"]),
        "userId": row["user_id"],
        "topicName": row["topic_name"],
        "omniChatUrl": chat_url(request, row["conversation_id"]),
        "createdAt": iso(row["created_at"]),
        "updatedAt": iso(max(row["updated_at"], row["created_at"])),
    }
    if row["started_at"] is not None:
        body["executionStartedAt"] = iso(row["started_at"])
    if state == "EXECUTING":
        progress = await ai.progress(row["id"])
        body["progress"] = (
            None
            if progress is None
            else {"iteration": progress[0], "message": progress[1], "updatedAt": iso(progress[2])}
        )
    if state == "COMPLETE":
        body["resultSummary"] = await ai.result_summary(row) or ""
    if state in ("COMPLETE", "FAILED"):
        body["completedAt"] = iso(row["finished_at"])
    if state == "FAILED":
        error = orjson.loads(row["error"]) if row["error"] else {}
        body["error"] = {
            "code": str(error.get("code") or "JOB_FAILED"),
            "message": str(error.get("message") or "the job failed"),
            "detail": _error_detail(error),
        }
    if state == "CANCELLED":
        body["cancelledAt"] = iso(row["finished_at"])
        if row["cancelled_by"]:
            body["cancelledBy"] = row["cancelled_by"]
    return body


def _error_detail(error: dict[str, Any]) -> str:
    node = error.get("node")
    details = error.get("details")
    parts = [f"node {node}" if node else "", orjson.dumps(details).decode() if details else ""]
    return "; ".join(part for part in parts if part) or str(error.get("message") or "")


@router.get("/api/v1/ai/jobs/{job_id}", summary="Omni: an AI job's status")
async def read_ai_job(job_id: str, request: Request) -> Response:
    me = await principal(request)
    row = await _own_ai_job(request, me, job_id)
    return json_response(await status_body(request, omni_services(request)[0], row))


def _action(raw: Any) -> dict[str, Any] | None:
    """One `AiJobAction` from the block's action list (entries that are not objects are skipped)."""
    if not isinstance(raw, dict):
        return None
    action = dict(raw)
    action["type"] = str(action.get("type") or "")
    action["message"] = str(action.get("message") or "")
    action["timestamp"] = str(action.get("timestamp") or "")
    if action.get("result") is None:
        action.pop("result", None)
    return action


async def result_body(request: Request, ai: AiJobService, row: Row) -> dict[str, Any]:
    """Omni's `AiJobResultResponse` from the `ask_data` outputs: actions, Markdown answer, summary, topic."""
    outputs = await ai.outputs(row) or {}
    message = outputs.get("markdown") if isinstance(outputs.get("markdown"), str) else ""
    summary = outputs.get("result_summary") if isinstance(outputs.get("result_summary"), str) else message
    raw_actions = outputs.get("actions")
    listed = raw_actions if isinstance(raw_actions, list) else []
    actions = [action for action in map(_action, listed) if action is not None]
    body: dict[str, Any] = {"actions": actions, "message": message, "resultSummary": summary}
    topic = outputs.get("topic")
    if isinstance(topic, str):
        body["topic"] = topic
    body["omniChatUrl"] = chat_url(request, row["conversation_id"])
    return body


async def _complete(request: Request, me: Principal, job_id: str) -> Row:
    """The caller's job, COMPLETE and within its retention; 404 otherwise (Omni's answer for all three)."""
    ai, _ = omni_services(request)
    row = await _own_ai_job(request, me, job_id)
    if await ai_state(ai, row) != "COMPLETE":
        raise NotFoundError("completed job", job_id)
    if expired(request, row):
        raise NotFoundError("job result (past its retention)", job_id)
    return row


@router.get("/api/v1/ai/jobs/{job_id}/result", summary="Omni: a completed AI job's actions and answer")
async def read_ai_result(job_id: str, request: Request) -> Response:
    me = await principal(request)
    row = await _complete(request, me, job_id)
    return json_response(await result_body(request, omni_services(request)[0], row))


@router.get("/api/v1/ai/jobs/{job_id}/vis", summary="Omni: a PNG chart of a completed AI job's data")
async def read_ai_vis(job_id: str, request: Request) -> Response:
    me = await principal(request)
    row = await _complete(request, me, job_id)
    outputs = await omni_services(request)[0].outputs(row) or {}
    from conveyor.api.omni_vis import NotChartable, render_chart  # Pillow's drawing and fonts: loaded when used

    try:
        png = await asyncio.to_thread(render_chart, outputs.get("columns"), outputs.get("rows"), outputs.get("topic"))
    except NotChartable as exc:
        return Response(orjson.dumps({"error": str(exc)}), status_code=422, media_type="application/json")
    return Response(png, media_type="image/png")


@router.post("/api/v1/ai/jobs/{job_id}/cancel", summary="Omni: cancel an AI job")
async def cancel_ai_job(job_id: str, request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    me = await principal(request)
    ai, _ = omni_services(request)
    row = await ai.get(check_uuid(job_id, "jobId"))
    if row is None:
        raise NotFoundError("job", job_id)
    if row["user_id"] != me.user_id:
        # Only the owner or an admin of the job's organization; outside it the job is as unknown as a missing one.
        if _organization(row["org_id"]) != _organization(me.org_id):
            raise NotFoundError("job", job_id)
        if not me.acts_as_admin:
            raise ForbiddenError("Forbidden: only the job's owner or an organization admin may cancel it")
    state = await ai_state(ai, row)
    if state == "DELIVERING":
        raise ConflictError("The job is delivering its result and can no longer be cancelled")
    if state in ("QUEUED", "EXECUTING"):
        await ai.mark_cancelled_by(row["id"], me.user_id)
        try:
            job = await rt.jobs.cancel(row["id"])
            if job["state"] == "running" and rt.cancel_running(row["id"]):
                await rt.jobs.wait_ended(row["id"], CANCEL_WAIT_S)
        except IllegalTransitionError:
            pass  # it ended meanwhile: answer with the state it ended in
        row = await ai.get(row["id"])
        assert row is not None
        state = await ai_state(ai, row)
    return json_response({"jobId": row["id"], "state": state})


async def start(app: FastAPI, rt: Runtime, box: SecretBox) -> ProgressRelay | None:
    """What the routes share, on `app.state`; and, in a process that delivers webhooks, the progress relay."""
    state = app.state
    state.omni_jobs = AiJobService(rt.db, rt.jobs)
    state.omni_box = box
    state.omni_limiter = RateLimiter()
    state.omni_recipe = None
    state.omni_recipe_lock = asyncio.Lock()
    if rt.dispatcher is None:
        return None
    relay = ProgressRelay(rt.db, rt.dispatcher.notify)
    await relay.start()
    return relay
