"""Omni's AI jobs API (`/api/v1/ai/*`): submit a question about a data model, poll it, read its result and chart,
cancel it, list conversations; `pick-topic` and `generate-query` (the first steps of a job, answered at once);
and the chat page `omniChatUrl` opens. The `omni` webhook dialect is `api.omni_webhooks`.

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
- The chat page (`GET /chat/{conversationId}`) without credentials is a static shell holding no data: it asks for
  a token and fetches the same URL with it; with `Authorization` it renders the owner's conversation (Jinja2,
  autoescaped). So the URL alone shows a stranger nothing.
- Per-key rate limit: `omni.rate_limit_per_min` submits a minute per API key (per user for JWT callers), per
  process, on top of the keys' general request limit.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse
from jinja2 import Environment, select_autoescape
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
from conveyor.api.deps import decode_cursor, encode_cursor, iso, json_response
from conveyor.api.jobs import CANCEL_WAIT_S, submit_for
from conveyor.api.omni_webhooks import DIALECT, ProgressRelay
from conveyor.auth.keys import RateLimiter
from conveyor.auth.principal import Principal
from conveyor.errors import (
    BadRequestError,
    ConflictError,
    ConveyorError,
    ForbiddenError,
    IllegalTransitionError,
    ModelError,
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


def _omni(request: Request) -> tuple[AiJobService, ModelService]:
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


def _admit(request: Request, me: Principal) -> None:
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


async def _state(ai: AiJobService, row: Row) -> str:
    return omni_state(row, row["state"] == "succeeded" and await ai.delivering(row["id"]))


def _expired(request: Request, row: Row) -> bool:
    """Whether a finished job's result is past its retention (`omni.retention_days`), checked when read."""
    days = request.app.state.settings.omni.retention_days
    return row["finished_at"] is not None and row["finished_at"] < now_ms() - days * DAY_MS


async def _own_ai_job(request: Request, me: Principal, job_id: str) -> Row:
    ai, _ = _omni(request)
    row = await ai.get(check_uuid(job_id, "jobId"))
    if row is None or row["user_id"] != me.user_id:
        raise NotFoundError("job", job_id)
    return row


def _organization(org_id: str | None) -> str:
    return org_id or NIL_ORG


# --- submit -----------------------------------------------------------------------------------------------------


def _parse_submit(raw: bytes) -> tuple[AiJobSubmitBody, str | None]:
    """The body, and the exact text of its `webhookMetadata`; 400 for anything malformed."""
    body: AiJobSubmitBody = _parse(AiJobSubmitBody, raw)
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
    _admit(request, me)
    body, metadata = _parse_submit(await request.body())
    model_id = check_uuid(body.model_id, "modelId")
    branch_id = check_uuid(body.branch_id, "branchId") if body.branch_id is not None else None
    conversation_id = check_uuid(body.conversation_id, "conversationId") if body.conversation_id else None
    webhooks = _webhooks(body)
    ai, models = _omni(request)
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
    state = await _state(ai, row)
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
    return json_response(await status_body(request, _omni(request)[0], row))


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
    ai, _ = _omni(request)
    row = await _own_ai_job(request, me, job_id)
    if await _state(ai, row) != "COMPLETE":
        raise NotFoundError("completed job", job_id)
    if _expired(request, row):
        raise NotFoundError("job result (past its retention)", job_id)
    return row


@router.get("/api/v1/ai/jobs/{job_id}/result", summary="Omni: a completed AI job's actions and answer")
async def read_ai_result(job_id: str, request: Request) -> Response:
    me = await principal(request)
    row = await _complete(request, me, job_id)
    return json_response(await result_body(request, _omni(request)[0], row))


@router.get("/api/v1/ai/jobs/{job_id}/vis", summary="Omni: a PNG chart of a completed AI job's data")
async def read_ai_vis(job_id: str, request: Request) -> Response:
    me = await principal(request)
    row = await _complete(request, me, job_id)
    outputs = await _omni(request)[0].outputs(row) or {}
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
    ai, _ = _omni(request)
    row = await ai.get(check_uuid(job_id, "jobId"))
    if row is None:
        raise NotFoundError("job", job_id)
    if row["user_id"] != me.user_id:
        # Only the owner or an admin of the job's organization; outside it the job is as unknown as a missing one.
        if _organization(row["org_id"]) != _organization(me.org_id):
            raise NotFoundError("job", job_id)
        if not me.acts_as_admin:
            raise ForbiddenError("Forbidden: only the job's owner or an organization admin may cancel it")
    state = await _state(ai, row)
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
        state = await _state(ai, row)
    return json_response({"jobId": row["id"], "state": state})


# --- pick-topic and generate-query: the first steps of a job, answered at once --------------------------------


class AiServiceError(ConveyorError):
    """The language model gave no usable answer to a synchronous AI call; Omni documents this as a 500."""

    status = 500
    code = "ai_service_error"


class _TopicParams(BaseModel):
    # Omni's camelCase names only: a snake_case key (`webhook_metadata`) is an unknown field (400), never an alias
    # of one, so what the client sent is exactly what is read (the raw `webhookMetadata` text, for one).
    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(alias="modelId", max_length=64)
    branch_id: str | None = Field(default=None, alias="branchId", max_length=64)
    current_topic_name: str | None = Field(default=None, alias="currentTopicName", min_length=1, max_length=256)
    prompt: str = Field(min_length=1, max_length=10_000)
    user_id: str | None = Field(default=None, alias="userId", min_length=1, max_length=64)


class AiPickTopicBody(_TopicParams):
    """Omni's `AiPickTopicBody` (`currentTopicName` is accepted and not used: the prompt decides)."""

    potential_topic_names: list[str] | None = Field(default=None, alias="potentialTopicNames", max_length=1000)


class AiGenerateQueryBody(_TopicParams):
    """Omni's `AiGenerateQueryBody`. `queryAllViews` and `workbookUrl` are accepted; Conveyor has no workbooks
    and queries topics only, so they change nothing (no `workbookUrl` comes back)."""

    query_all_views: bool = Field(default=False, alias="queryAllViews")
    run_query: bool = Field(default=True, alias="runQuery")
    workbook_url: bool = Field(default=False, alias="workbookUrl")


def _parse(model: type[BaseModel], raw: bytes) -> Any:
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


async def _topic_call(request: Request, model: type[_TopicParams]) -> tuple[Runtime, Any, Any]:
    """The caller (an org key may act for the body's `userId`), the body, and the resolved model (404)."""
    rt: Runtime = request.app.state.runtime
    me = await principal(request)
    _admit(request, me)
    body = _parse(model, await request.body())
    if body.user_id is not None and body.user_id != me.user_id:
        if me.key_kind != "org":
            raise ForbiddenError("Forbidden: userId is only for organization API keys")
        await rt.auth.authenticate(request.headers.get("authorization"), body.user_id)  # 403 outside the org
    model_id = check_uuid(body.model_id, "modelId")
    branch_id = check_uuid(body.branch_id, "branchId") if body.branch_id is not None else None
    resolved = await _omni(request)[1].resolve(model_id, branch_id)
    if rt.llm is None:
        raise AiServiceError("no language model is configured")
    return rt, body, resolved


@router.post("/api/v1/ai/pick-topic", summary="Omni: the topic that best answers a prompt")
async def pick_topic_route(request: Request) -> Response:
    rt, body, resolved = await _topic_call(request, AiPickTopicBody)
    assert rt.llm is not None
    from conveyor.analytics.ask import pick_topic  # sqlglot and the pipeline: loaded on first use, not at start

    try:
        name, _usage = await pick_topic(
            body.prompt, resolved.semantic, rt.llm.get(None), candidates=body.potential_topic_names
        )
    except ValidationError as exc:  # no topic (among those named)
        raise NotFoundError("topic", exc.message) from None
    except ModelError as exc:
        raise AiServiceError(f"AI service error: {exc.message}") from None
    return json_response({"topicId": name})


@router.post("/api/v1/ai/generate-query", summary="Omni: a semantic query for a prompt, run unless told not to")
async def generate_query_route(request: Request) -> Response:
    rt, body, resolved = await _topic_call(request, AiGenerateQueryBody)
    assert rt.llm is not None
    from conveyor.analytics.ask import AnswerFailedError, generate_query  # loaded on first use, not at start

    topic = body.current_topic_name
    if topic is not None and topic not in resolved.semantic.topics:
        raise NotFoundError("topic", topic)
    try:
        generated = await generate_query(
            body.prompt, model=resolved, llm=rt.llm.get(None), topic_name=topic, run_query=body.run_query
        )
    except AnswerFailedError as exc:
        failed = {"message": "No query generated", "detail": exc.message}
        return json_response({"error": failed, "query": None})
    except ModelError as exc:
        raise AiServiceError(f"AI service error: {exc.message}") from None
    # Omni's `AiSemanticQuery`: `table` names the topic; an unset limit is left out rather than null.
    query = {"table": generated.topic, **{k: v for k, v in generated.query.items() if v is not None}}
    answer: dict[str, Any] = {"error": None, "query": query, "topic": generated.topic}
    if body.run_query:
        answer["result"] = {
            "columns": generated.columns,
            "rows": generated.rows,
            "totalRowCount": generated.total_row_count,
            "truncated": generated.truncated,
            "sql": generated.sql,
        }
    return json_response(answer)


# --- conversations ----------------------------------------------------------------------------------------------


def _conversation_summary(request: Request, row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "title": row["title"],
        "modelId": row["model_id"],
        "createdAt": iso(row["created_at"]),
        "updatedAt": iso(row["updated_at"]),
        "omniChatUrl": chat_url(request, row["id"]),
    }


@router.get("/api/v1/ai/conversations", summary="Omni: the caller's AI conversations, newest first")
async def list_conversations(
    request: Request,
    page_size: int = Query(20, alias="pageSize", ge=1, le=MAX_PAGE_SIZE),
    cursor: str | None = Query(None, max_length=200),
) -> Response:
    me = await principal(request)
    ai, _ = _omni(request)
    rows, total = await ai.list_conversations(me.user_id, limit=page_size + 1, after=decode_cursor(cursor))
    more = len(rows) > page_size
    rows = rows[:page_size]
    next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
    page_info = {"hasNextPage": more, "nextCursor": next_cursor, "pageSize": page_size, "totalRecords": total}
    return json_response({"pageInfo": page_info, "records": [_conversation_summary(request, row) for row in rows]})


async def conversation_messages(request: Request, ai: AiJobService, conversation_id: str) -> list[dict[str, Any]]:
    """The conversation's turns: each job's prompt, and its answer once COMPLETE (within the retention)."""
    messages: list[dict[str, Any]] = []
    url = chat_url(request, conversation_id)
    for row in await ai.conversation_jobs(conversation_id):
        messages.append(
            {
                "role": "user",
                "text": row["prompt"],
                "createdAt": iso(row["created_at"]),
                "jobId": row["id"],
                "omniChatUrl": url,
            }
        )
        if await _state(ai, row) == "COMPLETE" and not _expired(request, row):
            messages.append(
                {
                    "role": "assistant",
                    "text": await ai.result_summary(row) or "",
                    "createdAt": iso(row["finished_at"]),
                    "jobId": row["id"],
                    "omniChatUrl": url,
                }
            )
    return messages


@router.get("/api/v1/ai/conversations/{conversation_id}", summary="Omni: one conversation and its messages")
async def read_conversation(conversation_id: str, request: Request) -> Response:
    me = await principal(request)
    ai, _ = _omni(request)
    row = await ai.own_conversation(check_uuid(conversation_id, "conversationId"), me.user_id)
    body = _conversation_summary(request, row) | {"messages": await conversation_messages(request, ai, row["id"])}
    return json_response(body)


# --- the chat page ----------------------------------------------------------------------------------------------

_PAGES = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
_SHELL = _PAGES.from_string(
    """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Conversation</title>
<meta name="referrer" content="no-referrer"></head><body>
<main id="chat"><h1>Conversation</h1><p>Sign in to see this conversation: paste an API key or token.</p>
<form id="login"><input id="token" type="password" autocomplete="off" size="60"> <button>Open</button></form></main>
<script>
const open = async (token) => {
  const answer = await fetch(location.pathname, {headers: {"Authorization": "Bearer " + token}});
  if (!answer.ok) {
    document.querySelector("#chat p").textContent = "Not found or not yours (" + answer.status + ")";
    return;
  }
  const page = new DOMParser().parseFromString(await answer.text(), "text/html");
  document.querySelector("#chat").replaceWith(page.querySelector("#chat"));
};
const saved = sessionStorage.getItem("conveyor.token");
if (saved) open(saved);
document.querySelector("#login").addEventListener("submit", (e) => {
  e.preventDefault(); const t = document.querySelector("#token").value.trim();
  sessionStorage.setItem("conveyor.token", t); open(t);
});
</script></body></html>"""
)
_CHAT = _PAGES.from_string(
    """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title></head><body>
<main id="chat"><h1>{{ title }}</h1>
{% for turn in turns %}<section class="turn">
<p class="prompt"><strong>You</strong> <time>{{ turn.created }}</time></p><blockquote>{{ turn.prompt }}</blockquote>
<p class="state">{{ turn.state }}</p>
{% for action in turn.actions %}<details><summary>{{ action.type }}: {{ action.message }}</summary>
{% if action.sql %}<pre>{{ action.sql }}</pre>{% endif %}{% if action.csv %}<pre>{{ action.csv }}</pre>{% endif %}
</details>{% endfor %}
{% if turn.answer %}<pre class="answer">{{ turn.answer }}</pre>{% endif %}
{% if turn.error %}<p class="error">{{ turn.error }}</p>{% endif %}
</section>{% endfor %}
</main></body></html>"""
)


@router.get(
    "/chat/{conversation_id}", summary="Omni: the conversation page omniChatUrl opens", response_class=HTMLResponse
)
async def chat_page(conversation_id: str, request: Request) -> Response:
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Content-Security-Policy": _CSP}
    if not request.headers.get("authorization"):
        return HTMLResponse(_SHELL.render(), headers=headers)
    me = await principal(request)
    ai, _ = _omni(request)
    conversation = await ai.own_conversation(check_uuid(conversation_id, "conversationId"), me.user_id)
    turns = []
    for row in await ai.conversation_jobs(conversation["id"]):
        state = await _state(ai, row)
        turn: dict[str, Any] = {"prompt": row["prompt"], "created": iso(row["created_at"]), "state": state}
        turn["actions"], turn["answer"] = [], None
        if state == "COMPLETE" and not _expired(request, row):
            result = await result_body(request, ai, row)
            turn["answer"] = result["message"]
            turn["actions"] = [_page_action(action) for action in result["actions"]]
        if state == "FAILED" and row["error"]:
            turn["error"] = orjson.loads(row["error"]).get("message")
        turns.append(turn)
    return HTMLResponse(_CHAT.render(title=conversation["title"], turns=turns), headers=headers)


# Inline script only for the shell, no other origin: the rendered page carries data, never scripts.
_CSP = "default-src 'none'; script-src 'unsafe-inline'; connect-src 'self'; style-src 'unsafe-inline'"


def _page_action(action: dict[str, Any]) -> dict[str, Any]:
    result = action.get("result")
    result = result if isinstance(result, dict) else {}
    query = result.get("query")
    query = query if isinstance(query, dict) else {}
    sql, csv = query.get("sql"), result.get("csvResult")
    return {
        "type": action["type"],
        "message": action["message"],
        "sql": sql if isinstance(sql, str) else None,
        "csv": csv if isinstance(csv, str) else None,
    }


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
