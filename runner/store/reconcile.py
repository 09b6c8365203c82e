"""Where pull-mode reconcile stands on each repository branch, kept in the store.

One row per (repo, branch): the newest head whose changes were all applied (the base
of the next change detection), the newest head a pass was made for, and the projects
still owed (busy ones are retried on the next poll, failed ones wait for a new
commit). It is what keeps a restarted runner from applying the same commit again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from runner.store.db import Database
from runner.store.models import utcnow
from runner.store.reconcile_models import ReconcileStateRow

_SAVE_ATTEMPTS = 3  # a first INSERT can race another process's; then it is an UPDATE


@dataclass(frozen=True)
class ReconcileState:
    """The reconciler's bookmark on one branch of one repository."""

    repo: str  # the repository key locks are scoped by
    branch: str
    reconciled_sha: str | None  # every change up to here is applied
    head_sha: str | None  # the newest head a pass was made for
    status: str  # "reconciled", "partial" (busy projects), "failed"
    retry: tuple[str, ...] = ()  # projects to retry at the same head (they were busy)
    failed: tuple[str, ...] = ()  # projects that failed at head_sha (not retried)
    detail: str = ""
    updated_at: datetime | None = None


class ReconcileStateStore:
    """Read and write reconcile bookmarks."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, repo: str, branch: str) -> ReconcileState | None:
        with self._db.read() as session:
            row = session.get(ReconcileStateRow, (repo, branch))
            return _state(row) if row is not None else None

    def list(self, repo: str | None = None) -> list[ReconcileState]:
        statement = select(ReconcileStateRow).order_by(
            ReconcileStateRow.repo, ReconcileStateRow.branch
        )
        if repo is not None:
            statement = statement.where(ReconcileStateRow.repo == repo)
        with self._db.read() as session:
            return [_state(row) for row in session.scalars(statement)]

    def save(self, state: ReconcileState) -> ReconcileState:
        """Insert or replace the bookmark of (repo, branch); returns it as stored."""
        error: IntegrityError | None = None
        for _ in range(_SAVE_ATTEMPTS):
            try:
                with self._db.write() as session:
                    row = session.get(ReconcileStateRow, (state.repo, state.branch))
                    if row is None:
                        row = ReconcileStateRow(repo=state.repo, branch=state.branch)
                        session.add(row)
                    _fill(row, state)
                    session.flush()
                    return _state(row)
            except IntegrityError as raced:  # another process inserted it first
                error = raced
        assert error is not None
        raise error


def _fill(row: ReconcileStateRow, state: ReconcileState) -> None:
    row.reconciled_sha = state.reconciled_sha
    row.head_sha = state.head_sha
    row.status = state.status
    row.retry_json = _names_json(state.retry)
    row.failed_json = _names_json(state.failed)
    row.detail = state.detail or None
    row.updated_at = utcnow()


def _names_json(names: Sequence[str]) -> str:
    return json.dumps(sorted(set(names)))


def _state(row: ReconcileStateRow) -> ReconcileState:
    return ReconcileState(
        repo=row.repo,
        branch=row.branch,
        reconciled_sha=row.reconciled_sha,
        head_sha=row.head_sha,
        status=row.status,
        retry=tuple(json.loads(row.retry_json)),
        failed=tuple(json.loads(row.failed_json)),
        detail=row.detail or "",
        updated_at=row.updated_at,
    )
