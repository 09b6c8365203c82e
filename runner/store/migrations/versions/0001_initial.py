"""Initial schema: runs, plans, locks, deliveries, jobs, comments.

Revision ID: 0001
Revises:
Create Date: 2024-11-26

Written out in full rather than imported from models.py: a migration is a frozen
record of the schema at one point in time, and must not change when the models do.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACTIVE_DEDUPE = sa.text("status IN ('queued', 'running') AND dedupe_key IS NOT NULL")


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("repo", sa.String(255), nullable=False),
        sa.Column("pr_number", sa.Integer(), nullable=True),
        sa.Column("project", sa.String(255), nullable=False),
        sa.Column("dir", sa.String(1024), nullable=False),
        sa.Column("workspace", sa.String(255), nullable=False),
        sa.Column("command", sa.String(32), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("commit_sha", sa.String(64), nullable=True),
        sa.Column("author", sa.String(255), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        _timestamp("started_at"),
        _timestamp("finished_at", nullable=True),
        sa.Column("add_count", sa.Integer(), nullable=True),
        sa.Column("change_count", sa.Integer(), nullable=True),
        sa.Column("destroy_count", sa.Integer(), nullable=True),
        sa.Column("replace_count", sa.Integer(), nullable=True),
        sa.Column("import_count", sa.Integer(), nullable=True),
        sa.Column("drifted_count", sa.Integer(), nullable=True),
        sa.Column("log_path", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
    )
    op.create_index("ix_runs_repo_pr_number", "runs", ["repo", "pr_number"])
    op.create_index("ix_runs_started_at", "runs", ["started_at"])

    op.create_table(
        "plans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("repo", sa.String(255), nullable=False),
        sa.Column("pr_number", sa.Integer(), nullable=True),
        sa.Column("project", sa.String(255), nullable=False),
        sa.Column("dir", sa.String(1024), nullable=False),
        sa.Column("workspace", sa.String(255), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("commit_sha", sa.String(64), nullable=False),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("changes_json", sa.Text(), nullable=False),
        _timestamp("created_at"),
        _timestamp("discarded_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_plans_run_id_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_plans"),
    )
    op.create_index("ix_plans_repo_pr_number", "plans", ["repo", "pr_number"])
    op.create_index("ix_plans_run_id", "plans", ["run_id"])

    op.create_table(
        "locks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("repo", sa.String(255), nullable=False),
        sa.Column("dir", sa.String(1024), nullable=False),
        sa.Column("workspace", sa.String(255), nullable=False),
        sa.Column("owner_pr", sa.Integer(), nullable=True),
        sa.Column("owner_pr_url", sa.Text(), nullable=True),
        sa.Column("owner_user", sa.String(255), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        _timestamp("since"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_locks_run_id_runs", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_locks"),
        sa.UniqueConstraint("repo", "dir", "workspace", name="uq_locks_repo_dir_workspace"),
    )
    op.create_index("ix_locks_repo_owner_pr", "locks", ["repo", "owner_pr"])

    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.String(255), nullable=False),
        sa.Column("forge", sa.String(32), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        _timestamp("received_at"),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
        sa.UniqueConstraint("delivery_id", name="uq_deliveries_delivery_id"),
    )
    op.create_index("ix_deliveries_received_at", "deliveries", ["received_at"])

    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("dedupe_key", sa.String(512), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _timestamp("created_at"),
        _timestamp("started_at", nullable=True),
        _timestamp("finished_at", nullable=True),
        sa.Column("lease_owner", sa.String(255), nullable=True),
        _timestamp("lease_expires_at", nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_status_id", "jobs", ["status", "id"])
    op.create_index(
        "uq_jobs_active_dedupe_key",
        "jobs",
        ["dedupe_key"],
        unique=True,
        sqlite_where=_ACTIVE_DEDUPE,
        postgresql_where=_ACTIVE_DEDUPE,
    )

    op.create_table(
        "comments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("repo", sa.String(255), nullable=False),
        sa.Column("pr_number", sa.Integer(), nullable=False),
        sa.Column("comment_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("commit_sha", sa.String(64), nullable=True),
        _timestamp("created_at"),
        _timestamp("outdated_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_comments"),
        sa.UniqueConstraint("repo", "pr_number", "comment_id", name="uq_comments_repo_pr_comment"),
    )


def downgrade() -> None:
    op.drop_table("comments")
    op.drop_index("uq_jobs_active_dedupe_key", table_name="jobs")
    op.drop_index("ix_jobs_status_id", table_name="jobs")
    op.drop_table("jobs")
    op.drop_index("ix_deliveries_received_at", table_name="deliveries")
    op.drop_table("deliveries")
    op.drop_index("ix_locks_repo_owner_pr", table_name="locks")
    op.drop_table("locks")
    op.drop_index("ix_plans_run_id", table_name="plans")
    op.drop_index("ix_plans_repo_pr_number", table_name="plans")
    op.drop_table("plans")
    op.drop_index("ix_runs_started_at", table_name="runs")
    op.drop_index("ix_runs_repo_pr_number", table_name="runs")
    op.drop_table("runs")
