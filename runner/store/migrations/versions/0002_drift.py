"""Drift detection: drift_results (history per project and scan), scheduler_leases.

Revision ID: 0002
Revises: 0001
Create Date: 2024-12-02

Written out in full, like 0001: a migration is a frozen record of the schema.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _count(name: str) -> sa.Column:
    return sa.Column(name, sa.Integer(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "drift_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("repo", sa.String(255), nullable=False),
        sa.Column("project", sa.String(255), nullable=False),
        sa.Column("dir", sa.String(1024), nullable=False),
        sa.Column("workspace", sa.String(255), nullable=False),
        sa.Column("commit_sha", sa.String(64), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        _count("add_count"),
        _count("change_count"),
        _count("destroy_count"),
        _count("replace_count"),
        _count("import_count"),
        _count("drifted_count"),
        sa.Column("drifted_json", sa.Text(), nullable=False),
        sa.Column("changes_json", sa.Text(), nullable=False),
        sa.Column("plan_checksum", sa.String(64), nullable=True),
        sa.Column("drift_hash", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("correction", sa.String(32), nullable=True),
        sa.Column("correction_reason", sa.Text(), nullable=True),
        sa.Column("notified", sa.Boolean(), nullable=False),
        sa.Column("issue_number", sa.Integer(), nullable=True),
        _timestamp("scanned_at"),
        sa.PrimaryKeyConstraint("id", name="pk_drift_results"),
    )
    op.create_index(
        "ix_drift_results_repo_dir_workspace_id",
        "drift_results",
        ["repo", "dir", "workspace", "id"],
    )
    op.create_index("ix_drift_results_scanned_at", "drift_results", ["scanned_at"])

    op.create_table(
        "scheduler_leases",
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        _timestamp("expires_at"),
        sa.Column("value", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_scheduler_leases"),
    )


def downgrade() -> None:
    op.drop_table("scheduler_leases")
    op.drop_index("ix_drift_results_scanned_at", table_name="drift_results")
    op.drop_index("ix_drift_results_repo_dir_workspace_id", table_name="drift_results")
    op.drop_table("drift_results")
