"""job list indexes per user

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 05:50:00

Every job list is one user's now, so the global list indexes give way to ones that lead with the user.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_jobs_created", table_name="jobs")
    op.drop_index("ix_jobs_state_created", table_name="jobs")
    op.drop_index("ix_jobs_recipe_created", table_name="jobs")
    op.create_index("ix_jobs_user_created", "jobs", ["user_id", "created_at"])
    op.create_index("ix_jobs_user_state_created", "jobs", ["user_id", "state", "created_at"])
    op.create_index("ix_jobs_user_recipe_created", "jobs", ["user_id", "recipe_id", "created_at"])
    op.create_index("ix_jobs_user_finished", "jobs", ["user_id", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_user_finished", table_name="jobs")
    op.drop_index("ix_jobs_user_recipe_created", table_name="jobs")
    op.drop_index("ix_jobs_user_state_created", table_name="jobs")
    op.drop_index("ix_jobs_user_created", table_name="jobs")
    op.create_index("ix_jobs_recipe_created", "jobs", ["recipe_id", "created_at"])
    op.create_index("ix_jobs_state_created", "jobs", ["state", "created_at"])
    op.create_index("ix_jobs_created", "jobs", ["created_at"])
