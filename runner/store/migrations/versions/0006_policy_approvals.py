"""Policy approvals: owners' `gitops approve_policies`, one row per plan, set and user.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-20

Written out in full, like 0001-0005: a migration is a frozen record of the schema.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "policy_approvals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("plan_id", sa.Integer(), nullable=False),
        sa.Column("policy_set", sa.String(255), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["plan_id"],
            ["plans.id"],
            name="fk_policy_approvals_plan_id_plans",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_policy_approvals"),
        sa.UniqueConstraint(
            "plan_id", "policy_set", "user", name="uq_policy_approvals_plan_set_user"
        ),
    )


def downgrade() -> None:
    op.drop_table("policy_approvals")
