"""Pull-mode reconcile: reconcile_state (the last reconciled commit per repo branch).

Revision ID: 0003
Revises: 0002
Create Date: 2024-12-09

Written out in full, like 0001 and 0002: a migration is a frozen record of the schema.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reconcile_state",
        sa.Column("repo", sa.String(255), nullable=False),
        sa.Column("branch", sa.String(255), nullable=False),
        sa.Column("reconciled_sha", sa.String(64), nullable=True),
        sa.Column("head_sha", sa.String(64), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("retry_json", sa.Text(), nullable=False),
        sa.Column("failed_json", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("repo", "branch", name="pk_reconcile_state"),
    )


def downgrade() -> None:
    op.drop_table("reconcile_state")
