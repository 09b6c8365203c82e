"""Drift history in the store.

Every scan result is a row, so history survives restarts and the latest row per
project tells the next scan what was already reported (no re-alert) and which forge
issue is open. The drift scheduler's lease lives in `leases.py`, shared with reconcile.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from sqlalchemy import func, select, update

from runner.results.drift import Correction, DriftResult, DriftStatus
from runner.results.model import DriftedResource, PlanSummary, ResourceChange
from runner.store.db import Database
from runner.store.drift_models import DriftResultRow
from runner.store.models import Run, utcnow


class DriftStore:
    """Record and query drift results."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record(self, result: DriftResult) -> DriftResult:
        """Store one result; returns it with its id and scan time."""
        row = _row(result)
        with self._db.write() as session:
            session.add(row)
            session.flush()
            return _result(row)

    def previous(
        self, repo: str, dir: str, workspace: str, *, skip: Sequence[DriftStatus] = ()
    ) -> DriftResult | None:
        """The newest stored result of a project, ignoring results with a status in `skip`."""
        statement = (
            select(DriftResultRow)
            .where(
                DriftResultRow.repo == repo,
                DriftResultRow.dir == dir,
                DriftResultRow.workspace == workspace,
            )
            .order_by(DriftResultRow.id.desc())
            .limit(1)
        )
        if skip:
            statement = statement.where(DriftResultRow.status.not_in([s.value for s in skip]))
        with self._db.read() as session:
            row = session.scalar(statement)
            return _result(row) if row is not None else None

    def latest(self, repo: str | None = None) -> list[DriftResult]:
        """The newest result of every project ever scanned (of one repo)."""
        newest = select(func.max(DriftResultRow.id)).group_by(
            DriftResultRow.repo, DriftResultRow.dir, DriftResultRow.workspace
        )
        if repo is not None:
            newest = newest.where(DriftResultRow.repo == repo)
        statement = (
            select(DriftResultRow)
            .where(DriftResultRow.id.in_(newest))
            .order_by(DriftResultRow.repo, DriftResultRow.project, DriftResultRow.workspace)
        )
        with self._db.read() as session:
            return [_result(row) for row in session.scalars(statement)]

    def history(
        self,
        repo: str,
        project: str | None = None,
        limit: int = 100,
        *,
        dir: str | None = None,
        workspace: str | None = None,
    ) -> list[DriftResult]:
        """Newest first: how a project's drift evolved (of one dir and workspace, given
        those: the index's order, so the limit counts only the project's own results)."""
        statement = (
            select(DriftResultRow)
            .where(DriftResultRow.repo == repo)
            .order_by(DriftResultRow.id.desc())
            .limit(limit)
        )
        if project is not None:
            statement = statement.where(DriftResultRow.project == project)
        if dir is not None:
            statement = statement.where(DriftResultRow.dir == dir)
        if workspace is not None:
            statement = statement.where(DriftResultRow.workspace == workspace)
        with self._db.read() as session:
            return [_result(row) for row in session.scalars(statement)]

    def mark_notified(self, ids: Iterable[int]) -> None:
        """The alert for these results reached Slack; unchanged drift is not re-sent."""
        wanted = list(ids)
        if not wanted:
            return
        with self._db.write() as session:
            session.execute(
                update(DriftResultRow).where(DriftResultRow.id.in_(wanted)).values(notified=True)
            )

    def set_issue(self, result_id: int, issue_number: int | None) -> None:
        """Remember the forge issue tracking this drift (None once closed)."""
        with self._db.write() as session:
            session.execute(
                update(DriftResultRow)
                .where(DriftResultRow.id == result_id)
                .values(issue_number=issue_number)
            )

    def apply_running(self, repo: str, dir: str, workspace: str) -> bool:
        """Whether an apply of this project is in progress (its plan would be stale)."""
        statement = select(func.count(Run.id)).where(
            Run.repo == repo,
            Run.dir == dir,
            Run.workspace == workspace,
            Run.command == "apply",
            Run.status.in_(("queued", "running")),
        )
        with self._db.read() as session:
            return bool(session.scalar(statement))


def _row(result: DriftResult) -> DriftResultRow:
    s = result.summary
    return DriftResultRow(
        repo=result.repo,
        project=result.project,
        dir=result.dir,
        workspace=result.workspace,
        commit_sha=result.commit,
        status=result.status.value,
        add_count=s.add,
        change_count=s.change,
        destroy_count=s.destroy,
        replace_count=s.replace,
        import_count=s.import_,
        drifted_count=s.drifted,
        drifted_json=json.dumps(
            [
                {
                    "address": d.address,
                    "actions": list(d.actions),
                    "changed_attributes": list(d.changed_attributes),
                }
                for d in result.drifted
            ]
        ),
        changes_json=json.dumps(
            [
                {"address": c.address, "actions": list(c.actions), "importing": c.importing}
                for c in result.changes
            ]
        ),
        plan_checksum=result.plan_checksum,
        drift_hash=result.drift_hash,
        error=result.error or None,
        correction=result.correction.value if result.correction else None,
        correction_reason=result.correction_reason or None,
        notified=result.notified,
        issue_number=result.issue_number,
        scanned_at=result.scanned_at or utcnow(),
    )


def _result(row: DriftResultRow) -> DriftResult:
    return DriftResult(
        id=row.id,
        repo=row.repo,
        project=row.project,
        dir=row.dir,
        workspace=row.workspace,
        commit=row.commit_sha,
        status=DriftStatus(row.status),
        summary=PlanSummary(
            add=row.add_count,
            change=row.change_count,
            destroy=row.destroy_count,
            replace=row.replace_count,
            import_=row.import_count,
            drifted=row.drifted_count,
        ),
        drifted=_drifted(json.loads(row.drifted_json)),
        changes=_changes(json.loads(row.changes_json)),
        plan_checksum=row.plan_checksum,
        error=row.error or "",
        correction=Correction(row.correction) if row.correction else None,
        correction_reason=row.correction_reason or "",
        notified=row.notified,
        issue_number=row.issue_number,
        scanned_at=row.scanned_at,
    )


def _drifted(items: Sequence[dict]) -> tuple[DriftedResource, ...]:
    return tuple(
        DriftedResource(
            item["address"],
            tuple(item["actions"]),
            changed_attributes=tuple(item["changed_attributes"]),
        )
        for item in items
    )


def _changes(items: Sequence[dict]) -> tuple[ResourceChange, ...]:
    return tuple(
        ResourceChange(item["address"], tuple(item["actions"]), importing=item["importing"])
        for item in items
    )
