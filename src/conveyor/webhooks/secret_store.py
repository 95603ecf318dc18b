"""The secrets a job's webhooks are signed with: its API key's (both during rotation), or its user's."""

from __future__ import annotations

from conveyor.jobs.queries import now_ms
from conveyor.store.db import Database
from conveyor.webhooks.signing import new_secret


async def user_webhook_secret(db: Database, user_id: str) -> str:
    """The user's webhook secret (for JWT callers), made and stored on first use."""
    secret = await db.fetch_val("SELECT webhook_secret FROM users WHERE id = $1", user_id)
    if secret:
        return str(secret)
    # Two first uses at once: only one write lands, and both read that one back.
    sql = "UPDATE users SET webhook_secret = $2 WHERE id = $1 AND webhook_secret IS NULL"
    await db.execute(sql, user_id, new_secret())
    secret = await db.fetch_val("SELECT webhook_secret FROM users WHERE id = $1", user_id)
    if not secret:
        raise LookupError(f"user {user_id} does not exist")
    return str(secret)


async def job_secrets(db: Database, *, api_key_id: str | None, user_id: str | None) -> list[str]:
    """The secrets that sign a job's webhooks: the key's current one and, until its rotation ends, the previous
    one; for a job submitted with a JWT, the user's. Empty when neither exists (the webhook goes unsigned)."""
    if api_key_id is not None:
        row = await db.fetch_one(
            "SELECT webhook_secret, previous_webhook_secret, previous_secret_until FROM api_keys WHERE id = $1",
            api_key_id,
        )
        if row is None:
            return []
        found = [row["webhook_secret"]]
        until = row["previous_secret_until"]
        if row["previous_webhook_secret"] and (until is None or until > now_ms()):
            found.append(row["previous_webhook_secret"])
        return found
    if user_id is None:
        return []
    try:
        return [await user_webhook_secret(db, user_id)]
    except LookupError:
        return []
