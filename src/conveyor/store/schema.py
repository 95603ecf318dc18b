"""The database schema, as SQLAlchemy Core tables. Alembic migrations create it; nothing calls `create_all`.

Conventions that keep one SQL text valid on SQLite and PostgreSQL: ids are text (UUIDs or random hex),
times are integers (epoch milliseconds), JSON is text, flags are small integers.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, MetaData, String, Table, Text, text

metadata = MetaData()

organizations = Table(
    "organizations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("email", String(320)),
    Column("password_hash", Text),
    Column("is_admin", Integer, nullable=False, server_default="0"),
    Column("disabled", Integer, nullable=False, server_default="0"),
    Column("created_at", BigInteger, nullable=False),
    Column("org_id", String(36), ForeignKey("organizations.id")),
    Column("webhook_secret", Text),  # `whsec_…`, signs webhooks of this user's JWT calls; made on first use
)

# Every JWT issued, so that one can be revoked by its `tokenId` and a user's tokens die with the user.
auth_tokens = Table(
    "auth_tokens",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("user_id", String(36), ForeignKey("users.id"), nullable=False),
    Column("scopes", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger),
    Column("parent_id", String(36)),  # the token that issued this one: revoking it revokes this one too
)
Index("ix_auth_tokens_user", auth_tokens.c.user_id, auth_tokens.c.created_at)
Index("ix_auth_tokens_parent", auth_tokens.c.parent_id)

recipes = Table(
    "recipes",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("owner_id", String(36), ForeignKey("users.id")),
    Column("latest_revision", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("deleted_at", BigInteger),
)
Index("ix_recipes_name", recipes.c.name)

recipe_revisions = Table(
    "recipe_revisions",
    metadata,
    Column("recipe_id", String(64), ForeignKey("recipes.id"), primary_key=True),
    Column("revision", Integer, primary_key=True),
    Column("body", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("recipe_id", String(64), ForeignKey("recipes.id"), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("user_id", String(36)),
    Column("state", String(16), nullable=False),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("inputs", Text, nullable=False),
    Column("result", Text),
    Column("error", Text),
    Column("usage", Text),
    Column("idempotency_scope", String(64), nullable=False, server_default=""),
    Column("idempotency_key", String(255)),
    Column("timeout_s", Integer, nullable=False),
    Column("on_interrupt", String(16), nullable=False, server_default="fail"),
    Column("lease_owner", String(64)),
    Column("lease_expires_at", BigInteger),
    Column("cancel_requested", Integer, nullable=False, server_default="0"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("created_at", BigInteger, nullable=False),
    Column("started_at", BigInteger),
    Column("finished_at", BigInteger),
    Column("updated_at", BigInteger, nullable=False),
    Column("api_key_id", String(36)),  # the API key that submitted the job (None: a JWT)
    Column("webhook_count", Integer, nullable=False, server_default="0"),  # rows in job_webhooks
)
Index("ix_jobs_key_state", jobs.c.api_key_id, jobs.c.state)
Index("ux_jobs_idempotency", jobs.c.idempotency_scope, jobs.c.idempotency_key, unique=True)
# Every list is one user's (users never see each other's jobs): the list indexes lead with the user.
Index("ix_jobs_user_created", jobs.c.user_id, jobs.c.created_at)
Index("ix_jobs_user_state_created", jobs.c.user_id, jobs.c.state, jobs.c.created_at)
Index("ix_jobs_user_recipe_created", jobs.c.user_id, jobs.c.recipe_id, jobs.c.created_at)
Index("ix_jobs_user_finished", jobs.c.user_id, jobs.c.finished_at)  # Omnitool's "finished in the last 20 min"
Index(
    "ix_jobs_pending",
    jobs.c.priority.desc(),  # the claim's exact order (priority DESC, created_at, id): no sort per claim
    jobs.c.created_at,
    jobs.c.id,
    sqlite_where=text("state = 'pending'"),
    postgresql_where=text("state = 'pending'"),
)
Index(
    "ix_jobs_lease",
    jobs.c.lease_expires_at,
    sqlite_where=text("state = 'running'"),
    postgresql_where=text("state = 'running'"),
)

job_events = Table(
    "job_events",
    metadata,
    # A global, increasing id: the SSE event id, so `Last-Event-ID` resumes a stream.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("node", String(200)),
    Column("data", Text, nullable=False),
    Column("at", BigInteger, nullable=False),
)
Index("ix_job_events_job", job_events.c.job_id, job_events.c.id)

files = Table(
    "files",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(36)),
    Column("job_id", String(36)),
    Column("name", String(255), nullable=False),
    Column("mime", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("storage_key", String(255), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)
Index("ix_files_job", files.c.job_id)

# API keys: shown once, stored as a SHA-256 of the whole key (keys are 256-bit random, so no slow hash is needed).
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(16), nullable=False),  # personal | org | recipe
    Column("name", String(200), nullable=False),
    Column("user_id", String(36), ForeignKey("users.id"), nullable=False),  # who made it; a PAT acts as them
    Column("org_id", String(36), ForeignKey("organizations.id")),  # an org key acts for this org's users
    Column("recipe_id", String(64)),  # a recipe key runs only this recipe
    Column("prefix", String(32), nullable=False),  # shown in lists, e.g. `cvy_pat_3f9a`
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("webhook_secret", Text, nullable=False),
    Column("previous_webhook_secret", Text),  # still signs until `previous_secret_until` (rotation)
    Column("previous_secret_until", BigInteger),
    Column("rate_limit_per_min", Integer),  # per-key overrides of the settings' defaults
    Column("max_concurrent_jobs", Integer),
    Column("created_at", BigInteger, nullable=False),
    Column("last_used_at", BigInteger),
    Column("revoked_at", BigInteger),
)
Index("ix_api_keys_user", api_keys.c.user_id, api_keys.c.created_at)

# The webhooks a job was submitted with (at most 5), in order.
job_webhooks = Table(
    "job_webhooks",
    metadata,
    Column("job_id", String(36), ForeignKey("jobs.id"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("url", Text, nullable=False),
    Column("method", String(8), nullable=False),
    Column("headers", Text, nullable=False, server_default="{}"),
    Column("dialect", String(16), nullable=False, server_default="native"),  # which API's payload it gets
)

# The transactional outbox: one row per webhook of a finished job, written with the job's terminal state.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(40), primary_key=True),  # also the `webhook-id` header, the same on every attempt
    Column("job_id", String(36), ForeignKey("jobs.id"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("event", String(32), nullable=False),
    Column("state", String(16), nullable=False),  # pending | succeeded | failed
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", BigInteger),
    Column("lease_owner", String(64)),
    Column("lease_expires_at", BigInteger),
    Column("last_status", Integer),
    Column("last_error", Text),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger),
)
Index("ix_webhook_deliveries_due", webhook_deliveries.c.state, webhook_deliveries.c.next_attempt_at)
Index("ix_webhook_deliveries_job", webhook_deliveries.c.job_id, webhook_deliveries.c.position)

# Every attempt of a delivery, for the delivery log.
webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("delivery_id", String(40), ForeignKey("webhook_deliveries.id"), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("at", BigInteger, nullable=False),
    Column("status_code", Integer),
    Column("duration_ms", Integer, nullable=False),
    Column("error", Text),
)
