"""The outbox tables' SQL: delivery rows written with a job's end, claimed with a lease, settled per attempt."""

from __future__ import annotations

import uuid
from typing import Any

from conveyor.store.db import Database, Op, Row

INSERT_DELIVERY = """
INSERT INTO webhook_deliveries (id, job_id, position, event, state, attempts, next_attempt_at, created_at, updated_at)
SELECT CAST($1 AS VARCHAR(40)), job_id, position, CAST($4 AS VARCHAR(32)), 'pending', 0, CAST($5 AS BIGINT),
       CAST($5 AS BIGINT), CAST($5 AS BIGINT)
FROM job_webhooks WHERE job_id = CAST($2 AS VARCHAR(36)) AND position = CAST($3 AS INTEGER)
"""


def delivery_id() -> str:
    """A delivery's id, also its `webhook-id` header: `msg_` and 32 hex digits."""
    return "msg_" + uuid.uuid4().hex


def deliveries_op(job_id: str, webhook_count: int, state: str, at: int) -> Op:
    """The delivery rows of a job that ends in `state`, one per webhook, due at once.

    Written only if the op before it (the terminal move, or its events) changed rows, so a refused finish
    writes none.
    """
    rows = [(delivery_id(), job_id, position, f"job.{state}", at) for position in range(webhook_count)]
    return Op(INSERT_DELIVERY, rows, many=True, if_changed=True)


def claim_sql(dialect: str) -> str:
    """Leases up to $4 due deliveries to $1 until $2 + $3 (ms); PostgreSQL skips rows another process locks."""
    lock = " FOR UPDATE SKIP LOCKED" if dialect == "postgresql" else ""
    due = "state = 'pending' AND next_attempt_at <= $2 AND (lease_expires_at IS NULL OR lease_expires_at < $2)"
    return f"""
UPDATE webhook_deliveries SET lease_owner = $1, lease_expires_at = CAST($2 AS BIGINT) + CAST($3 AS BIGINT)
WHERE {due} AND id IN (SELECT id FROM webhook_deliveries WHERE {due} ORDER BY next_attempt_at LIMIT $4{lock})
RETURNING id, job_id, position, event, attempts
"""


LEASE_OWNERS_SQL = (
    "SELECT DISTINCT lease_owner FROM webhook_deliveries WHERE state = 'pending' AND lease_owner LIKE $1 ESCAPE '\\'"
)
FREE_LEASES_SQL = """
UPDATE webhook_deliveries SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = $1 AND state = 'pending'
"""

NEXT_DUE_SQL = """
SELECT next_attempt_at FROM webhook_deliveries
WHERE state = 'pending' AND (lease_expires_at IS NULL OR lease_expires_at < $1)
ORDER BY next_attempt_at LIMIT 1
"""

# One attempt's outcome, written only while the sender still holds the lease; the attempt row goes with it.
SETTLE_SQL = """
UPDATE webhook_deliveries SET state = $3, attempts = $4, next_attempt_at = $5, last_status = $6, last_error = $7,
       lease_owner = NULL, lease_expires_at = NULL, updated_at = $8, finished_at = $9
WHERE id = $1 AND lease_owner = $2
"""
INSERT_ATTEMPT = """
INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, duration_ms, error) VALUES ($1, $2, $3, $4, $5, $6)
"""

TARGET_SQL = """
SELECT w.url, w.method, w.headers, w.dialect FROM job_webhooks w WHERE w.job_id = $1 AND w.position = $2
"""
JOB_SQL = """
SELECT id, recipe_id, revision, user_id, state, result, error, usage, attempts, created_at, started_at, finished_at,
       api_key_id FROM jobs WHERE id = $1
"""


def settle_ops(
    delivery: str,
    owner: str,
    *,
    state: str,
    attempt: int,
    next_attempt_at: int | None,
    status: int | None,
    error: str | None,
    started_at: int,
    duration_ms: int,
    at: int,
) -> list[Op]:
    finished = at if state != "pending" else None
    return [
        Op(SETTLE_SQL, (delivery, owner, state, attempt, next_attempt_at, status, error, at, finished)),
        Op(INSERT_ATTEMPT, (delivery, attempt, started_at, status, duration_ms, error), if_changed=True),
    ]


async def read_deliveries(db: Database, job_id: str) -> list[Row]:
    return await db.fetch_all(
        """SELECT d.id, d.position, d.event, d.state, d.attempts, d.next_attempt_at, d.last_status, d.last_error,
                  d.created_at, d.updated_at, d.finished_at, w.url, w.method
           FROM webhook_deliveries d JOIN job_webhooks w ON w.job_id = d.job_id AND w.position = d.position
           WHERE d.job_id = $1 ORDER BY d.position""",
        job_id,
    )


async def read_attempts(db: Database, job_id: str) -> list[Row]:
    return await db.fetch_all(
        """SELECT a.delivery_id, a.attempt, a.at, a.status_code, a.duration_ms, a.error
           FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
           WHERE d.job_id = $1 ORDER BY a.delivery_id, a.attempt""",
        job_id,
    )


async def redeliver(db: Database, job_id: str, delivery: str, at: int) -> int:
    """Queues a delivery again, due now, keeping its id (and so its `webhook-id`); 0 when it is not the job's
    or is being sent right now (a leased pending one)."""
    args: tuple[Any, ...] = (delivery, job_id, at)
    return await db.execute(
        """UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = $3, finished_at = NULL, updated_at = $3
           WHERE id = $1 AND job_id = $2
             AND (state <> 'pending' OR lease_expires_at IS NULL OR lease_expires_at < $3)""",
        *args,
    )
