"""Omni AI jobs in the store: the built-in AI recipe, AI job rows, conversations and their one-active-job rule.

An AI job *is* a Conveyor job of the built-in recipe `omni-ai-job` (one `ask_data` node): durable, recovered,
cancellable, delivered by the outbox. This module keeps what Omni adds around it: the `ai_jobs` row (the same id
as the job; model, branch, topic, prompt, the webhook's sealed secret and raw metadata, who cancelled it) and the
`ai_conversations` row that strings jobs into a conversation. It never builds HTTP answers (`api/omni.py` does).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import logging
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from conveyor.errors import ConflictError, ConveyorError, NotFoundError
from conveyor.jobs.queries import now_ms
from conveyor.jobs.service import JobService
from conveyor.recipes.graph import RecipeGraph
from conveyor.recipes.service import RecipeService
from conveyor.store.db import Database, Op, Row

log = logging.getLogger("conveyor.omni")

AI_RECIPE_ID = "omni-ai-job"
ASK_BLOCK = "ask_data"
MAX_PROMPT = 10_000
HISTORY_TURNS = 10  # earlier jobs of a conversation passed to the next one as context
HISTORY_TEXT_MAX = 4_000
MAX_CONVERSATION_TURNS = 200  # a conversation's messages and chat page show its newest turns, up to this many
RESERVATION_TTL_MS = 60_000  # a reservation left by a submit that died is taken over after this
ACTIVE_JOB_STATES = ("pending", "running")
NIL_ORG = "00000000-0000-0000-0000-000000000000"  # organizationId of users outside any organization

# The built-in recipe: the start node's fields are what the API fills in; the outputs are `ask_data`'s.
ASK_OUTPUTS = ("markdown", "sql", "rows", "columns", "topic", "actions", "query", "result_summary")
AI_RECIPE: dict[str, Any] = {
    "id": AI_RECIPE_ID,
    "name": "Omni AI job",
    "description": "Answers a question about a data model (built in: runs `POST /api/v1/ai/jobs`; not editable).",
    "nodes": {
        "start": {
            "block": "chat_input",
            "config": {
                "fields": {
                    "model_id": {"type": "text", "required": True, "max_length": 36},
                    "branch_id": {"type": "text", "max_length": 36},
                    "topic_name": {"type": "text", "max_length": 256},
                    "question": {"type": "text", "required": True, "max_length": MAX_PROMPT},
                    "history": {"type": "json"},
                }
            },
        },
        "ask": {
            "block": ASK_BLOCK,
            "inputs": {
                "model_id": "start.model_id",
                "branch_id": "start.branch_id",
                "topic_name": "start.topic_name",
                "question": "start.question",
                "history": "start.history",
            },
        },
        "out": {"block": "recipe_output", "inputs": {name: f"ask.{name}" for name in ASK_OUTPUTS}},
    },
}


class AiUnavailableError(ConveyorError):
    """The `ask_data` block is not in this build, so AI jobs cannot run; the API answers 503."""

    status = 503
    code = "ai_unavailable"


@dataclass(frozen=True, slots=True)
class AiRecipe:
    """The built-in recipe's row and the revision AI jobs run (the one whose body is `AI_RECIPE`)."""

    row: Row
    revision: int
    graph: RecipeGraph


def ai_recipe(ask_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`AI_RECIPE` with the `ask_data` node configured as settings say (`omni.provider`, `omni.sql_mode`)."""
    doc = copy.deepcopy(AI_RECIPE)
    if ask_config:
        doc["nodes"]["ask"]["config"] = dict(ask_config)
    return doc


async def ensure_ai_recipe(recipes: RecipeService, ask_config: Mapping[str, Any] | None = None) -> AiRecipe:
    """The built-in AI recipe, created on first use (shared: no owner).

    AI jobs always run the revision whose body is `ai_recipe(ask_config)` (found, or added when the code or the
    settings changed it), never simply the newest: an admin who edits or deletes the recipe through the recipe API
    changes nothing AI jobs run. It is read without the `deleted_at` filter for the same reason.
    """
    if ASK_BLOCK not in recipes.registry:
        raise AiUnavailableError("AI jobs need the ask_data block, which this build does not have")
    doc = ai_recipe(ask_config)
    graph = recipes.validate(doc)
    body = graph.doc.body()
    row = await recipes.db.fetch_one(
        "SELECT id, name, latest_revision, owner_id FROM recipes WHERE id = $1", AI_RECIPE_ID
    )
    if row is None:
        try:
            await recipes.create(doc)
        except ConflictError:
            pass  # another process created it a moment ago
        row = await recipes.db.fetch_one(
            "SELECT id, name, latest_revision, owner_id FROM recipes WHERE id = $1", AI_RECIPE_ID
        )
        assert row is not None
    revision = await _matching_revision(recipes, body)
    if revision is None:
        await recipes.update(AI_RECIPE_ID, doc)
        revision = await _matching_revision(recipes, body)
        assert revision is not None
    return AiRecipe(row=dict(row), revision=revision, graph=await recipes.graph(AI_RECIPE_ID, revision))


async def _matching_revision(recipes: RecipeService, body: dict[str, Any]) -> int | None:
    rows = await recipes.db.fetch_all(
        "SELECT revision, body FROM recipe_revisions WHERE recipe_id = $1 ORDER BY revision DESC", AI_RECIPE_ID
    )
    for row in rows:
        if orjson.loads(row["body"]) == body:
            return int(row["revision"])
    return None


class SecretBox:
    """Seals webhook signing secrets at rest: HMAC-SHA256 in counter mode as the key stream, then an HMAC tag
    over nonce and ciphertext (encrypt-then-MAC), with keys derived from the server's signing secret. A database
    dump alone does not reveal them; `open` refuses anything tampered with. Built on `hashlib`/`hmac` rather than
    the `cryptography` package on purpose: once installed, PyJWT imports it into every process (+9 MB idle RSS,
    measured), for the one AEAD this needs."""

    def __init__(self, master: bytes) -> None:
        self._enc = hmac.new(master, b"conveyor omni webhook secret: encrypt", hashlib.sha256).digest()
        self._mac = hmac.new(master, b"conveyor omni webhook secret: mac", hashlib.sha256).digest()

    def _stream(self, nonce: bytes, size: int) -> bytes:
        blocks = (size + 31) // 32
        return b"".join(
            hmac.new(self._enc, nonce + i.to_bytes(4, "big"), hashlib.sha256).digest() for i in range(blocks)
        )[:size]

    def seal(self, secret: str) -> str:
        data = secret.encode()
        nonce = secrets.token_bytes(16)
        cipher = bytes(a ^ b for a, b in zip(data, self._stream(nonce, len(data)), strict=True))
        tag = hmac.new(self._mac, nonce + cipher, hashlib.sha256).digest()
        return "v1." + base64.urlsafe_b64encode(nonce + tag + cipher).decode()

    def open(self, sealed: str) -> str:
        raw = base64.urlsafe_b64decode(sealed.removeprefix("v1.").encode())
        nonce, tag, cipher = raw[:16], raw[16:48], raw[48:]
        if not hmac.compare_digest(tag, hmac.new(self._mac, nonce + cipher, hashlib.sha256).digest()):
            raise ValueError("sealed secret does not verify")
        return bytes(a ^ b for a, b in zip(cipher, self._stream(nonce, len(cipher)), strict=True)).decode()


@dataclass(frozen=True, slots=True)
class NewAiJob:
    """What a submit stores beside the job."""

    conversation_id: str
    user_id: str
    org_id: str | None
    model_id: str
    branch_id: str | None
    topic_name: str | None
    prompt: str
    webhook_secret: str | None  # already sealed
    webhook_metadata: str | None  # the exact JSON text
    progress_webhook: bool


_AI_JOB_COLUMNS = (
    "a.id, a.conversation_id, a.user_id, a.org_id, a.model_id, a.branch_id, a.topic_name, a.prompt, "
    "a.webhook_metadata, a.progress_webhook, a.cancelled_by, a.created_at, j.state, j.result, j.error, j.usage, "
    "j.started_at, j.finished_at, j.updated_at, j.cancel_requested, j.recipe_id"
)
_ACTIVE = "('pending', 'running')"
# A conversation is free when no job holds it, its job has ended, or a reservation was abandoned.
_FREE = (
    "(active_job_id IS NULL OR active_job_id IN (SELECT id FROM jobs WHERE state NOT IN ('pending', 'running'))"
    " OR (active_job_id LIKE 'r:%' AND active_since < CAST($4 AS BIGINT)))"
)


class AiJobService:
    """AI job rows and conversations."""

    def __init__(self, db: Database, jobs: JobService) -> None:
        self.db = db
        self.jobs = jobs

    async def reserve(
        self, conversation_id: str | None, *, user_id: str, org_id: str | None, model_id: str, prompt: str
    ) -> tuple[str, str]:
        """Holds a conversation for one new job: (conversation id, reservation). A new conversation when
        `conversation_id` is None; 404 for one the user does not own; 409 while it has an active job.

        The hold is one conditional UPDATE, so two submits racing for one conversation cannot both pass.
        """
        token = "r:" + secrets.token_hex(16)
        at = now_ms()
        if conversation_id is None:
            conversation_id = str(uuid.uuid4())
            await self.db.execute(
                "INSERT INTO ai_conversations (id, user_id, org_id, model_id, title, active_job_id, active_since,"
                " created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7)",
                conversation_id,
                user_id,
                org_id,
                model_id,
                " ".join(prompt.split())[:200] or "(empty)",
                token,
                at,
            )
            return conversation_id, token
        await self.own_conversation(conversation_id, user_id)
        taken = await self.db.execute(
            f"UPDATE ai_conversations SET active_job_id = $2, active_since = $3, updated_at = $3 "
            f"WHERE id = $1 AND {_FREE}",
            conversation_id,
            token,
            at,
            at - RESERVATION_TTL_MS,
        )
        if not taken:
            raise ConflictError("An active job already exists for this conversation")
        return conversation_id, token

    async def release(self, conversation_id: str, token: str) -> None:
        """Gives a conversation back after a submit that failed before its job existed."""
        await self.db.execute(
            "UPDATE ai_conversations SET active_job_id = NULL, active_since = NULL"
            " WHERE id = $1 AND active_job_id = $2",
            conversation_id,
            token,
        )

    async def attach(self, job_id: str, token: str, new: NewAiJob) -> None:
        """Stores the AI job row and hands the conversation's hold from the reservation to the job (whose row
        must exist). The API uses `attach_ops` in the job's own submit instead, so the row exists before any
        executor can claim the job."""
        await self.db.write(*self.attach_ops(job_id, token, new))

    @staticmethod
    def attach_ops(job_id: str, token: str, new: NewAiJob) -> tuple[Op, Op]:
        """The writes of `attach`, each done only when the job `job_id` exists: run in the same transaction as the
        job's insert (`JobService.submit(extra_ops=...)`), the job is never seen without its AI job row (progress
        relayed from its first event, webhooks signed from the first), and a refused insert (queue full) leaves
        nothing behind."""
        at = now_ms()
        return (
            Op(
                "INSERT INTO ai_jobs (id, conversation_id, user_id, org_id, model_id, branch_id, topic_name, prompt,"
                " webhook_secret, webhook_metadata, progress_webhook, created_at)"
                " SELECT CAST($1 AS VARCHAR(36)), $2, $3, $4, $5, $6, $7, $8, $9, $10, CAST($11 AS INTEGER),"
                " CAST($12 AS BIGINT) WHERE EXISTS (SELECT 1 FROM jobs WHERE id = CAST($1 AS VARCHAR(36)))",
                (
                    job_id,
                    new.conversation_id,
                    new.user_id,
                    new.org_id,
                    new.model_id,
                    new.branch_id,
                    new.topic_name,
                    new.prompt,
                    new.webhook_secret,
                    new.webhook_metadata,
                    int(new.progress_webhook),
                    at,
                ),
            ),
            Op(
                "UPDATE ai_conversations SET active_job_id = $3, active_since = $4, updated_at = $4"
                " WHERE id = $1 AND active_job_id = $2 AND EXISTS (SELECT 1 FROM jobs WHERE id = $3)",
                (new.conversation_id, token, job_id, at),
            ),
        )

    async def own_conversation(self, conversation_id: str, user_id: str) -> Row:
        """The user's conversation; anyone else's is as unknown as a missing one (404)."""
        row = await self.db.fetch_one(
            "SELECT id, user_id, org_id, model_id, title, created_at, updated_at FROM ai_conversations WHERE id = $1",
            conversation_id,
        )
        if row is None or row["user_id"] != user_id:
            raise NotFoundError("conversation", conversation_id)
        return row

    async def get(self, job_id: str) -> Row | None:
        """The AI job with its Conveyor job's state, result, error and times."""
        return await self.db.fetch_one(
            f"SELECT {_AI_JOB_COLUMNS} FROM ai_jobs a JOIN jobs j ON j.id = a.id WHERE a.id = $1", job_id
        )

    async def conversation_jobs(self, conversation_id: str, *, limit: int = MAX_CONVERSATION_TURNS) -> list[Row]:
        """A conversation's newest `limit` jobs, oldest first (a long conversation shows its latest turns)."""
        rows = await self.db.fetch_all(
            f"SELECT {_AI_JOB_COLUMNS} FROM ai_jobs a JOIN jobs j ON j.id = a.id WHERE a.conversation_id = $1"
            " ORDER BY a.created_at DESC, a.id DESC LIMIT $2",
            conversation_id,
            limit,
        )
        return list(reversed(rows))

    async def history(self, conversation_id: str) -> list[dict[str, str]]:
        """The context a new job of the conversation gets: the last turns' prompts and, for jobs that succeeded,
        their result summaries (`{role: user|assistant, text}`), oldest first."""
        rows = await self.conversation_jobs(conversation_id, limit=HISTORY_TURNS)
        turns: list[dict[str, str]] = []
        for row in rows:
            turns.append({"role": "user", "text": row["prompt"][:HISTORY_TEXT_MAX]})
            summary = await self.result_summary(row)
            if summary:
                turns.append({"role": "assistant", "text": summary[:HISTORY_TEXT_MAX]})
        return turns

    async def outputs(self, row: Row) -> dict[str, Any] | None:
        """The `ask_data` outputs of a job that succeeded (None otherwise)."""
        if row["state"] != "succeeded":
            return None
        return await self.jobs.outputs(row)

    async def result_summary(self, row: Row) -> str | None:
        outputs = await self.outputs(row)
        if not outputs:
            return None
        summary = outputs.get("result_summary") or outputs.get("markdown")
        return summary if isinstance(summary, str) else None

    async def delivering(self, job_id: str) -> bool:
        """Whether a terminal webhook of the job is still to be delivered (progress events do not count)."""
        found = await self.db.fetch_val(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE job_id = $1 AND state = 'pending' AND event LIKE 'job.%'",
            job_id,
        )
        return bool(found)

    async def progress(self, job_id: str) -> tuple[int, str, int] | None:
        """(iteration, message, at) of the job's latest `progress` event; iteration counts them from 1."""
        count = int(
            await self.db.fetch_val("SELECT COUNT(*) FROM job_events WHERE job_id = $1 AND kind = 'progress'", job_id)
        )
        if not count:
            return None
        row = await self.db.fetch_one(
            "SELECT data, at FROM job_events WHERE job_id = $1 AND kind = 'progress' ORDER BY id DESC LIMIT 1", job_id
        )
        assert row is not None
        data = orjson.loads(row["data"])
        message = data.get("message") if isinstance(data, dict) else None
        return count, str(message or ""), int(row["at"])

    async def mark_cancelled_by(self, job_id: str, user_id: str) -> None:
        """Records who asked first to cancel the job (kept if it was already cancelled by someone)."""
        await self.db.execute(
            "UPDATE ai_jobs SET cancelled_by = $2 WHERE id = $1 AND cancelled_by IS NULL", job_id, user_id
        )

    async def sealed_secret(self, job_id: str) -> str | None:
        value = await self.db.fetch_val("SELECT webhook_secret FROM ai_jobs WHERE id = $1", job_id)
        return str(value) if value else None

    async def list_conversations(
        self, user_id: str, *, limit: int, after: tuple[int, str] | None
    ) -> tuple[list[Row], int]:
        """The user's conversations, newest first, keyset-paginated on (created_at, id)."""
        args: list[Any] = [user_id]
        where = "user_id = $1"
        if after is not None:
            args.extend(after)
            where += " AND (created_at < $2 OR (created_at = $2 AND id < $3))"
        args.append(limit)
        rows = await self.db.fetch_all(
            f"SELECT id, user_id, org_id, model_id, title, created_at, updated_at FROM ai_conversations WHERE {where}"
            f" ORDER BY created_at DESC, id DESC LIMIT ${len(args)}",
            *args,
        )
        total = int(await self.db.fetch_val("SELECT COUNT(*) FROM ai_conversations WHERE user_id = $1", user_id))
        return rows, total
