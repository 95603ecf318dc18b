"""GPTBots' workflow API: `POST /v1/workflow/invoke` (sync or async) and `POST /v1/workflow/query/result`.

Clients written for GPTBots run unchanged but for the URL and key. The recipe is the one a recipe key is bound to
(GPTBots binds a key to its workflow); other callers name it with `workflowId`. Runs are native jobs submitted
through `api.jobs.submit_for`; their answer (`run_result`) is built from the store, so it is the same for the sync
call, the query and the webhook, in any process and after restarts. Errors on these paths are `{"code",
"message"}` (see `api.errors`).
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from conveyor.api.auth import principal
from conveyor.api.deps import json_response, path_id
from conveyor.api.jobs import fits_64_bits, submit_for
from conveyor.auth.principal import Principal
from conveyor.errors import ForbiddenError, InputInvalidError, NotFoundError, ValidationError
from conveyor.jobs import queries
from conveyor.jobs.service import JobService
from conveyor.jobs.values import rehydrate
from conveyor.recipes.graph import RecipeGraph
from conveyor.runtime import Runtime
from conveyor.store.db import Row
from conveyor.webhooks.validation import check_webhooks

router = APIRouter(tags=["gptbots"])

DIALECT = "gptbots"
GPTBOTS_STATUS = {
    "pending": "PENDING",
    "running": "RUNNING",
    "succeeded": "SUCCEED",
    "failed": "FAILED",
    "cancelled": "FAILED",  # GPTBots has no cancelled status: a FAILED run whose error code is `cancelled`
}
_RUN_SQL = f"SELECT {queries.JOB_COLUMNS}, api_key_id FROM jobs WHERE id = $1"
_INPUTS_SQL = "SELECT inputs FROM jobs WHERE id = $1"
_RECIPE_NAME_SQL = "SELECT name FROM recipes WHERE id = $1"


def gptbots_status(state: str) -> str:
    """GPTBots' name for a native job state: PENDING, RUNNING, SUCCEED or FAILED."""
    return GPTBOTS_STATUS[state]


class InvokeBody(BaseModel):
    """`POST /v1/workflow/invoke`: the start node's `input`, sync or async, webhooks, and whom the run is for."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    user_id: str | None = Field(
        default=None,
        alias="userId",
        min_length=1,
        max_length=200,
        description="The user (id or name) an organization key runs this for, as `?userId=`; other callers: 403.",
    )
    input: dict[str, Any] = Field(description="Values for the recipe's start-node fields, exactly those.")
    is_async: bool = Field(default=False, alias="isAsync", description="Answer at once with PENDING.")
    webhook: list[Any] | None = Field(
        default=None, description='Up to 5 `{"method": "POST"|"GET", "url", "headers"?}` told when the run ends.'
    )
    workflow_id: str | None = Field(
        default=None,
        alias="workflowId",
        min_length=1,
        max_length=200,
        description="The recipe (id or name); required unless the key is a recipe key, which may name only its own.",
    )

    @field_validator("user_id", "workflow_id")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator("input")
    @classmethod
    def _fits_64_bits(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not fits_64_bits(value):
            raise ValueError("input holds a number beyond 64 bits")
        return value


class QueryBody(BaseModel):
    """`POST /v1/workflow/query/result`: which run."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    workflow_run_id: str = Field(alias="workflowRunId", min_length=1, max_length=100)


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


@router.post(
    "/v1/workflow/invoke",
    summary="GPTBots: run a workflow (recipe), waiting for its result or not",
    openapi_extra=_body_schema(InvokeBody),
)
async def invoke_workflow(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    me = await principal(request)
    body = InvokeBody.model_validate_json(await request.body() or b"null")
    if body.user_id is not None:
        me = await _acting_for(rt, request, me, body.user_id)
    recipe_ref = _recipe_ref(me, body.workflow_id)
    recipe, graph = await _recipe(rt, me, recipe_ref)
    webhooks = check_webhooks(body.webhook, dialect=DIALECT, field="webhook")
    try:
        job, _ = await submit_for(
            rt, me, (recipe, graph), body.input, revision=recipe["latest_revision"], webhooks=webhooks
        )
    except InputInvalidError as exc:
        # The GPTBots error shape has only a message, so it names each field that failed (the details would).
        problems = exc.details if isinstance(exc.details, list) else []
        summary = "; ".join(f"{p.get('field')}: {p.get('message')}" for p in problems) or exc.message
        raise InputInvalidError(f"input does not match the workflow's start node: {summary}") from None
    head = {
        "workflowId": recipe["id"],
        "workflowName": recipe["name"],
        "workflowVersion": str(job["revision"]),
        "workflowRunId": job["id"],
    }
    if body.is_async:
        return json_response(head | {"status": "PENDING"})
    read = functools.partial(read_run, rt.jobs)
    run = await rt.jobs.wait_ended(job["id"], rt.settings.gptbots.sync_wait_s, read=read)
    result = await run_result(rt.jobs, run, recipe_name=recipe["name"])
    if result["status"] == "PENDING":
        # A sync call past its wait answers RUNNING, as the issue asks, even while the run still queues: to the
        # caller the run is under way and is to be polled (query/result tells PENDING from RUNNING).
        result["status"] = "RUNNING"
    return json_response(result)


async def _recipe(rt: Runtime, me: Principal, ref: str) -> tuple[Row, RecipeGraph]:
    """The recipe a call runs and its newest graph; a recipe key naming anything but its own recipe gets 403,
    found or not."""
    try:
        recipe, graph = await rt.recipes.resolve(ref, viewer=me.user_id)
    except NotFoundError:
        if me.key_kind == "recipe":
            raise _not_own_workflow() from None
        raise
    if me.key_kind == "recipe" and not me.may_run(recipe["id"]):
        raise _not_own_workflow()
    return recipe, graph


def _not_own_workflow() -> ForbiddenError:
    return ForbiddenError("this key is bound to another workflow: it may run only its own")


async def _acting_for(rt: Runtime, request: Request, me: Principal, user: str) -> Principal:
    """The caller as the body's `userId` names it: like `?userId=`, only an organization key may act for a user."""
    query_user = request.query_params.get("userId")
    if query_user is not None and query_user != user:
        raise ValidationError("userId is given in the query and the body with different values")
    if me.api_key_id is None or me.key_kind != "org":
        raise ForbiddenError("userId is only for organization keys: this caller acts as its own user")
    return await rt.auth.authenticate(request.headers.get("authorization"), user)


def _recipe_ref(me: Principal, workflow_id: str | None) -> str:
    """The recipe a call runs: a recipe key's own (unless it names it), else the body's `workflowId` (422 without)."""
    if me.key_kind == "recipe":
        bound = me.scopes[0].recipe_ids if me.scopes else None
        if not bound:
            raise ForbiddenError("this recipe key is bound to no workflow")
        own = min(bound)
        if workflow_id is None or workflow_id == own:
            return own
        return workflow_id  # resolved, then refused unless it is the key's own recipe under another name
    if workflow_id is None:
        raise ValidationError(
            "workflowId is required: only a recipe key knows its workflow", details=[{"field": "workflowId"}]
        )
    return workflow_id


async def read_run(jobs: JobService, job_id: str) -> Row | None:
    """A job's row with the key it was submitted with (`api_key_id`)."""
    return await jobs.db.fetch_one(_RUN_SQL, job_id)


async def run_result(jobs: JobService, job: Row, *, recipe_name: str | None = None) -> dict[str, Any]:
    """GPTBots' run object for a job: the same for the sync answer, `query/result` and the webhook's body.

    `startTime`/`endTime` are epoch ms (null until the run starts/ends); `workflowExecutionTime` is their
    difference (null until it ends, 0 for a run cancelled before it started); `output` is the recipe's outputs
    (null unless it succeeded); `error {code, message, node}` is added when it failed or was cancelled.
    """
    if recipe_name is None:
        recipe_name = await jobs.db.fetch_val(_RECIPE_NAME_SQL, job["recipe_id"])
    raw_inputs = job["inputs"] if "inputs" in job else await jobs.db.fetch_val(_INPUTS_SQL, job["id"])
    usage = orjson.loads(job["usage"]) if job["usage"] else {}
    started, finished = job["started_at"], job["finished_at"]
    elapsed = None if finished is None else (finished - started if started is not None else 0)
    result: dict[str, Any] = {
        "workflowId": job["recipe_id"],
        "workflowName": recipe_name,
        "workflowVersion": str(job["revision"]),
        "workflowRunId": job["id"],
        "input": await rehydrate(orjson.loads(raw_inputs), jobs.files) if raw_inputs else {},
        "output": await jobs.outputs(job) if job["state"] == "succeeded" else None,
        "workflowExecutionTime": elapsed,
        "status": gptbots_status(job["state"]),
        "totalCost": usage.get("cost", 0) or 0,
        "totalTokens": int(usage.get("total_tokens", 0) or 0),
        "startTime": started,
        "endTime": finished,
    }
    if job["state"] in ("failed", "cancelled"):
        error = orjson.loads(job["error"]) if job["error"] else {}
        result["error"] = {
            "code": error.get("code") or ("cancelled" if job["state"] == "cancelled" else "failed"),
            "message": error.get("message") or "the run failed",
            "node": error.get("node"),
        }
    return result


async def webhook_payload(jobs: JobService, job: Row, event: str) -> dict[str, Any]:
    """The GPTBots dialect's webhook body: the finished run's `query/result` object."""
    return await run_result(jobs, job)


@router.post(
    "/v1/workflow/query/result",
    summary="GPTBots: a run's status and, once it ended, its result",
    openapi_extra=_body_schema(QueryBody),
)
async def query_result(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    me = await principal(request)
    body = QueryBody.model_validate_json(await request.body() or b"null")
    run_id = path_id("workflow run", body.workflow_run_id)
    run = await read_run(rt.jobs, run_id)
    if run is None or not _sees(me, run):
        raise NotFoundError("workflow run", run_id)
    return json_response(await run_result(rt.jobs, run))


def _sees(me: Principal, run: Row) -> bool:
    """An API key sees the runs submitted with it (an org key's for whichever user it acted for); a JWT every run
    of its user. Anything else is as unknown as a missing run."""
    if me.api_key_id is not None:
        return bool(run["api_key_id"] == me.api_key_id)
    return bool(run["user_id"] == me.user_id)
