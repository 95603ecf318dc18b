"""Webhook routes: a job's delivery log, a manual redeliver, and the caller's webhook signing secret."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from conveyor.api.auth import principal
from conveyor.api.deps import iso, json_response, path_id, runtime
from conveyor.api.jobs import own_job
from conveyor.auth.principal import Principal
from conveyor.errors import ConflictError, NotFoundError
from conveyor.jobs.queries import now_ms
from conveyor.runtime import Runtime
from conveyor.store.db import Row
from conveyor.webhooks import outbox
from conveyor.webhooks.secret_store import user_webhook_secret

router = APIRouter(tags=["webhooks"])


@router.get("/api/v1/auth/webhook-secret", summary="The secret that signs the webhooks of your JWT calls")
async def read_webhook_secret(rt: Runtime = Depends(runtime), me: Principal = Depends(principal)) -> dict[str, Any]:
    # Made on first use; jobs submitted with an API key are signed with that key's secret instead.
    return {"webhook_secret": await user_webhook_secret(rt.db, me.user_id)}


@router.get("/api/v1/jobs/{job_id}/deliveries", summary="A job's webhook deliveries and every attempt")
async def list_deliveries(
    job_id: str, rt: Runtime = Depends(runtime), me: Principal = Depends(principal)
) -> dict[str, Any]:
    await own_job(rt, me, job_id)
    # Deliveries first: an attempt settled between the two reads is then left out, as its delivery row says.
    rows = await outbox.read_deliveries(rt.db, job_id)
    counts = {row["id"]: row["attempts"] for row in rows}
    attempts: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in await outbox.read_attempts(rt.db, job_id):
        if row["attempt"] > counts.get(row["delivery_id"], 0):
            continue
        attempts[row["delivery_id"]].append(
            {
                "attempt": row["attempt"],
                "at": iso(row["at"]),
                "status_code": row["status_code"],
                "duration_ms": row["duration_ms"],
                "error": row["error"],
            }
        )
    return {"items": [delivery_view(row, attempts[row["id"]]) for row in rows]}


def delivery_view(row: Row, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "url": row["url"],
        "method": row["method"],
        "event": row["event"],
        "state": row["state"],
        "attempt_count": row["attempts"],
        "last_status": row["last_status"],
        "last_error": row["last_error"],
        "next_attempt_at": iso(row["next_attempt_at"]) if row["state"] == "pending" else None,
        "created_at": iso(row["created_at"]),
        "finished_at": iso(row["finished_at"]),
        "attempts": attempts,
    }


@router.post(
    "/api/v1/jobs/{job_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    summary="Send a webhook delivery again now (same webhook-id)",
)
async def redeliver(
    job_id: str, delivery_id: str, rt: Runtime = Depends(runtime), me: Principal = Depends(principal)
) -> Response:
    job = await own_job(rt, me, job_id)
    me.require_run(job["recipe_id"])
    delivery_id = path_id("delivery", delivery_id)
    if not await outbox.redeliver(rt.db, job_id, delivery_id, now_ms()):
        known = {row["id"] for row in await outbox.read_deliveries(rt.db, job_id)}
        if delivery_id not in known:
            raise NotFoundError("delivery", delivery_id)
        raise ConflictError(f"delivery {delivery_id} is being sent right now; try again in a moment")
    if rt.dispatcher is not None:
        rt.dispatcher.notify()
    rows = await outbox.read_deliveries(rt.db, job_id)
    row = next(row for row in rows if row["id"] == delivery_id)
    return json_response(delivery_view(row, []), 202)
