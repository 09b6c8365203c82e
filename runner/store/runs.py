"""Run and plan records: what ran, with what outcome, and which plan files may be applied.

A run is one Terraform command for one project. A plan record points at a saved plan
file with its checksum and the list of planned changes, so that an apply can check it
uses exactly what was reviewed, and a merge plan can be compared with the PR plan.
Newer pushes discard older plans; discarded plans are kept for history.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from runner.results.model import PlanSummary, ResourceChange
from runner.store.db import Database
from runner.store.models import Plan, Run, utcnow
from runner.terraform.planfile import plan_checksum


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    NO_CHANGES = "no_changes"
    FAILED = "failed"  # Terraform reported an error (bad config, apply failure)
    ERRORED = "errored"  # the runner itself failed (clone, crash, timeout)
    INTERRUPTED = "interrupted"  # the process died or was restarted mid-run
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


class Trigger(StrEnum):
    AUTOPLAN = "autoplan"
    COMMENT = "comment"
    MERGE = "merge"
    SCHEDULE = "schedule"
    CLI = "cli"
    API = "api"  # a person asked through the web API (POST /api/drift)
    RECONCILE = "reconcile"  # pull-mode reconcile of the default branch (no PR)


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class RunRecord:
    id: int
    repo: str
    pr_number: int | None
    project: str
    dir: str
    workspace: str
    command: str
    trigger: Trigger
    commit_sha: str | None
    author: str | None
    status: RunStatus
    started_at: datetime
    finished_at: datetime | None
    summary: PlanSummary | None
    log_path: str | None
    error: str | None


@dataclass(frozen=True)
class PlanRecord:
    id: int
    run_id: int
    repo: str
    pr_number: int | None
    project: str
    dir: str
    workspace: str
    path: str
    commit_sha: str
    checksum: str
    changes: tuple[ResourceChange, ...]
    created_at: datetime
    discarded_at: datetime | None
    content_hash: str | None = None  # changes with attribute values; None before 0005
    trusted: bool = True  # False: asked for without write permission, never applied

    def file_matches(self) -> bool:
        """Whether the plan file on disk is still the one that was reviewed.

        Checked before an apply: a missing, truncated or replaced file must not be
        applied.
        """
        path = Path(self.path)
        return path.is_file() and plan_checksum(path) == self.checksum


@dataclass(frozen=True)
class RunQuery:
    """Filters of a run search; None means any. Exact matches only (they are indexed
    or few), so a filter can never become a pattern someone crafts."""

    repo: str | None = None
    project: str | None = None
    dir: str | None = None
    workspace: str | None = None
    pr_number: int | None = None
    status: RunStatus | None = None
    trigger: Trigger | None = None
    command: str | None = None
    author: str | None = None

    def conditions(self) -> list:
        columns = {
            Run.repo: self.repo,
            Run.project: self.project,
            Run.dir: self.dir,
            Run.workspace: self.workspace,
            Run.pr_number: self.pr_number,
            Run.status: self.status.value if self.status else None,
            Run.trigger: self.trigger.value if self.trigger else None,
            Run.command: self.command,
            Run.author: self.author,
        }
        return [column == value for column, value in columns.items() if value is not None]


class RunStore:
    """Create, finish and query runs and their plans."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def start(
        self,
        *,
        repo: str,
        project: str,
        dir: str,
        workspace: str,
        command: str,
        trigger: Trigger | str,
        pr_number: int | None = None,
        commit_sha: str | None = None,
        author: str | None = None,
        status: RunStatus | str = RunStatus.RUNNING,
        log_path: str | None = None,
        started_at: datetime | None = None,
        owner: str | None = None,
    ) -> int:
        """Record that a run began (or was queued); returns its id for `finish`.

        `started_at` is for runs recorded once they are over (default: now). `owner`
        (`host:pid:start`) lets a later process see that the run's process died.
        """
        status = RunStatus(status)
        if status.finished:
            raise ValueError(f"a run starts queued or running, not {status}")
        row = Run(
            repo=repo,
            pr_number=pr_number,
            project=project,
            dir=dir,
            workspace=workspace,
            command=command,
            trigger=Trigger(trigger).value,
            commit_sha=commit_sha,
            author=author,
            status=status.value,
            started_at=started_at or utcnow(),
            log_path=log_path,
            owner=owner,
        )
        with self._db.write() as session:
            session.add(row)
            session.flush()
            return row.id

    def finish(
        self,
        run_id: int,
        status: RunStatus | str,
        summary: PlanSummary | None = None,
        error: str | None = None,
        log_path: str | None = None,
    ) -> RunRecord:
        """Record a run's outcome; the summary counts are what dashboards and comments show."""
        status = RunStatus(status)
        if not status.finished:
            raise ValueError(f"finish() needs a final status, not {status}")
        with self._db.write() as session:
            row = _run_row(session, run_id)
            row.status = status.value
            row.finished_at = utcnow()
            row.error = error
            if log_path is not None:
                row.log_path = log_path
            if summary is not None:
                _set_summary(row, summary)
            return _run_record(row)

    def interrupt_orphaned(self, is_gone: Callable[[str], bool]) -> list[int]:
        """Mark runs still "running" whose process `is_gone` as interrupted; their ids.

        An apply cut off by a crash may have changed real infrastructure and left
        Terraform's state lock held: it must read "interrupted", never "running" forever.
        """
        statement = select(Run).where(Run.status == RunStatus.RUNNING.value, Run.owner.is_not(None))
        interrupted: list[int] = []
        with self._db.write() as session:
            for row in session.scalars(statement):
                if row.owner is not None and is_gone(row.owner):
                    row.status = RunStatus.INTERRUPTED.value
                    row.finished_at = utcnow()
                    row.error = "the runner process running it stopped (crash or restart)"
                    interrupted.append(row.id)
        return interrupted

    def get_run(self, run_id: int) -> RunRecord | None:
        with self._db.read() as session:
            row = session.get(Run, run_id)
            return _run_record(row) if row is not None else None

    def list_runs(
        self, repo: str | None = None, pr_number: int | None = None, limit: int = 50
    ) -> list[RunRecord]:
        """Newest runs first (of one repo / PR), for the dashboard and the CLI."""
        statement = select(Run).order_by(Run.id.desc()).limit(limit)
        if repo is not None:
            statement = statement.where(Run.repo == repo)
        if pr_number is not None:
            statement = statement.where(Run.pr_number == pr_number)
        with self._db.read() as session:
            return [_run_record(row) for row in session.scalars(statement)]

    def search(
        self, query: RunQuery, limit: int = 50, before_id: int | None = None
    ) -> list[RunRecord]:
        """Newest first, filtered; `before_id` (the last id of the previous page) pages on.

        Paged by id rather than offset so that runs starting meanwhile never shift a
        page: the dashboard's runs list, the API and the audit export read through here.
        """
        statement = select(Run).where(*query.conditions()).order_by(Run.id.desc()).limit(limit)
        if before_id is not None:
            statement = statement.where(Run.id < before_id)
        with self._db.read() as session:
            return [_run_record(row) for row in session.scalars(statement)]

    def set_log_path(self, run_id: int, log_path: str) -> None:
        """Point a running run at its log as soon as it is opened, so it can be followed."""
        with self._db.write() as session:
            _run_row(session, run_id).log_path = log_path

    def latest_per_project(self, repo: str | None = None) -> list[RunRecord]:
        """The newest run of every (repo, dir, workspace): what the project list shows."""
        newest = select(func.max(Run.id)).group_by(Run.repo, Run.dir, Run.workspace)
        if repo is not None:
            newest = newest.where(Run.repo == repo)
        statement = select(Run).where(Run.id.in_(newest)).order_by(Run.repo, Run.dir)
        with self._db.read() as session:
            return [_run_record(row) for row in session.scalars(statement)]

    def plans_of_run(self, run_id: int) -> list[PlanRecord]:
        """The plan files a run saved (a plan run saves at most one), for its page."""
        statement = select(Plan).where(Plan.run_id == run_id).order_by(Plan.id)
        with self._db.read() as session:
            return [_plan_record(row) for row in session.scalars(statement)]

    def record_plan(
        self,
        run_id: int,
        *,
        path: str,
        checksum: str,
        changes: Iterable[ResourceChange] = (),
        commit_sha: str | None = None,
        content_hash: str | None = None,
        trusted: bool = True,
    ) -> int:
        """Remember a saved plan file of a run; repo, PR, project and commit come from the run.

        `commit_sha` overrides the run's commit (a run may have been started before the
        checkout resolved it).
        """
        if not _SHA256_HEX.fullmatch(checksum):
            raise ValueError("checksum must be a lowercase hex sha256 of the plan file")
        with self._db.write() as session:
            run = _run_row(session, run_id)
            commit = commit_sha or run.commit_sha
            if not commit:
                raise ValueError(f"run {run_id} has no commit; pass commit_sha")
            row = Plan(
                run_id=run.id,
                repo=run.repo,
                pr_number=run.pr_number,
                project=run.project,
                dir=run.dir,
                workspace=run.workspace,
                path=path,
                commit_sha=commit,
                checksum=checksum,
                changes_json=_changes_to_json(changes),
                content_hash=content_hash,
                trusted=trusted,
                created_at=utcnow(),
            )
            session.add(row)
            session.flush()
            return row.id

    def get_plan(self, plan_id: int) -> PlanRecord | None:
        with self._db.read() as session:
            row = session.get(Plan, plan_id)
            return _plan_record(row) if row is not None else None

    def latest_plans(self, repo: str, pr_number: int) -> list[PlanRecord]:
        """The plan an apply of this PR would use, per project: the newest not discarded."""
        statement = (
            select(Plan)
            .where(Plan.repo == repo, Plan.pr_number == pr_number, Plan.discarded_at.is_(None))
            .order_by(Plan.id.desc())
        )
        newest: dict[tuple[str, str, str], PlanRecord] = {}
        with self._db.read() as session:
            for row in session.scalars(statement):
                newest.setdefault((row.project, row.dir, row.workspace), _plan_record(row))
        return [newest[key] for key in sorted(newest)]

    def discard_plans(self, repo: str, pr_number: int, except_commit: str | None = None) -> int:
        """Invalidate a PR's plans (a new push, or the PR closed); returns how many.

        Plans at `except_commit` survive, so discarding after planning the new head
        keeps the fresh plans.
        """
        statement = (
            update(Plan)
            .where(Plan.repo == repo, Plan.pr_number == pr_number, Plan.discarded_at.is_(None))
            .values(discarded_at=utcnow())
        )
        if except_commit is not None:
            statement = statement.where(Plan.commit_sha != except_commit)
        with self._db.write() as session:
            return session.execute(statement).rowcount

    def live_plan_checksums(self) -> set[str]:
        """Checksums of the plans that may still be applied (not discarded).

        The plan store keeps their files past its retention; everything else (a closed
        PR's plans, superseded or applied ones) may go.
        """
        statement = select(Plan.checksum).where(Plan.discarded_at.is_(None)).distinct()
        with self._db.read() as session:
            return set(session.scalars(statement))

    def discard_plan(self, plan_id: int) -> bool:
        """Invalidate one plan once it was applied: a saved plan is applied at most once."""
        statement = (
            update(Plan)
            .where(Plan.id == plan_id, Plan.discarded_at.is_(None))
            .values(discarded_at=utcnow())
        )
        with self._db.write() as session:
            return session.execute(statement).rowcount > 0


def _run_row(session: Session, run_id: int) -> Run:
    row = session.get(Run, run_id)
    if row is None:
        raise KeyError(f"no run with id {run_id}")
    return row


def _set_summary(row: Run, summary: PlanSummary) -> None:
    row.add_count = summary.add
    row.change_count = summary.change
    row.destroy_count = summary.destroy
    row.replace_count = summary.replace
    row.import_count = summary.import_
    row.drifted_count = summary.drifted


def _summary(row: Run) -> PlanSummary | None:
    counts = (
        row.add_count,
        row.change_count,
        row.destroy_count,
        row.replace_count,
        row.import_count,
        row.drifted_count,
    )
    if all(count is None for count in counts):
        return None
    add, change, destroy, replace, import_, drifted = (count or 0 for count in counts)
    return PlanSummary(
        add=add, change=change, destroy=destroy, replace=replace, import_=import_, drifted=drifted
    )


def _run_record(row: Run) -> RunRecord:
    return RunRecord(
        id=row.id,
        repo=row.repo,
        pr_number=row.pr_number,
        project=row.project,
        dir=row.dir,
        workspace=row.workspace,
        command=row.command,
        trigger=Trigger(row.trigger),
        commit_sha=row.commit_sha,
        author=row.author,
        status=RunStatus(row.status),
        started_at=row.started_at,
        finished_at=row.finished_at,
        summary=_summary(row),
        log_path=row.log_path,
        error=row.error,
    )


def _changes_to_json(changes: Iterable[ResourceChange]) -> str:
    return json.dumps(
        [
            {
                "address": c.address,
                "actions": list(c.actions),
                "importing": c.importing,
                "values": c.values,
            }
            for c in changes
        ],
        separators=(",", ":"),
    )


def _changes_from_json(text: str) -> tuple[ResourceChange, ...]:
    return tuple(
        ResourceChange(
            address=item["address"],
            actions=tuple(item["actions"]),
            importing=item.get("importing", False),
            values=item.get("values", ""),
        )
        for item in json.loads(text)
    )


def _plan_record(row: Plan) -> PlanRecord:
    return PlanRecord(
        id=row.id,
        run_id=row.run_id,
        repo=row.repo,
        pr_number=row.pr_number,
        project=row.project,
        dir=row.dir,
        workspace=row.workspace,
        path=row.path,
        commit_sha=row.commit_sha,
        checksum=row.checksum,
        changes=_changes_from_json(row.changes_json),
        created_at=row.created_at,
        discarded_at=row.discarded_at,
        content_hash=row.content_hash,
        trusted=row.trusted,
    )
