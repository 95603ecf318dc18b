"""Data models over HTTP in Omni's shapes (`/api/v1/models*`): list and create models and branches, read topics,
read and write YAML, delete and merge branches, validate.

Authorization: any authenticated caller may read (list models, topics, YAML, validate). Changing anything
(creating a model or a branch, writing YAML, deleting or merging a branch) needs an admin acting as one
(`acts_as_admin`: an admin's JWT or personal key with `manage all`); everyone else gets 403. Organization keys
read only: models and their connections are the whole server's, not one organization's, and an org key (which
any member may make) deliberately carries no admin powers. Connections are registered by the operator only
(`conveyor models add`): a connection's target is a path or URL on the server, so HTTP shows only its id.

Errors have Omni's shape `{"detail", "status"}` (see `api/errors.py`): 400 for a bad body or a non-UUID id,
404 for an unknown model, branch, topic or file, 409 for a `previousChecksum` that no longer matches.
Differences from Omni: models are SHARED (or BRANCH) only; `modelKind` omitted means SHARED; YAML `mode` is
`combined` only; as in Omni a merge keeps the branch (emptied: its changes are the model's now) unless the body
says `"delete_branch": true`; model names are unique among live shared models; `accessGrants` on create is
refused (400): there are no per-model grants, every user of this server may read every model.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from conveyor.analytics.checks import branch_name
from conveyor.analytics.semantic import Field as ModelField
from conveyor.analytics.semantic import SemanticModel, Topic, View, join_columns
from conveyor.analytics.store import BRANCH, SHARED, ModelService
from conveyor.api.auth import principal
from conveyor.api.deps import iso, json_response
from conveyor.auth.principal import Principal
from conveyor.errors import BadRequestError, ForbiddenError, NotFoundError
from conveyor.store.db import Row

router = APIRouter(tags=["models"])

ModelKind = Literal["SCHEMA", "SHARED", "SHARED_EXTENSION", "BRANCH", "WORKBOOK", "QUERY"]
YamlMode = Literal["combined", "extension", "staged", "merged", "history"]
SortField = Literal["name", "modelKind", "connectionId", "baseModelId", "createdAt", "updatedAt"]


async def model_service(request: Request) -> ModelService:
    """The process's model service (opened with the app; its cache of parsed models lives as long)."""
    service: ModelService = request.app.state.models
    return service


def _editor(me: Principal) -> Principal:
    if not me.acts_as_admin:
        raise ForbiddenError("Forbidden: changing data models needs an admin's token with `manage all`")
    return me


def uuid_param(name: str, value: str | None) -> str | None:
    """A UUID from the path, query or body, normalised; anything else is a 400 (as Omni answers)."""
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise BadRequestError(f"Bad Request: {name}: Invalid uuid") from None


def _required_uuid(name: str, value: str) -> str:
    checked = uuid_param(name, value)
    assert checked is not None
    return checked


class ModelCreate(BaseModel):
    """Omni's `CreateModelSchemaBase`: a shared model on a connection, or a branch of a shared model."""

    model_config = ConfigDict(extra="forbid")

    connectionId: str = Field(max_length=64)
    modelKind: Literal["SCHEMA", "SHARED", "SHARED_EXTENSION", "BRANCH"] | None = None
    modelName: str | None = Field(None, max_length=200)
    baseModelId: str | None = Field(None, max_length=64)
    allowAsWorkbookBase: bool | None = None
    usesIsolatedBranches: bool | None = None
    accessGrants: list[dict[str, Any]] | None = Field(None, max_length=100)


class YamlWrite(BaseModel):
    """Omni's `ModelYamlCreateRequestBody`."""

    model_config = ConfigDict(extra="forbid")

    fileName: str = Field(min_length=1, max_length=255)
    yaml: str
    branchId: str | None = Field(None, max_length=64)
    mode: YamlMode = "combined"
    commitMessage: str | None = Field(None, max_length=2000)
    fetchedAtMillis: float | None = None
    fullyResolved: bool = False
    previousChecksum: str | None = Field(None, max_length=128)


class MergeBody(BaseModel):
    """Omni's `ModelsMergeBranchBody` (there is no git here: `commit_message` and the git options are accepted
    and have nothing to act on)."""

    model_config = ConfigDict(extra="forbid")

    commit_message: str | None = Field(None, max_length=2000)
    delete_branch: bool | None = None
    force_override_git_settings: bool = False
    publish_drafts: bool = True


def model_record(row: Row, branches: list[Row] | None = None) -> dict[str, Any]:
    """One record of Omni's `ModelsListResponse` (never the connection's target)."""
    record: dict[str, Any] = {
        "baseModelId": row["base_model_id"],
        "connectionId": row["connection_id"],
        "createdAt": iso(row["created_at"]),
        "deletedAt": iso(row["deleted_at"]),
        "id": row["id"],
        "modelKind": row["kind"],
        "name": row["name"],
        "updatedAt": iso(row["updated_at"]),
    }
    if branches is not None:
        record["branches"] = [{"id": b["id"], "name": b["name"]} for b in branches]
    return record


@router.get("/api/v1/models", summary="List models (Omni)")
async def list_models(
    base_model_id: str | None = Query(None, alias="baseModelId", max_length=64),
    connection_id: str | None = Query(None, alias="connectionId", max_length=64),
    cursor: str | None = Query(None, max_length=20),
    include: str | None = Query(None, max_length=200),
    include_deleted: Literal["0", "1", "true", "false"] = Query("false", alias="includeDeleted"),
    model_id: str | None = Query(None, alias="modelId", max_length=64),
    model_kind: ModelKind | None = Query(None, alias="modelKind"),
    name: str | None = Query(None, max_length=200),
    page_size: int = Query(20, alias="pageSize", gt=0, le=100),
    sort_direction: Literal["asc", "desc"] = Query("asc", alias="sortDirection"),
    sort_field: SortField = Query("createdAt", alias="sortField"),
    _me: Principal = Depends(principal),
    models: ModelService = Depends(model_service),
) -> Response:
    offset = 0
    if cursor:
        if not cursor.isdigit() or int(cursor) > 1_000_000:
            raise BadRequestError("Bad Request: cursor: not one this server gave out")
        offset = int(cursor)
    filters = {
        "modelId": uuid_param("modelId", model_id),
        "baseModelId": uuid_param("baseModelId", base_model_id),
        "connectionId": uuid_param("connectionId", connection_id),
        "modelKind": model_kind,
        "name": name,
    }
    found = await models.list_models(
        filters=filters,
        include_deleted=include_deleted in ("1", "true"),
        sort_field=sort_field,
        descending=sort_direction == "desc",
        offset=offset,
        page_size=page_size,
    )
    with_branches = "activeBranches" in (include or "").split(",")
    branches = await models.branches([r["id"] for r in found.rows if r["kind"] == SHARED]) if with_branches else {}
    records = [model_record(row, branches.get(row["id"], []) if with_branches else None) for row in found.rows]
    page_info = {
        "hasNextPage": found.next_cursor is not None,
        "nextCursor": found.next_cursor,
        "pageSize": page_size,
        "totalRecords": found.total,
    }
    return json_response({"pageInfo": page_info, "records": records})


@router.post("/api/v1/models", summary="Create a model or a branch (Omni; admins)")
async def create_model(
    body: ModelCreate, me: Principal = Depends(principal), models: ModelService = Depends(model_service)
) -> Response:
    _editor(me)
    if body.accessGrants is not None:
        raise BadRequestError("Bad Request: accessGrants is not supported: models are readable by every user of "
                              "this server")  # fmt: skip
    kind = body.modelKind or SHARED
    if kind not in (SHARED, BRANCH):
        raise BadRequestError(f"Bad Request: modelKind: {kind} models are not supported here (SHARED or BRANCH)")
    connection_id = _required_uuid("connectionId", body.connectionId)
    if not body.modelName:
        raise BadRequestError("Bad Request: modelName: Required")
    if kind == BRANCH:
        if body.baseModelId is None:
            raise BadRequestError("Bad Request: baseModelId: Required for a branch")
        base = await models.model(_required_uuid("baseModelId", body.baseModelId))
        if base["connection_id"] != connection_id:
            raise BadRequestError("Bad Request: connectionId: a branch uses its base model's connection")
        row = await models.create_branch(base["id"], branch_name(body.modelName), created_by=me.user_id)
    else:
        if body.baseModelId is not None:
            raise BadRequestError("Bad Request: baseModelId: only a branch has a base model")
        row = await models.create_model(body.modelName, connection_id, created_by=me.user_id)
    return json_response({"success": True, "model": {"id": row["id"], "modelKind": row["kind"], "name": row["name"]}})


@router.get("/api/v1/models/{model_id}/topic", summary="List a model's topics (Omni)")
async def list_topics(
    model_id: str,
    branch_id: str | None = Query(None, max_length=64),
    _me: Principal = Depends(principal),
    models: ModelService = Depends(model_service),
) -> Response:
    resolved = await models.resolve(_required_uuid("modelId", model_id), uuid_param("branch_id", branch_id))
    topics = [topic_summary(topic) for _, topic in sorted(resolved.semantic.topics.items())]
    return json_response({"success": True, "topics": topics})


@router.get("/api/v1/models/{model_id}/topic/{topic_name}", summary="Get a topic with its views (Omni)")
async def get_topic(
    model_id: str,
    topic_name: str,
    branch_id: str | None = Query(None, max_length=64),
    _me: Principal = Depends(principal),
    models: ModelService = Depends(model_service),
) -> Response:
    resolved = await models.resolve(_required_uuid("modelId", model_id), uuid_param("branch_id", branch_id))
    topic = resolved.semantic.topics.get(topic_name)
    if topic is None:
        raise NotFoundError("topic", topic_name[:200])
    return json_response({"success": True, "topic": topic_detail(resolved.semantic, topic)})


def topic_summary(topic: Topic) -> dict[str, Any]:
    """A topic as Omni lists it: `name`, `base_view_name`, and its label, description and hidden flag."""
    return {
        "name": topic.name,
        "base_view_name": topic.base_view,
        "label": topic.label or topic.name,
        "description": topic.description,
        "hidden": topic.hidden,
    }


def topic_detail(model: SemanticModel, topic: Topic) -> dict[str, Any]:
    """A topic as Omni's `ModelsGetTopicResponse` has it, plus its AI context, sample questions and default
    filters (what a client needs to ask good questions)."""
    relationships = []
    for view_name, join in topic.joins.items():
        named = [v for v, _ in join_columns(join) if v != view_name]
        relationships.append(
            {
                "join_from_view": named[0] if named else topic.base_view,
                "join_to_view": view_name,
                "join_type": "always_left",
                "on_sql": join.sql_on,
                "relationship_type": join.relationship,
            }
        )
    views = [view_detail(model.views[name]) for name in topic.view_names() if name in model.views]
    return {
        **topic_summary(topic),
        "ai_context": topic.ai_context,
        "sample_questions": list(topic.sample_questions),
        "default_filters": {k: _plain(v) for k, v in topic.default_filters.items()},
        "relationships": relationships,
        "views": views,
    }


def view_detail(view: View) -> dict[str, Any]:
    """A view as a topic shows it: its table and its dimensions and measures, each with its SQL and type."""

    def one(field: ModelField) -> dict[str, Any]:
        out = {
            "field_name": field.name,
            "view_name": view.name,
            "sql": field.sql,
            "type": field.type,
            "label": field.label or field.name,
            "description": field.description,
        }
        if field.aggregate is not None:
            out["aggregate_type"] = field.aggregate
        return out

    return {
        "name": view.name,
        "label": view.label or view.name,
        "description": view.description,
        "table_name": view.table,
        "dimensions": [one(f) for f in view.dimensions.values()],
        "measures": [one(f) for f in view.measures.values()],
    }


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_none=True)
    return value


@router.get("/api/v1/models/{model_id}/yaml", summary="Get a model's YAML files (Omni)")
async def get_yaml(
    model_id: str,
    branch_id: str | None = Query(None, alias="branchId", max_length=64),
    file_name: str | None = Query(None, alias="fileName", max_length=255),
    mode: YamlMode = Query("combined"),
    fully_resolved: str | None = Query(None, alias="fullyResolved", max_length=10),
    include_checksums: str | None = Query(None, alias="includeChecksums", max_length=10),
    include_schemas: str | None = Query(None, alias="includeSchemas", max_length=200),
    _me: Principal = Depends(principal),
    models: ModelService = Depends(model_service),
) -> Response:
    _combined_only(mode)
    del fully_resolved, include_schemas  # accepted for Omni's clients: no extends chain or schemas exist here
    found = await models.files(_required_uuid("modelId", model_id), uuid_param("branchId", branch_id))
    files, checksums = found.files, found.checksums
    if file_name is not None:
        if file_name not in files:
            raise NotFoundError("file", file_name)
        files, checksums = {file_name: files[file_name]}, {file_name: checksums[file_name]}
    body: dict[str, Any] = {"files": files, "version": found.version}
    if (include_checksums or "").lower() in ("true", "1"):
        body["checksums"] = checksums
    return json_response(body)


@router.post("/api/v1/models/{model_id}/yaml", summary="Write one YAML file of a model or branch (Omni; admins)")
async def write_yaml(
    model_id: str, body: YamlWrite, me: Principal = Depends(principal), models: ModelService = Depends(model_service)
) -> Response:
    _editor(me)
    _combined_only(body.mode)
    found = await models.write_file(
        _required_uuid("modelId", model_id),
        body.fileName,
        body.yaml,
        branch_id=uuid_param("branchId", body.branchId),
        previous_checksum=body.previousChecksum,
    )
    return json_response({"files": found.files, "checksums": found.checksums, "version": found.version})


def _combined_only(mode: str) -> None:
    if mode != "combined":
        raise BadRequestError(f"Bad Request: mode: only `combined` is supported, not {mode!r}")


@router.delete("/api/v1/models/{model_id}/branch/{branch:path}", summary="Delete a branch (Omni; admins)")
async def delete_branch(
    model_id: str, branch: str, me: Principal = Depends(principal), models: ModelService = Depends(model_service)
) -> Response:
    _editor(me)
    await models.delete_branch(_required_uuid("modelId", model_id), branch)
    return json_response({"success": True})


@router.post("/api/v1/models/{model_id}/branch/{branch:path}/merge", summary="Merge a branch (Omni; admins)")
async def merge_branch(
    model_id: str,
    branch: str,
    body: MergeBody | None = None,
    me: Principal = Depends(principal),
    models: ModelService = Depends(model_service),
) -> Response:
    _editor(me)
    delete = body is not None and body.delete_branch is True  # Omni's default: the branch stays
    await models.merge_branch(_required_uuid("modelId", model_id), branch, delete_branch=delete)
    return json_response({"success": True, "failed_drafts_count": 0, "git_synced": False, "published_drafts_count": 0})


@router.get("/api/v1/models/{model_id}/validate", summary="Validate a model against its YAML and database (Omni)")
async def validate_model(
    model_id: str,
    branch_id: str | None = Query(None, alias="branchId", max_length=64),
    limit: int = Query(1000, gt=0, le=10_000),
    _me: Principal = Depends(principal),
    models: ModelService = Depends(model_service),
) -> Response:
    problems = await models.validate(_required_uuid("modelId", model_id), uuid_param("branchId", branch_id))
    issues = []
    for problem in problems[:limit]:
        issue: dict[str, Any] = {"message": problem.message, "severity": problem.severity}
        for key in ("view", "field", "file"):
            if getattr(problem, key) is not None:
                issue[key] = getattr(problem, key)
        issues.append(issue)
    valid = not any(p.severity == "error" for p in problems)
    return json_response({"issues": issues, "valid": valid})
