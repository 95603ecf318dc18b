"""Jobs and job events: the hot path, as SQL texts prepared once by the drivers.

Every state write is a conditional UPDATE whose `WHERE state IN (...)` comes from the one table of allowed
moves (`jobs.states`): the database locks the row, checks the move and writes it in one statement, so two
processes can never both move the same job. A move that matches no row was refused, and the caller reads
the row to say why.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

from conveyor.jobs.states import JobState, sources_sql
from conveyor.store.db import Database, Op, Row
from conveyor.webhooks.outbox import deliveries_op

JOB_COLUMNS = (
    "id, recipe_id, revision, user_id, state, priority, inputs, result, error, usage, idempotency_key, "
    "timeout_s, on_interrupt, lease_owner, lease_expires_at, cancel_requested, attempts, created_at, "
    "started_at, finished_at, updated_at, webhook_count"
)
SUMMARY_COLUMNS = (
    "id, recipe_id, revision, user_id, state, priority, error, usage, idempotency_key, timeout_s, "
    "cancel_requested, attempts, created_at, started_at, finished_at, updated_at"
)


def now_ms() -> int:
    return int(time.time() * 1000)


def pending_jobs(dialect: str) -> str:
    """The FROM of a read over pending jobs. On SQLite it is pinned to the partial index of pending jobs: the
    planner passes over it for wider covering indexes and then walks every job of the table (a count went
    from microseconds to tens of milliseconds as the table grew, every half second)."""
    return "jobs" if dialect == "postgresql" else "jobs INDEXED BY ix_jobs_pending"


def count_pending_sql(dialect: str) -> str:
    return f"SELECT COUNT(*) FROM {pending_jobs(dialect)} WHERE state = 'pending'"


_JOB_COLUMNS = """jobs (id, recipe_id, revision, user_id, state, priority, inputs, idempotency_scope, idempotency_key,
                  timeout_s, on_interrupt, created_at, updated_at, api_key_id, webhook_count)"""
_JOB_VALUES = "$1, $2, $3, $4, 'pending', $5, $6, $7, $8, $9, $10, $11, $11, $12, $13"


def active_for_key_sql(dialect: str) -> str:
    """A key's pending and running jobs ($1: the key's id), counted on the (api_key_id, state) index."""
    table = "jobs" if dialect == "postgresql" else "jobs INDEXED BY ix_jobs_key_state"
    return f"SELECT COUNT(*) FROM {table} WHERE api_key_id = $1 AND state IN ('pending', 'running')"


@functools.cache
def insert_job_sql(dialect: str, *, bounded: bool, key_capped: bool) -> str:
    """The checked submit: the row goes in only while fewer than $14 jobs wait (`bounded`) and, for a capped
    API key, while the key ($12) has fewer than its cap ($14, or $15 after the queue bound) pending or running.

    Counted in the insert itself, so the check and the insert are one step: on SQLite writes are serial; on
    PostgreSQL `key_lock_op` serializes one key's submits first.
    """
    checks = []
    if bounded:
        checks.append(f"({count_pending_sql(dialect)}) < $14")
    if key_capped:
        # Cast as the insert's own use of $12 is typed, or PostgreSQL deduces two types for one parameter.
        key_count = active_for_key_sql(dialect).replace("$1", "CAST($12 AS VARCHAR(36))")
        checks.append(f"({key_count}) < ${15 if bounded else 14}")
    assert checks, "an unchecked submit is INSERT_JOB_UNBOUNDED"
    return f"""
INSERT INTO {_JOB_COLUMNS}
SELECT {_JOB_VALUES}
WHERE {" AND ".join(checks)}
ON CONFLICT (idempotency_scope, idempotency_key) DO NOTHING
"""


def key_lock_op(dialect: str, key_id: str | None) -> list[Op]:
    """On PostgreSQL, a transaction lock on one API key, so two processes' submits for it count in turn (under
    READ COMMITTED each would count without the other's new row); SQLite writes one transaction at a time.
    Marked `lock_key`, so a group commit takes such locks first and in order (no deadlock between two)."""
    if dialect != "postgresql" or key_id is None:
        return []
    return [Op("SELECT pg_advisory_xact_lock(hashtextextended(CAST($1 AS TEXT), 7))", (key_id,), lock_key=key_id)]


# The same without the queue bound: used while the queue is known to be far from full (see JobService.submit).
INSERT_JOB_UNBOUNDED = f"""
INSERT INTO {_JOB_COLUMNS}
VALUES ({_JOB_VALUES})
ON CONFLICT (idempotency_scope, idempotency_key) DO NOTHING
"""
INSERT_JOB_WEBHOOK = (
    "INSERT INTO job_webhooks (job_id, position, url, method, headers, dialect) VALUES ($1, $2, $3, $4, $5, $6)"
)
PENDING_EVENT = '{"state":"pending"}'
INSERT_STATE_EVENT_IF_JOB = """
INSERT INTO job_events (job_id, kind, node, data, at)
SELECT CAST($1 AS VARCHAR(36)), 'state', NULL, CAST($2 AS TEXT), CAST($3 AS BIGINT)
WHERE EXISTS (SELECT 1 FROM jobs WHERE id = CAST($1 AS VARCHAR(36)) AND created_at = CAST($3 AS BIGINT))
"""
INSERT_EVENT = "INSERT INTO job_events (job_id, kind, node, data, at) VALUES ($1, $2, $3, $4, $5)"
_EVENT_SELECT = """
INSERT INTO job_events (job_id, kind, node, data, at)
SELECT CAST($1 AS VARCHAR(36)), CAST($2 AS VARCHAR(32)), CAST($3 AS VARCHAR(200)), CAST($4 AS TEXT), CAST($5 AS BIGINT)
"""
# A node event of a running job, written only while the writer still holds the job's lease ($6).
INSERT_EVENT_IF_OWNER = (
    _EVENT_SELECT
    + """WHERE EXISTS (SELECT 1 FROM jobs WHERE id = CAST($1 AS VARCHAR(36)) AND lease_owner = CAST($6 AS VARCHAR(64))
                 AND state = 'running')"""
)


def moved_events(events: Sequence[tuple[Any, ...]]) -> Op:
    """The events (job_id, kind, node, data, at) of a state move, written only if the move before them (the
    previous op of the same write) happened. A refused move (a runner that lost its lease, two recoveries
    racing) must leave no event behind: streams stop at the first terminal event and a resume reads the
    `finished` ones."""
    return Op(INSERT_EVENT, list(events), many=True, if_changed=True)


def insert_job_ops(
    *,
    job_id: str,
    recipe_id: str,
    revision: int,
    user_id: str | None,
    priority: int,
    inputs: str,
    idempotency_scope: str,
    idempotency_key: str | None,
    timeout_s: int,
    on_interrupt: str,
    created_at: int,
    max_pending: int | None,
    dialect: str,
    api_key_id: str | None = None,
    key_cap: int | None = None,
    webhooks: Sequence[tuple[str, str, str, str]] = (),
) -> list[Op]:
    """The submit: the job row (unless the queue is full, the key is at its cap or the idempotency key was
    used), its webhooks (`(url, method, headers JSON, dialect)`, written only with the row) and its `pending`
    event.

    With `max_pending` the insert itself counts the queue; None skips that count. With `key_cap` (and an
    `api_key_id`) it counts the key's pending and running jobs too; on PostgreSQL put `key_lock_op` first.
    """
    args: tuple[Any, ...] = (job_id, recipe_id, revision, user_id, priority, inputs, idempotency_scope)
    args += (idempotency_key, timeout_s, on_interrupt, created_at, api_key_id, len(webhooks))
    capped = api_key_id is not None and key_cap is not None
    checked = max_pending is not None or capped
    if checked:
        bounds = tuple(b for b in (max_pending, key_cap if capped else None) if b is not None)
        sql, params = insert_job_sql(dialect, bounded=max_pending is not None, key_capped=capped), (*args, *bounds)
    else:
        sql, params = INSERT_JOB_UNBOUNDED, args
    hooks = []
    if webhooks:
        rows = [(job_id, position, *hook) for position, hook in enumerate(webhooks)]
        hooks.append(Op(INSERT_JOB_WEBHOOK, rows, many=True, if_changed=True))
    if dialect == "postgresql":
        # The row and its event in one statement: one round trip, and no transaction at all when it is alone.
        return [Op(_with_pending_event(sql), params), *hooks]
    return [
        Op(sql, params),
        *hooks,
        # Without a check or a key the job row is surely inserted, so its event needs no check.
        Op(INSERT_EVENT, (job_id, "state", None, PENDING_EVENT, created_at))
        if not checked and idempotency_key is None
        else Op(INSERT_STATE_EVENT_IF_JOB, (job_id, PENDING_EVENT, created_at)),
    ]


@functools.cache
def _with_pending_event(insert_job: str) -> str:
    """A job insert and, only if the row went in, its `pending` event (PostgreSQL); counts the events written."""
    return f"""
WITH job AS ({insert_job.rstrip()} RETURNING id, created_at)
INSERT INTO job_events (job_id, kind, node, data, at) SELECT id, 'state', NULL, '{PENDING_EVENT}', created_at FROM job
"""


_CLAIMED_COLUMNS = (
    "id, recipe_id, revision, user_id, inputs, timeout_s, on_interrupt, attempts, cancel_requested, webhook_count"
)
_CLAIM_SET = """UPDATE jobs SET state = 'running', lease_owner = $1,
       lease_expires_at = CAST($2 AS BIGINT) + CAST($3 AS BIGINT), started_at = COALESCE(started_at, $2),
       attempts = attempts + 1, updated_at = $2"""


def claim_writes_running_event(dialect: str) -> bool:
    """Whether a claim writes its jobs' `running` state events itself (PostgreSQL, in the same statement: one
    round trip fewer per job); on SQLite, whose statements cannot write two tables, the runner emits them."""
    return dialect == "postgresql"


def _with_running_event(claim: str) -> str:
    """The claim with its `running` events, as the runner would emit them, in one statement (PostgreSQL)."""
    return f"""
WITH claimed AS ({claim}), running AS (
    INSERT INTO job_events (job_id, kind, node, data, at)
    SELECT id, 'state', NULL, '{{"state":"running","attempt":' || CAST(attempts AS TEXT) || '}}', CAST($2 AS BIGINT)
    FROM claimed)
SELECT {_CLAIMED_COLUMNS} FROM claimed
"""


def claim_sql(dialect: str) -> str:
    """Takes up to $4 pending jobs, oldest first within priority, for owner $1 at $2 with a lease of $3 ms."""
    lock = " FOR UPDATE SKIP LOCKED" if dialect == "postgresql" else ""
    # SQLite's planner prefers the (state, created_at) index and then sorts every pending job per claim
    # and, for the outer WHERE, walks every pending job through that index: `+state` keeps it on the primary key.
    source = pending_jobs(dialect)
    state = "state" if dialect == "postgresql" else "+state"
    claim = f"""{_CLAIM_SET}
WHERE {state} IN {sources_sql(JobState.RUNNING)} AND id IN (
    SELECT id FROM {source} WHERE state = 'pending' ORDER BY priority DESC, created_at, id LIMIT $4{lock})
RETURNING {_CLAIMED_COLUMNS}"""
    return _with_running_event(claim) if claim_writes_running_event(dialect) else claim


def claim_one_sql(dialect: str) -> str:
    """Claims one named job ($4; a Celery worker given its id): only while it is pending, so a task delivered
    twice, or one whose job another worker took or a client cancelled, claims nothing. The row lock of the
    UPDATE orders two workers racing for it; the second finds it no longer pending."""
    claim = f"""{_CLAIM_SET}
WHERE id = $4 AND state IN {sources_sql(JobState.RUNNING)}
RETURNING {_CLAIMED_COLUMNS}"""
    return _with_running_event(claim) if claim_writes_running_event(dialect) else claim


# Pending jobs left unclaimed since before $1 (their dispatch may be lost), oldest first, at most $2.
STALE_PENDING_SQL = (
    "SELECT id, priority FROM jobs WHERE state = 'pending' AND updated_at < $1 ORDER BY created_at LIMIT $2"
)
COUNT_STALE_PENDING_SQL = "SELECT COUNT(*) FROM jobs WHERE state = 'pending' AND updated_at < $1"
CANCEL_REQUESTED_SQL = "SELECT cancel_requested FROM jobs WHERE id = $1 AND state = 'running'"
# Marks jobs as sent again now, so the next sweep waits as long again before sending them once more.
TOUCH_PENDING_SQL = "UPDATE jobs SET updated_at = $2 WHERE id = $1 AND state = 'pending'"


def finish_ops(
    *,
    job_id: str,
    owner: str,
    state: JobState,
    result: str | None,
    error: str | None,
    usage: str | None,
    events: Sequence[tuple[Any, ...]],
    at: int,
    dialect: str,
    webhook_count: int = 0,
) -> list[Op]:
    """The end of a run: terminal state, result, error and usage, the last node events and the state event, and
    (only for a job with webhooks) its webhook deliveries, all written only if the move is allowed. The first
    op's result says whether it was."""
    args = (job_id, state.value, result, error, usage, at, owner)
    ops = []
    if dialect == "postgresql":
        # The move and its events in one statement: one round trip, and no transaction at all when it is alone.
        columns = tuple(zip(*events, strict=True)) if events else ((),) * 5
        ops.append(Op(_FINISH_WITH_EVENTS[state], (*args, *columns)))
    else:
        ops.append(Op(_FINISH[state], args))
        if events:
            ops.append(moved_events(events))
    if webhook_count:
        ops.append(deliveries_op(job_id, webhook_count, state.value, at))
    return ops


_FINISH = {
    state: f"""UPDATE jobs SET state = $2, result = $3, error = $4, usage = $5, finished_at = $6, updated_at = $6,
        lease_owner = NULL, lease_expires_at = NULL
        WHERE id = $1 AND lease_owner = $7 AND state IN {sources_sql(state)}"""
    for state in JobState
}
# The events (job ids, kinds, nodes, data, times: $8-$12 as arrays) go in in their order, only if the job moved;
# the statement's row count is the move's.
_FINISH_WITH_EVENTS = {
    state: f"""WITH finished AS ({sql} RETURNING id), moved AS (
    INSERT INTO job_events (job_id, kind, node, data, at)
    SELECT e.job_id, e.kind, e.node, e.data, e.at
    FROM unnest(CAST($8 AS TEXT[]), CAST($9 AS TEXT[]), CAST($10 AS TEXT[]), CAST($11 AS TEXT[]), CAST($12 AS BIGINT[]))
        WITH ORDINALITY AS e(job_id, kind, node, data, at, n)
    WHERE EXISTS (SELECT 1 FROM finished) ORDER BY e.n)
SELECT id FROM finished"""
    for state, sql in _FINISH.items()
}


def state_event(job_id: str, state: JobState, at: int, extra: str = "") -> tuple[Any, ...]:
    data = f'{{"state":"{state.value}"{extra}}}'
    return (job_id, "state", None, data, at)


def release_op(job_id: str, owner: str, at: int) -> Op:
    """Gives a claimed job back to the queue (shutdown, or a crash recovered with `on_interrupt: resume`)."""
    return Op(
        f"""UPDATE jobs SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL, updated_at = $3
            WHERE id = $1 AND lease_owner = $2 AND state IN {sources_sql(JobState.PENDING)}""",
        (job_id, owner, at),
    )


def fail_lapsed_op(job_id: str, owner: str, error: str, at: int) -> Op:
    return Op(
        f"""UPDATE jobs SET state = 'failed', error = $3, finished_at = $4, updated_at = $4, lease_owner = NULL,
            lease_expires_at = NULL WHERE id = $1 AND lease_owner = $2 AND state IN {sources_sql(JobState.FAILED)}""",
        (job_id, owner, error, at),
    )


# Renewal touches only the jobs the runner still runs (one row each): a job it lost track of must lapse.
RENEW_ONE_SQL = """
UPDATE jobs SET lease_expires_at = CAST($2 AS BIGINT) WHERE id = $1 AND lease_owner = $3 AND state = 'running'
"""
OWNED_SQL = "SELECT id, cancel_requested FROM jobs WHERE lease_owner = $1 AND state = 'running'"

CANCEL_PENDING_SQL = f"""
UPDATE jobs SET state = 'cancelled', error = $2, finished_at = $3, updated_at = $3
WHERE id = $1 AND state = 'pending' AND state IN {sources_sql(JobState.CANCELLED)}
"""
REQUEST_CANCEL_SQL = "UPDATE jobs SET cancel_requested = 1, updated_at = $2 WHERE id = $1 AND state = 'running'"

LAPSED_SQL = """
SELECT id, lease_owner, lease_expires_at, on_interrupt, attempts, webhook_count, priority FROM jobs
WHERE state = 'running' AND (lease_expires_at < $1 OR lease_owner LIKE $2 ESCAPE '\\')
ORDER BY lease_expires_at LIMIT 500
"""


async def read_job(db: Database, job_id: str) -> Row | None:
    return await db.fetch_one(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1", job_id)


async def read_job_by_key(db: Database, scope: str, key: str) -> Row | None:
    return await db.fetch_one(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE idempotency_scope = $1 AND idempotency_key = $2", scope, key
    )


async def read_result(db: Database, job_id: str) -> Row | None:
    return await db.fetch_one("SELECT id, state, result, error, user_id FROM jobs WHERE id = $1", job_id)


async def read_jobs(
    db: Database,
    *,
    limit: int,
    state: str | None = None,
    recipe_id: str | None = None,
    user_id: str | None = None,
    after: tuple[int, str] | None = None,
) -> list[Row]:
    """Jobs newest first, keyset-paginated on (created_at, id), filtered by state, recipe and owner."""
    where, args = _filters(state=state, recipe_id=recipe_id, user_id=user_id)
    if after is not None:
        args.extend(after)
        n = len(args)
        where.append(f"(created_at < ${n - 1} OR (created_at = ${n - 1} AND id < ${n}))")
    args.append(limit)
    clause = " AND ".join(where) or "1 = 1"
    return await db.fetch_all(
        f"SELECT {SUMMARY_COLUMNS} FROM jobs WHERE {clause} ORDER BY created_at DESC, id DESC LIMIT ${len(args)}",
        *args,
    )


_ACTIVE_SQL = "('pending', 'running')"
_TERMINAL_SQL = "('succeeded', 'failed', 'cancelled')"
LIST_COLUMNS = "id, recipe_id, state, user_id, created_at, finished_at"


async def read_active_jobs(db: Database, user_id: str, *, limit: int) -> list[Row]:
    """A user's pending and running jobs, newest first."""
    # SQLite would walk all of the user's jobs newest first (to skip a sort) looking for the few active ones.
    source = "jobs" if db.dialect == "postgresql" else "jobs INDEXED BY ix_jobs_user_state_created"
    return await db.fetch_all(
        f"SELECT {LIST_COLUMNS} FROM {source} WHERE user_id = $1 AND state IN {_ACTIVE_SQL} "
        "ORDER BY created_at DESC, id DESC LIMIT $2",
        user_id,
        limit,
    )


async def read_jobs_finished_since(db: Database, user_id: str, since_ms: int, *, limit: int) -> list[Row]:
    """A user's jobs that ended at or after `since_ms`, most recently ended first."""
    return await db.fetch_all(
        f"SELECT {LIST_COLUMNS} FROM jobs WHERE user_id = $1 AND state IN {_TERMINAL_SQL} AND finished_at >= $2 "
        "ORDER BY finished_at DESC, id DESC LIMIT $3",
        user_id,
        since_ms,
        limit,
    )


async def count_jobs(
    db: Database, *, state: str | None = None, recipe_id: str | None = None, user_id: str | None = None
) -> int:
    where, args = _filters(state=state, recipe_id=recipe_id, user_id=user_id)
    clause = " AND ".join(where) or "1 = 1"
    return int(await db.fetch_val(f"SELECT COUNT(*) FROM jobs WHERE {clause}", *args))


def _filters(**values: str | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    for column, value in values.items():
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    return where, args


async def read_events(db: Database, job_id: str, *, after_id: int = 0, limit: int = 500) -> list[Row]:
    return await db.fetch_all(
        "SELECT id, kind, node, data, at FROM job_events WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        job_id,
        after_id,
        limit,
    )


async def read_finished_nodes(db: Database, job_id: str) -> list[Row]:
    return await db.fetch_all(
        "SELECT node, data FROM job_events WHERE job_id = $1 AND kind = 'finished' ORDER BY id", job_id
    )
