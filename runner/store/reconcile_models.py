"""ORM model of pull-mode reconcile: the last reconciled commit per repository branch.

Kept apart from `models.py` so the reconcile feature owns its table, like
`drift_models.py`; it shares `Base`, so Alembic and the models-vs-migrations test see
it. The schema is owned by migration 0003.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from runner.store.models import Base


class ReconcileStateRow(Base):
    """Where the reconciler stands on one branch, so a restart does not apply again."""

    __tablename__ = "reconcile_state"

    repo: Mapped[str] = mapped_column(String(255), primary_key=True)
    branch: Mapped[str] = mapped_column(String(255), primary_key=True)
    # The newest head whose changed projects were all applied (the next diff's base).
    reconciled_sha: Mapped[str | None] = mapped_column(String(64))
    # The newest head a pass was made for (a pass per new head, not per poll).
    head_sha: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    retry_json: Mapped[str] = mapped_column(Text)  # ["project", ...]: busy, retried each poll
    failed_json: Mapped[str] = mapped_column(Text)  # ["project", ...]: waits for a new commit
    detail: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime]
