"""The job state machine: one table of allowed moves. Every write of a state checks it (see `jobs.queries`)."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

# target state -> the states a job may move to it from
ALLOWED_FROM: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.RUNNING}),  # released on shutdown, or re-queued to resume after a crash
    JobState.RUNNING: frozenset({JobState.PENDING}),  # claimed
    JobState.SUCCEEDED: frozenset({JobState.RUNNING}),
    JobState.FAILED: frozenset({JobState.RUNNING}),
    JobState.CANCELLED: frozenset({JobState.PENDING, JobState.RUNNING}),
}


def can_move(source: JobState, target: JobState) -> bool:
    """Whether the table allows `source → target`; terminal states are final."""
    return source in ALLOWED_FROM[target]


def sources_sql(target: JobState) -> str:
    """The SQL list of states a move to `target` may start from, e.g. `('pending', 'running')`."""
    return "(" + ", ".join(f"'{state.value}'" for state in sorted(ALLOWED_FROM[target])) + ")"
