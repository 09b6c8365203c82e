"""Trust: plans remember their content hash and whether they may be applied; runs their
process; repository keys in one spelling.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

- `plans.content_hash`: the merge plan is compared with the reviewed one on attribute
  values too, not only on addresses and actions. Old rows keep NULL, which never
  equals a hash: a PR planned before the upgrade is re-planned before it is applied
  on merge (needs attention), never applied unseen.
- `plans.trusted`: a plan asked for by someone without write permission is shown but
  never applied. Old rows were made under the old rules and count as trusted.
- `runs.owner`: the process running a run, so a run left "running" by a dead process
  is marked interrupted.
- Repository keys (`host/owner/name`) are lower-cased in locks, plans and runs: the PR
  flow used the payload's spelling and drift the URL's, so the same repository could
  hold two locks on one state.

Written out in full, like 0001-0004: a migration is a frozen record of the schema.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEYED_TABLES = ("locks", "plans", "runs")


def upgrade() -> None:
    op.add_column("plans", sa.Column("content_hash", sa.String(64), nullable=True))
    op.add_column(
        "plans", sa.Column("trusted", sa.Boolean(), nullable=False, server_default=sa.true())
    )
    op.add_column("runs", sa.Column("owner", sa.String(255), nullable=True))
    # Where both spellings hold a lock on one state (the bug this fixes), the
    # lower-case one stays: the unique constraint allows one lock per state.
    op.execute(
        sa.text(
            "DELETE FROM locks WHERE repo <> lower(repo) AND EXISTS (SELECT 1 FROM locks other "
            "WHERE other.repo = lower(locks.repo) AND other.dir = locks.dir "
            "AND other.workspace = locks.workspace)"
        )
    )
    for table in _KEYED_TABLES:
        op.execute(sa.text(f"UPDATE {table} SET repo = lower(repo) WHERE repo <> lower(repo)"))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("owner")
    with op.batch_alter_table("plans") as batch:
        batch.drop_column("trusted")
        batch.drop_column("content_hash")
