"""The `omni` webhook dialect: Omni's terminal and progress bodies, signed with each job's own secret, and the
relay that turns AI jobs' progress events into one-shot outbox rows.

Terminal body, exactly: `{"event_id", "jobId", "status", "result_summary", "metadata", "completed_at"}`, where
`metadata` is the caller's `webhookMetadata` text spliced in as sent (`orjson.Fragment`) and `event_id` is derived
from the job and event, so every retry from any process carries the same. Progress bodies: `{"event_id", "jobId",
"status": "EXECUTING", "progress": {"iteration", "message", "updatedAt"}, "metadata"}`, one attempt each (the
dispatcher never retries `progress.*` events). Signing: `webhooks.signing.OmniSigner`; no secret, no signature.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from conveyor.analytics.ai_jobs import AiJobService, SecretBox
from conveyor.api.deps import iso
from conveyor.auth.secret import load_signing_secret
from conveyor.jobs.queries import now_ms
from conveyor.jobs.service import JobService
from conveyor.settings import Settings
from conveyor.store.db import Database, Row
from conveyor.webhooks.dialects import WebhookDialects
from conveyor.webhooks.signing import OmniSigner

log = logging.getLogger("conveyor.omni")

DIALECT = "omni"
WEBHOOK_STATUS = {"succeeded": "COMPLETE", "failed": "FAILED", "cancelled": "CANCELLED"}
EVENT_NAMESPACE = uuid.UUID("6f0c7a52-54c4-4b8e-9a55-0c1b5e8e4f11")


def event_id(job_id: str, event: str) -> str:
    """A webhook event's id: derived from the job and event, so every retry (from any process) carries the same."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{job_id}/{event}"))


class OmniWebhooks:
    """The `omni` dialect: Omni's terminal body `{event_id, jobId, status, result_summary, metadata, completed_at}`
    (and progress bodies), signed with the job's own secret (`webhooks.signing.OmniSigner`)."""

    def __init__(self, box: SecretBox) -> None:
        self.box = box

    async def payload(self, jobs: JobService, job: Row, event: str) -> dict[str, Any]:
        ai = AiJobService(jobs.db, jobs)
        row = await ai.get(job["id"])
        if row is None:
            raise LookupError(f"AI job {job['id']} has no row yet")
        metadata = orjson.Fragment(row["webhook_metadata"]) if row["webhook_metadata"] is not None else None
        if event.startswith("progress."):
            return await self._progress(jobs.db, row, event, metadata)
        summary = await ai.result_summary(row) if job["state"] == "succeeded" else None
        return {
            "event_id": event_id(job["id"], event),
            "jobId": job["id"],
            "status": WEBHOOK_STATUS.get(job["state"], job["state"].upper()),
            "result_summary": summary,
            "metadata": metadata,
            "completed_at": iso(job["finished_at"]),
        }

    async def _progress(self, db: Database, row: Row, event: str, metadata: Any) -> dict[str, Any]:
        event_row = await db.fetch_one(
            "SELECT id, data, at FROM job_events WHERE id = $1 AND job_id = $2", int(event.split(".", 1)[1]), row["id"]
        )
        if event_row is None:
            raise LookupError(f"progress event {event} is gone")
        iteration = await db.fetch_val(
            "SELECT COUNT(*) FROM job_events WHERE job_id = $1 AND kind = 'progress' AND id <= $2",
            row["id"],
            event_row["id"],
        )
        data = orjson.loads(event_row["data"])
        return {
            "event_id": event_id(row["id"], event),
            "jobId": row["id"],
            "status": "EXECUTING",
            "progress": {
                "iteration": int(iteration),
                "message": str(data.get("message") or "") if isinstance(data, dict) else "",
                "updatedAt": iso(event_row["at"]),
            },
            "metadata": metadata,
        }

    async def secrets(self, db: Database, job: Row) -> list[str]:
        sealed = await db.fetch_val("SELECT webhook_secret FROM ai_jobs WHERE id = $1", job["id"])
        return [self.box.open(str(sealed))] if sealed else []


def register_dialect(dialects: WebhookDialects, settings: Settings) -> SecretBox:
    """Adds the `omni` webhook dialect; returns the box that seals its secrets (the submit route seals with it)."""
    master = load_signing_secret(settings.auth.jwt_secret.get_secret_value(), settings.data_dir)
    box = SecretBox(master)
    hooks = OmniWebhooks(box)
    dialects.register(DIALECT, hooks.payload, OmniSigner, hooks.secrets)
    return box


class ProgressRelay:
    """Turns the `progress` events of AI jobs with progress webhooks into one-shot outbox rows (see the module
    docstring). Polls the progress events after the newest one seen at start; each row's id is derived from the
    job and event, so several processes write it once.

    Event ids come from a sequence when the row is written, not when it commits: on PostgreSQL an event with a
    smaller id may commit after one with a larger id was read. So each poll reads again the progress events of
    the last `LOOKBACK_S` seconds (a partial index holds only progress events, so that costs little) and relays
    those it has not relayed yet.
    """

    LOOKBACK_S = 10.0  # far above any transaction writing events (one statement, or a group commit)
    PAGE = 100

    def __init__(self, db: Database, notify: Callable[[], None], *, poll_s: float = 0.25) -> None:
        self.db = db
        self.notify = notify
        self.poll_s = poll_s
        self.after = 0  # progress events up to this id were read long enough ago: never read again
        self._seen: collections.deque[tuple[float, int]] = collections.deque()  # (when, newest id read then)
        self._relayed: set[int] = set()  # ids above `after` already relayed
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.after = int(await self.db.fetch_val(_NEWEST_PROGRESS))
        self._task = asyncio.create_task(self._run(), name="omni-progress-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                found = await self.relay_once()
            except Exception:
                log.exception("relaying AI job progress events failed")
                found = 0
            if not found:
                await asyncio.sleep(self.poll_s)

    async def relay_once(self) -> int:
        """Relays the progress events not relayed yet among those after `after`; how many it relayed."""
        now = time.monotonic()
        while self._seen and self._seen[0][0] <= now - self.LOOKBACK_S:
            _, newest = self._seen.popleft()
            self.after = max(self.after, newest)
        self._relayed = {event_id for event_id in self._relayed if event_id > self.after}
        cursor, newest, relayed = self.after, self.after, 0
        for _page in range(1000):  # bounded: 100,000 progress events in the look-back window
            rows = await self.db.fetch_all(_PROGRESS_AFTER, cursor, self.PAGE)
            for row in rows:
                event_id = int(row["id"])
                cursor = newest = max(newest, event_id)
                if row["progress_webhook"] != 1 or event_id in self._relayed:
                    continue
                await self._write(row["job_id"], event_id)
                self._relayed.add(event_id)
                relayed += 1
            if len(rows) < self.PAGE:
                break
        self._seen.append((now, newest))
        if relayed:
            self.notify()
        return relayed

    async def _write(self, job_id: str, event_id: int) -> None:
        event = f"progress.{event_id}"
        delivery = "msg_" + hashlib.sha256(f"{job_id}/{event}".encode()).hexdigest()[:32]
        at = now_ms()
        await self.db.execute(
            "INSERT INTO webhook_deliveries (id, job_id, position, event, state, attempts, next_attempt_at,"
            " created_at, updated_at) VALUES ($1, $2, 0, $3, 'pending', 0, $4, $4, $4) ON CONFLICT (id) DO NOTHING",
            delivery,
            job_id,
            event,
            at,
        )


# On the partial index of progress events; the join keeps AI jobs' (a progress event of another job has none).
_NEWEST_PROGRESS = "SELECT COALESCE(MAX(id), 0) FROM job_events WHERE kind = 'progress'"
_PROGRESS_AFTER = (
    "SELECT e.id, e.job_id, a.progress_webhook FROM job_events e JOIN ai_jobs a ON a.id = e.job_id"
    " WHERE e.kind = 'progress' AND e.id > $1 ORDER BY e.id LIMIT $2"
)
