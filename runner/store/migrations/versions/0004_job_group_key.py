"""Jobs: group_key (the pull request a job belongs to), indexed with the status.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

Superseding a PR's older autoplans used to read and decode every queued and running
job; with the group in a column it reads only the PR's own jobs (see
runner/jobs/cancellation.py). Existing rows keep NULL: readers treat NULL as "group
unknown" and decode those rows, so no backfill is needed (and an older runner that
still writes rows without the column during a rolling upgrade is handled the same way).

Written out in full, like 0001-0003: a migration is a frozen record of the schema.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable column: a plain ALTER TABLE ADD COLUMN on both backends, no table rebuild.
    op.add_column("jobs", sa.Column("group_key", sa.String(512), nullable=True))
    op.create_index("ix_jobs_group_key_status", "jobs", ["group_key", "status"])


def downgrade() -> None:
    op.drop_index("ix_jobs_group_key_status", table_name="jobs")
    # SQLite cannot drop a column in place everywhere; batch mode rebuilds the table.
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("group_key")
