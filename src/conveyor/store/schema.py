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
# The Omni progress relay re-reads recent `progress` events (see `api.omni_webhooks.ProgressRelay`): only those.
Index(
    "ix_job_events_progress",
    job_events.c.id,
    sqlite_where=text("kind = 'progress'"),
    postgresql_where=text("kind = 'progress'"),
)

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

# Analytics (issue 7). A connection is a database the server reads for data models: registered by the operator
# only (CLI, seed), since its target is a file path or a URL on the server that may hold a password. HTTP shows
# its id, name and kind, never its target.
analytics_connections = Table(
    "analytics_connections",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),  # duckdb | sqlite | postgres
    Column("target", Text, nullable=False),  # a file path or a PostgreSQL URL: never returned or logged
    Column("created_at", BigInteger, nullable=False),
)

# A data model (`kind` SHARED) or a branch of one (`kind` BRANCH, `base_model_id` set, hard-deleted when merged or
# deleted). `version` grows with every change of the model's files: writes are guarded by it (compare and swap),
# and parsed models are cached under it.
analytics_models = Table(
    "analytics_models",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("kind", String(16), nullable=False),  # SHARED | BRANCH
    Column("connection_id", String(36), ForeignKey("analytics_connections.id"), nullable=False),
    Column("base_model_id", String(36), ForeignKey("analytics_models.id")),
    Column("version", Integer, nullable=False, server_default="1"),
    Column("created_by", String(36)),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("deleted_at", BigInteger),
)
Index("ix_analytics_models_created", analytics_models.c.created_at, analytics_models.c.id)
# Branch names are unique per base model; live shared models' names are unique (the CLI names models by them).
Index("ux_analytics_models_branch", analytics_models.c.base_model_id, analytics_models.c.name, unique=True)
Index(
    "ux_analytics_models_shared_name",
    analytics_models.c.name,
    unique=True,
    sqlite_where=text("kind = 'SHARED' AND deleted_at IS NULL"),
    postgresql_where=text("kind = 'SHARED' AND deleted_at IS NULL"),
)

# A model's YAML files by name (`orders.view`, `sales.topic`, `model`). In a branch, a file replaces the base
# model's file of that name, and an empty `yaml` deletes it.
analytics_model_files = Table(
    "analytics_model_files",
    metadata,
    Column("model_id", String(36), ForeignKey("analytics_models.id", ondelete="CASCADE"), primary_key=True),
    Column("file_name", String(255), primary_key=True),
    Column("yaml", Text, nullable=False),
    Column("checksum", String(64), nullable=False),  # SHA-256 of the YAML text, hex: `previousChecksum` compares it
    Column("updated_at", BigInteger, nullable=False),
)

# Omni AI jobs (`api/omni.py`): conversations, and one row per AI job (its id is the Conveyor job's id).
ai_conversations = Table(
    "ai_conversations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("user_id", String(36), nullable=False),
    Column("org_id", String(36)),
    Column("model_id", String(36), nullable=False),
    Column("title", String(200), nullable=False),  # the first prompt, cut
    # The job that holds the conversation (at most one active job per conversation): a job id, or a reservation
    # `r:<token>` while a submit is under way (taken over once `active_since` is a minute old).
    Column("active_job_id", String(64)),
    Column("active_since", BigInteger),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)
Index("ix_ai_conversations_user", ai_conversations.c.user_id, ai_conversations.c.created_at, ai_conversations.c.id)

ai_jobs = Table(
    "ai_jobs",
    metadata,
    Column("id", String(36), ForeignKey("jobs.id"), primary_key=True),
    Column("conversation_id", String(36), ForeignKey("ai_conversations.id"), nullable=False),
    Column("user_id", String(36), nullable=False),
    Column("org_id", String(36)),
    Column("model_id", String(36), nullable=False),
    Column("branch_id", String(36)),
    Column("topic_name", String(256)),
    Column("prompt", Text, nullable=False),
    Column("webhook_secret", Text),  # sealed with the server's key (`analytics.ai_jobs.SecretBox`); never returned
    Column("webhook_metadata", Text),  # the caller's `webhookMetadata`, its exact JSON text
    Column("progress_webhook", Integer, nullable=False, server_default="0"),
    Column("cancelled_by", String(36)),
    Column("created_at", BigInteger, nullable=False),
)
Index("ix_ai_jobs_conversation", ai_jobs.c.conversation_id, ai_jobs.c.created_at)
