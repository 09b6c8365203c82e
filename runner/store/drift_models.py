"""ORM model of drift detection: one row per project per scan.

Kept apart from `models.py` so the drift feature owns its tables; they share `Base`
(and its naming convention), so Alembic and the models-vs-migrations test see them
together. The schema is owned by migration 0002.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from runner.store.models import Base


class DriftResultRow(Base):
    """What one drift scan found for one project: the history survives restarts."""

    __tablename__ = "drift_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repo: Mapped[str] = mapped_column(String(255))
    project: Mapped[str] = mapped_column(String(255))
    dir: Mapped[str] = mapped_column(String(1024))
    workspace: Mapped[str] = mapped_column(String(255))
    commit_sha: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    add_count: Mapped[int] = mapped_column(default=0)
    change_count: Mapped[int] = mapped_column(default=0)
    destroy_count: Mapped[int] = mapped_column(default=0)
    replace_count: Mapped[int] = mapped_column(default=0)
    import_count: Mapped[int] = mapped_column(default=0)
    drifted_count: Mapped[int] = mapped_column(default=0)
    # [{"address", "actions", "changed_attributes"}]: names only, never values.
    drifted_json: Mapped[str] = mapped_column(Text)
    changes_json: Mapped[str] = mapped_column(Text)
    plan_checksum: Mapped[str | None] = mapped_column(String(64))
    drift_hash: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    correction: Mapped[str | None] = mapped_column(String(32))
    correction_reason: Mapped[str | None] = mapped_column(Text)
    notified: Mapped[bool] = mapped_column(default=False)
    issue_number: Mapped[int | None]
    scanned_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_drift_results_repo_dir_workspace_id", "repo", "dir", "workspace", "id"),
        Index("ix_drift_results_scanned_at", "scanned_at"),
    )
