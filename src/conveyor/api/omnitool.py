"""Omnitool's recipe API: `/api/v1/workflow/exec`, `jobs`, `results`, `stop` and `workflows`.

Clients written for Omnitool (its `examples/api.mjs` first among them) run unchanged but for the URL, token and
recipe id. The wire shapes are Omnitool's; where Omnitool is broken or open (500 for every validation error,
every user's jobs listed and stoppable, results only from a Recipe Output block) we answer honestly: real
status codes with `{"error": "<message>"}`, only the caller's jobs, and a result for every finished job, built
from the store (so it survives restarts). Everything runs through the native job service; submits go
through `api.jobs.submit_for`, like every dialect's.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from conveyor.api.auth import principal
from conveyor.api.deps import json_response, runtime
from conveyor.api.fid import describe
from conveyor.api.jobs import fits_64_bits, own_job, submit_for
from conveyor.auth.principal import Principal
from conveyor.blocks.base import FileRef
from conveyor.blocks.io import FieldKind, InputField
from conveyor.errors import IllegalTransitionError, InputInvalidError, NotFoundError, ValidationError
from conveyor.jobs.service import is_terminal
from conveyor.runtime import Runtime
from conveyor.store import recipes as recipe_store
from conveyor.store.db import Row

router = APIRouter(tags=["omnitool"])

OMNITOOL_STATES = {
    "pending": "running",  # Omnitool's jobs start at once; a queued job is, to its clients, running
    "running": "running",
    "succeeded": "success",
    "failed": "error",
    "cancelled": "stopped",
}
RECENT_MS = 20 * 60 * 1000
"""Finished jobs stay in `/jobs` this long (Omnitool forgets them 20 minutes after they end)."""
MAX_LISTED = 10_000
"""At most this many active, and this many recently finished, jobs in one `/jobs` answer."""
OMNITOOL_BOOKKEEPING_ARGS = frozenset({"botIdentity", "xOmniNickName"})
"""Args Omnitool's own UI and server add to every run; ignored unless the recipe has a field of that name."""
MEDIA_KINDS = frozenset({FieldKind.IMAGES, FieldKind.AUDIO, FieldKind.VIDEO, FieldKind.DOCUMENTS})
ARTIFACT_KEYS = ("images", "audio", "documents", "videos", "files")
# Output names that say which artifact list a file belongs in, whatever its type (Omnitool's Recipe Output inputs).
_ARTIFACT_BY_NAME = {
    "images": "images",
    "image": "images",
    "audio": "audio",
    "documents": "documents",
    "document": "documents",
    "videos": "videos",
    "video": "videos",
    "files": "files",
    "file": "files",
}
_ARTIFACT_BY_TYPE = {"image": "images", "audio": "audio", "video": "videos", "document": "documents"}
_OBJECT_NAMES = frozenset({"objects", "object", "json"})
_FID_LINK = re.compile(r"\s*(?:fid://|/fid/)([0-9a-fA-F]{32})(?:\.[A-Za-z0-9]{1,16})?(?:\?\S*)?\s*")
_LINE_URL = re.compile(r"(?:https?://|fid://|/fid/)\S+")
_FID = re.compile(r"[0-9a-fA-F]{32}")


def omnitool_state(state: str) -> str:
    """Omnitool's name for a native job state: running, success, error or stopped."""
    return OMNITOOL_STATES[state]


class _JobNotFoundError(NotFoundError):
    """Omnitool's `{"error": "Job not found"}`, for an unknown job and for another user's alike."""

    def __init__(self, job_id: str) -> None:
        super().__init__("job", job_id)
        self.message = "Job not found"


async def _own_job(rt: Runtime, me: Principal, job_id: str) -> Row:
    try:
        return await own_job(rt, me, job_id)
    except NotFoundError:
        raise _JobNotFoundError(job_id[:100]) from None


# ---------------------------------------------------------------------------------------------- exec


class ExecBody(BaseModel):
    """`POST /api/v1/workflow/exec`: which recipe (id or name), its Chat Input args, and `startNode` (ignored)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    workflow: str = Field(min_length=1, max_length=200, description="The recipe's id (or name).")
    args: dict[str, Any] | None = Field(default=None, description="Values for the recipe's Chat Input fields.")
    start_node: int | None = Field(
        default=None, alias="startNode", ge=0, description="Accepted and ignored, as Omnitool ignores it."
    )

    @field_validator("workflow")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator("args")
    @classmethod
    def _fits_64_bits(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and not fits_64_bits(value):
            raise ValueError("args hold a number beyond 64 bits")
        return value


EXEC_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": ExecBody.model_json_schema()}}}
}


@router.post("/api/v1/workflow/exec", summary="Omnitool: run a recipe with Chat Input args", openapi_extra=EXEC_BODY)
async def exec_workflow(
    request: Request, rt: Runtime = Depends(runtime), me: Principal = Depends(principal)
) -> Response:
    body = ExecBody.model_validate_json(await request.body() or b"null")
    recipe, graph = await rt.recipes.resolve(body.workflow, viewer=me.user_id)
    me.require_run(recipe["id"])  # before the args are judged: a token not allowed this recipe learns nothing of it
    inputs = chat_inputs(graph.contract, body.args or {})
    try:
        job, _ = await submit_for(rt, me, (recipe, graph), inputs, revision=recipe["latest_revision"])
    except InputInvalidError as exc:
        # Omnitool's error shape has only a message, so it names each arg that failed (the details would).
        problems = exc.details if isinstance(exc.details, list) else []
        summary = "; ".join(f"{p.get('field')}: {p.get('message')}" for p in problems) or exc.message
        raise InputInvalidError(f"args do not match the recipe: {summary}", details=exc.details) from None
    return json_response({"result": {"status": "JOB_STARTED", "jobId": job["id"], "sender": "omni"}})


def chat_inputs(contract: Mapping[str, InputField], args: Mapping[str, Any]) -> dict[str, Any]:
    """A job's inputs from Omnitool's `args`, read as its Chat Input block reads them.

    Every arg must name a field of the recipe's start node (422 naming the others). `text` may be a list
    (joined with newlines, as Omnitool does); media may be one value, a list, or several URLs on separate
    lines, and `fid://<fid>.<ext>`, `/fid/<fid>` and descriptors name stored files; `json` comes from
    `args.json`, else from `text` when that is a JSON object or array. Media are fetched or decoded, and
    every value checked, when the job is submitted (`jobs.inputs.prepare_inputs`).
    """
    unknown = [name for name in args if name not in contract and name not in OMNITOOL_BOOKKEEPING_ARGS]
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise InputInvalidError(
            f"the recipe's start node has no field for {names} (its fields: {', '.join(contract) or 'none'})",
            details=[{"field": name, "message": f"unknown arg {name!r}"} for name in unknown],
        )
    inputs: dict[str, Any] = {}
    for name, value in args.items():
        if name not in contract:
            continue
        converted = _convert(contract[name].type, value)
        if converted is not None:
            inputs[name] = converted
    json_field = contract.get("json")
    if json_field is not None and json_field.type == FieldKind.JSON and "json" not in inputs:
        parsed = _json_from_text(inputs.get("text"))
        if parsed is not None:
            inputs["json"] = parsed
    return inputs


def _convert(kind: FieldKind, value: Any) -> Any:
    if value is None:
        return None
    if kind == FieldKind.TEXT:
        return omnitool_text(value)
    if kind in MEDIA_KINDS:
        return _media(value)
    return value  # json, number and boolean values are handed on as sent (and checked by the contract)


def omnitool_text(value: Any) -> str:
    """A value as Omnitool's text socket writes it: lists joined by newlines, objects as indented JSON, a
    file descriptor as its `furl`, numbers and booleans as JSON text, null as ''."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list):
        return "\n".join(omnitool_text(item) for item in value)
    if isinstance(value, dict):
        furl = value.get("furl")
        if isinstance(value.get("fid"), str) and isinstance(furl, str):
            return furl
        return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # JavaScript writes 2.0 as "2"
    return orjson.dumps(value).decode()


def _media(value: Any) -> Any:
    items = value if isinstance(value, list) else _lines(value) if isinstance(value, str) else [value]
    converted = [_media_item(item) for item in items if item is not None and item != ""]
    if not converted:
        return None
    return converted if isinstance(value, list) or len(converted) > 1 else converted[0]


def _lines(value: str) -> list[str]:
    """Several URLs or file links on separate lines are several files (as in Omnitool); any other text, base64
    wrapped over lines included, is one value."""
    lines = [line.strip() for line in value.splitlines() if line.strip()]
    if len(lines) > 1 and all(_LINE_URL.fullmatch(line) for line in lines):
        return lines
    return [value]


def _media_item(item: Any) -> Any:
    """Omnitool's ways of naming a stored file, as the store reads them: `fid://<fid>.<ext>`, `/fid/<fid>` and a
    descriptor (`{fid}` or `{url: "/fid/…"}`) become `fid://<fid>`; anything else is handed on."""
    if isinstance(item, str):
        match = _FID_LINK.fullmatch(item)
        return f"fid://{match.group(1).lower()}" if match else item
    if isinstance(item, dict):
        fid = item.get("fid")
        if isinstance(fid, str) and _FID.fullmatch(fid.split(".", 1)[0]):
            return {"fid": fid.split(".", 1)[0].lower()}
        url = item.get("url")
        if fid is None and isinstance(url, str) and (match := _FID_LINK.fullmatch(url)):
            return {"fid": match.group(1).lower()}
    return item


def _json_from_text(text: Any) -> Any:
    if not isinstance(text, str) or not text.lstrip().startswith(("{", "[")):
        return None
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict | list) and fits_64_bits(parsed) else None


# ---------------------------------------------------------------------------------------------- jobs


@router.get("/api/v1/workflow/jobs", summary="Omnitool: the caller's active jobs and those finished recently")
async def list_workflow_jobs(rt: Runtime = Depends(runtime), me: Principal = Depends(principal)) -> Response:
    rows = await rt.jobs.recent(me.user_id, within_ms=RECENT_MS, limit=MAX_LISTED)
    jobs = [{"id": row["id"], "state": omnitool_state(row["state"]), "user": row["user_id"]} for row in rows]
    return json_response({"jobs": jobs})


# ---------------------------------------------------------------------------------------------- results


@router.get("/api/v1/workflow/results", summary="Omnitool: a finished job's result object (202 while it runs)")
async def read_workflow_result(
    request: Request,
    rt: Runtime = Depends(runtime),
    me: Principal = Depends(principal),
    job_id: str = Query(..., alias="jobId", min_length=1, max_length=100),
) -> Response:
    job = await _own_job(rt, me, job_id)
    if not is_terminal(job["state"]):
        return json_response({"jobId": job["id"], "state": omnitool_state(job["state"])}, 202)
    outputs = await rt.jobs.outputs(job) or {}
    files = rt.files.bind(user_id=me.user_id, job_id=None)
    result = await result_object(outputs, lambda ref: describe(request, files, ref))
    error = orjson.loads(job["error"]) if job["error"] else None
    result["job"] = {
        "userId": job["user_id"],
        "jobId": job["id"],
        "recipeId": job["recipe_id"],
        "success": job["state"] == "succeeded",
        "errors": None if error is None else [_error_entry(error)],
    }
    result["created"] = job["finished_at"]
    return json_response(result)


def _error_entry(error: Mapping[str, Any]) -> dict[str, Any]:
    """A stored job error as one entry of `job.errors`: the node (None for the job as a whole) and what failed."""
    return {
        "node": error.get("node"),
        "block": error.get("block"),
        "code": error.get("code"),
        "message": error.get("message"),
    }


def is_file_ref(value: Any) -> bool:
    """Whether a value is a stored file's reference (`{fid, name, mime, size}`)."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("fid"), str)
        and _FID.fullmatch(value["fid"]) is not None
        and isinstance(value.get("mime"), str)
        and isinstance(value.get("name"), str)
        and isinstance(value.get("size"), int)
    )


async def result_object(
    outputs: Mapping[str, Any], describe_ref: Callable[[FileRef], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """Omnitool's result (`text`, `objects`, `artifacts`) from a job's outputs, in the order they were named.

    Text goes to `text` (the `text` output split into lines, as Omnitool's array socket does); files to the
    artifact list their output's name says (`images`, `audio`, `documents`, `videos`, `files`), else the one
    their type says; everything else (objects, lists, numbers) to `objects`. `describe_ref(ref)` gives a
    file's descriptor.
    """
    text: list[str] = []
    objects: list[Any] = []
    artifacts: dict[str, list[dict[str, Any]]] = {key: [] for key in ARTIFACT_KEYS}
    for name, value in outputs.items():
        if value is None:
            continue
        if isinstance(value, str):
            # Omnitool's Recipe Output takes `text` as an array socket, which splits a string into its lines.
            text.extend(value.split("\n") if name == "text" else [value])
        elif is_file_ref(value) or (isinstance(value, list) and value and all(is_file_ref(v) for v in value)):
            for ref in value if isinstance(value, list) else [value]:
                described = await describe_ref(ref)
                bucket = _ARTIFACT_BY_NAME.get(name) or _ARTIFACT_BY_TYPE.get(described["fileType"], "files")
                artifacts[bucket].append(described)
        elif isinstance(value, list) and name == "text" and all(isinstance(v, str) for v in value):
            text.extend(value)
        elif isinstance(value, list) and name in _OBJECT_NAMES:
            objects.extend(value)
        else:
            objects.append(value)
    return {"text": text, "objects": objects, "artifacts": artifacts}


# ---------------------------------------------------------------------------------------------- stop


class StopBody(BaseModel):
    """`POST /api/v1/workflow/stop`: one job of the caller's, or (without `jobId`) all of them."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    job_id: str | None = Field(default=None, alias="jobId", min_length=1, max_length=100)


STOP_BODY = {
    "requestBody": {"required": False, "content": {"application/json": {"schema": StopBody.model_json_schema()}}}
}


@router.post(
    "/api/v1/workflow/stop", summary="Omnitool: stop one of the caller's jobs, or all of them", openapi_extra=STOP_BODY
)
async def stop_workflow(
    request: Request, rt: Runtime = Depends(runtime), me: Principal = Depends(principal)
) -> Response:
    raw = await request.body()
    body = StopBody.model_validate_json(raw) if raw.strip() not in (b"", b"null") else StopBody()
    if body.job_id is not None:
        job = await _own_job(rt, me, body.job_id)
        me.require_run(job["recipe_id"])  # a token limited to recipe A stops only A's jobs
        if not is_terminal(job["state"]):
            await stop_job(rt, job["id"])
    else:
        for row in await rt.jobs.active(me.user_id, limit=MAX_LISTED):
            if me.may_run(row["recipe_id"]):
                await stop_job(rt, row["id"])
    return json_response({})


async def stop_job(rt: Runtime, job_id: str) -> None:
    """Cancels a job: at once when pending; a running one is asked to stop, and stopped now if it runs here."""
    try:
        job = await rt.jobs.cancel(job_id)
    except IllegalTransitionError:  # it ended meanwhile: nothing to stop
        return
    if job["state"] == "running":
        rt.cancel_running(job_id)


# ---------------------------------------------------------------------------------------------- workflows


@router.get("/api/v1/workflow/workflows", summary="Omnitool: the recipes the caller sees, a page at a time")
async def list_workflows(
    rt: Runtime = Depends(runtime),
    me: Principal = Depends(principal),
    limit: int = Query(10, ge=1, le=500, description="Page size (Omnitool's default, 10)."),
    bookmark: str | None = Query(None, max_length=200, description="The id of the first recipe of the page."),
) -> Response:
    viewer = me.user_id  # the recipes the caller can run with exec (shared ones and their own)
    after: tuple[int, str] | None = None
    first: list[Row] = []
    if bookmark:
        marked = await recipe_store.read_recipe(rt.db, bookmark, viewer=viewer) if "\x00" not in bookmark else None
        if marked is None:
            raise ValidationError(f"bookmark {bookmark!r} is not a recipe id from this list")
        first, after = [marked], (marked["created_at"], marked["id"])
    rows = first + await recipe_store.read_recipes(rt.db, limit=limit + 1 - len(first), after=after, viewer=viewer)
    page, following = rows[:limit], rows[limit:]
    return json_response(
        {
            "success": "ok",
            "workflows": [_workflow(row, me) for row in page],
            "currBookmark": page[0]["id"] if page else "",
            "nextBookmark": following[0]["id"] if following else "",
        }
    )


def _workflow(row: Row, me: Principal) -> dict[str, Any]:
    owner = row["owner_id"]
    return {
        "id": row["id"],
        "owner": "You" if owner == me.user_id else "shared" if owner is None else "Unknown",
        "meta": {
            "name": row["name"],
            "description": row["description"],
            "created": row["created_at"],
            "updated": row["updated_at"],
            "revision": row["latest_revision"],
        },
    }
