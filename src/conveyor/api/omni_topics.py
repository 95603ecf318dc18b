"""Omni's `pick-topic` and `generate-query` (`/api/v1/ai/*`): the first steps of an AI job, answered at once.

Bodies take Omni's camelCase names only and a failed validation is a 400, as in `api.omni`; an org key may act
for the body's `userId`. The answer pipeline (`analytics.ask`, with sqlglot) is imported on first use.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from conveyor.api.auth import principal
from conveyor.api.deps import json_response
from conveyor.api.omni import admit, check_uuid, omni_services, parse_body
from conveyor.errors import ConveyorError, ForbiddenError, ModelError, NotFoundError, ValidationError
from conveyor.runtime import Runtime

router = APIRouter(tags=["omni"])


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


async def _topic_call(request: Request, model: type[_TopicParams]) -> tuple[Runtime, Any, Any]:
    """The caller (an org key may act for the body's `userId`), the body, and the resolved model (404)."""
    rt: Runtime = request.app.state.runtime
    me = await principal(request)
    admit(request, me)
    body = parse_body(model, await request.body())
    if body.user_id is not None and body.user_id != me.user_id:
        if me.key_kind != "org":
            raise ForbiddenError("Forbidden: userId is only for organization API keys")
        await rt.auth.authenticate(request.headers.get("authorization"), body.user_id)  # 403 outside the org
    model_id = check_uuid(body.model_id, "modelId")
    branch_id = check_uuid(body.branch_id, "branchId") if body.branch_id is not None else None
    resolved = await omni_services(request)[1].resolve(model_id, branch_id)
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
    from conveyor.analytics.ask import generate_query  # loaded on first use, not at start
    from conveyor.analytics.attempts import AnswerFailedError

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
