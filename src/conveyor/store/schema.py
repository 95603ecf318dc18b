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
)
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
