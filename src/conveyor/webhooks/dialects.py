"""What each API dialect's webhooks carry and how they are signed: a registry built in the composition root.

The native dialect is registered by `default_dialects`; the GPTBots and Omni dialects add theirs with
`register`, so one delivery machinery serves every dialect.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from conveyor.jobs.service import JobService
from conveyor.store.db import Database, Row
from conveyor.webhooks.signing import Signer, StandardWebhooksSigner

# (jobs, the job's row, the delivery's event such as `job.succeeded`) -> the JSON payload of a POST.
PayloadBuilder = Callable[[JobService, Row, str], Awaitable[dict[str, Any]]]
SignerFactory = Callable[[Sequence[str]], Signer]
# (the store, the job's row) -> the secrets that sign its webhooks, for a dialect whose secret is per job (Omni's);
# without one, the job's API key's (or user's) secrets sign (`secret_store.job_secrets`).
SecretsLookup = Callable[[Database, Row], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class Dialect:
    """One dialect's payload builder and signing scheme."""

    payload: PayloadBuilder
    signer: SignerFactory
    secrets: SecretsLookup | None = None


class WebhookDialects:
    """The dialects webhooks can be delivered in, by the name stored in `job_webhooks.dialect`."""

    def __init__(self) -> None:
        self._dialects: dict[str, Dialect] = {}

    def register(
        self,
        name: str,
        payload: PayloadBuilder,
        signer: SignerFactory = StandardWebhooksSigner,
        secrets: SecretsLookup | None = None,
    ) -> None:
        self._dialects[name] = Dialect(payload, signer, secrets)

    def get(self, name: str) -> Dialect:
        """The dialect `name`; an unknown one (a row written by a newer version) falls back to native."""
        return self._dialects.get(name) or self._dialects["native"]

    def names(self) -> list[str]:
        return sorted(self._dialects)


def default_dialects() -> WebhookDialects:
    dialects = WebhookDialects()
    dialects.register("native", native_payload)
    return dialects


def iso(ms: int | None) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC, as the API writes times."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def native_payload(jobs: JobService, job: Row, event: str) -> dict[str, Any]:
    """`{"type", "timestamp", "data"}` with `data` the job's summary and what `GET /api/v1/jobs/{id}/result`
    answers (outputs and error), so a receiver needs no second call."""
    usage = orjson.loads(job["usage"]) if job["usage"] else None
    if isinstance(usage, dict):
        usage.pop("by_node", None)
    data = {
        "id": job["id"],
        "state": job["state"],
        "recipe": job["recipe_id"],
        "revision": job["revision"],
        "attempts": job["attempts"],
        "created_at": iso(job["created_at"]),
        "started_at": iso(job["started_at"]),
        "finished_at": iso(job["finished_at"]),
        "outputs": await jobs.outputs(job),
        "error": orjson.loads(job["error"]) if job["error"] else None,
        "usage": usage,
    }
    return {"type": event, "timestamp": iso(job["finished_at"]), "data": data}
