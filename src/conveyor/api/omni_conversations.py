"""Omni's AI conversations (`/api/v1/ai/conversations*`) and the chat page `omniChatUrl` opens (`/chat/{id}`).

The chat page without credentials is a static shell holding no data: it asks for a token and fetches the same
URL with it; with `Authorization` it renders the owner's conversation (Jinja2, autoescaped). So the URL alone
shows a stranger nothing. Answers older than `omni.retention_days` are left out, as `GET .../result` says 404.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse
from jinja2 import Environment, select_autoescape

from conveyor.analytics.ai_jobs import AiJobService
from conveyor.api.auth import principal
from conveyor.api.deps import decode_cursor, encode_cursor, iso, json_response
from conveyor.api.omni import MAX_PAGE_SIZE, ai_state, chat_url, check_uuid, expired, omni_services, result_body
from conveyor.store.db import Row

router = APIRouter(tags=["omni"])


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
    ai, _ = omni_services(request)
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
        if await ai_state(ai, row) == "COMPLETE" and not expired(request, row):
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
    ai, _ = omni_services(request)
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
    ai, _ = omni_services(request)
    conversation = await ai.own_conversation(check_uuid(conversation_id, "conversationId"), me.user_id)
    turns = []
    for row in await ai.conversation_jobs(conversation["id"]):
        state = await ai_state(ai, row)
        turn: dict[str, Any] = {"prompt": row["prompt"], "created": iso(row["created_at"]), "state": state}
        turn["actions"], turn["answer"] = [], None
        if state == "COMPLETE" and not expired(request, row):
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
