"""The JSON API's types: every parameter, body and answer of `/api/v1/` as a pydantic model.

These models are the contract. `openapi.py` builds `/api/openapi.json` from them and
registers the routes with them, so the document and the code cannot drift apart; the
handlers in `api_v1.py` only build them from store records (the `from_*` functions
here). Bodies forbid unknown fields: a typo is a 400 that names it, not a silent no-op.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from runner.results.drift import DriftResult, DriftStatus
from runner.results.model import PlanSummary
from runner.store.locks import LockInfo
from runner.store.runs import PlanRecord, RunRecord, RunStatus, Trigger
from runner.web.sync_state import ProjectStatus, SyncState

DEFAULT_LIMIT = 50
MAX_LIMIT = 500

# Opaque to clients; today the id (runs) or the position (projects) to continue after.
Cursor = Annotated[str, Field(pattern=r"^[0-9]{1,12}$", description="next_cursor of a page")]
Text = Annotated[str, Field(min_length=1, max_length=500)]
# A project name as drift scans take it: not blank (runner/drift/triggers.py).
ProjectName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"\S")]


class _Out(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class ErrorOut(_Out):
    error: str


class SummaryOut(_Out):
    add: int
    change: int
    destroy: int
    replace: int
    import_: int = Field(alias="import")
    drifted: int


class LockOut(_Out):
    repo: str
    dir: str
    workspace: str
    owner_pr: int | None
    owner_pr_url: str | None
    owner_user: str | None
    run_id: int | None
    since: datetime


class DriftOut(_Out):
    """A stored drift result; attribute values are never stored, so never shown."""

    id: int | None
    status: DriftStatus
    commit: str | None
    summary: SummaryOut
    drifted: list[str] = Field(description="addresses of the resources changed outside")
    error: str | None
    correction: str | None
    scanned_at: datetime | None


class RunOut(_Out):
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
    duration_s: float | None
    summary: SummaryOut | None
    error: str | None
    log_url: str | None = Field(description="the log as text; its live stream is log_url/stream")


class ChangeOut(_Out):
    address: str
    actions: list[str]


class PlanOut(_Out):
    id: int
    commit_sha: str
    checksum: str
    created_at: datetime
    discarded_at: datetime | None
    trusted: bool
    changes: list[ChangeOut]


class RunDetailOut(RunOut):
    plans: list[PlanOut]


class ProjectOut(_Out):
    repo: str
    project: str
    dir: str
    workspace: str
    state: SyncState
    reason: str
    last_scan: datetime | None
    drift: DriftOut | None
    last_run: RunOut | None
    lock: LockOut | None


class ProjectDetailOut(_Out):
    project: ProjectOut
    drift_history: list[DriftOut] = Field(description="newest first")
    runs: list[RunOut] = Field(description="newest first")


class ProjectPage(_Out):
    items: list[ProjectOut]
    counts: dict[str, int] = Field(description="projects per state, of all pages")
    next_cursor: str | None


class RunPage(_Out):
    items: list[RunOut]
    next_cursor: str | None


class LockList(_Out):
    items: list[LockOut]


class UnlockOut(_Out):
    released: bool
    lock: LockOut | None = Field(description="the lock that was released")


class ScanOut(_Out):
    id: int
    status: str
    started: bool = Field(description="false: the same scan was running and this joined it")
    repo: str | None
    project: str | None
    url: str


class ReconcileOut(_Out):
    repo: str = Field(description="the configured repository's URL")
    job: int = Field(description="the queued job (GET /api/jobs)")


# ---- parameters and bodies ----------------------------------------------------------------


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PageQuery(_In):
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    cursor: Cursor | None = None


class ProjectsQuery(PageQuery):
    repo: Text | None = None
    state: SyncState | None = None


class ProjectQuery(_In):
    repo: Text
    dir: Text
    workspace: Text = "default"


class RunsQuery(PageQuery):
    repo: Text | None = None
    project: Text | None = None
    workspace: Text | None = None
    pr: int | None = Field(None, ge=1, le=2**31 - 1)
    status: RunStatus | None = None
    trigger: Trigger | None = None
    command: Text | None = None
    author: Text | None = None


class AuditQuery(PageQuery):
    repo: Text | None = None
    project: Text | None = None


class UnlockBody(_In):
    repo: Text
    dir: Text
    workspace: Text = "default"


class DriftScanBody(_In):
    repo: Text | None = None
    project: ProjectName | None = None


class ReconcileBody(_In):
    repo: Text = Field(description="a repository of the server config's repos:")


# ---- records → answers ----------------------------------------------------------------


def summary_out(summary: PlanSummary | None) -> SummaryOut | None:
    if summary is None:
        return None
    return SummaryOut(
        add=summary.add,
        change=summary.change,
        destroy=summary.destroy,
        replace=summary.replace,
        import_=summary.import_,
        drifted=summary.drifted,
    )


def lock_out(lock: LockInfo) -> LockOut:
    return LockOut.model_validate(lock, from_attributes=True)


def drift_out(result: DriftResult) -> DriftOut:
    return DriftOut(
        id=result.id,
        status=result.status,
        commit=result.commit,
        summary=summary_out(result.summary),  # type: ignore[arg-type]
        drifted=[d.address for d in result.drifted],
        error=result.error or None,
        correction=result.correction.value if result.correction else None,
        scanned_at=result.scanned_at,
    )


def run_out(run: RunRecord) -> RunOut:
    return RunOut(**_run_fields(run))


def run_detail_out(run: RunRecord, plans: list[PlanRecord]) -> RunDetailOut:
    return RunDetailOut(**_run_fields(run), plans=[plan_out(plan) for plan in plans])


def _run_fields(run: RunRecord) -> dict:
    finished = run.finished_at
    return {
        "id": run.id,
        "repo": run.repo,
        "pr_number": run.pr_number,
        "project": run.project,
        "dir": run.dir,
        "workspace": run.workspace,
        "command": run.command,
        "trigger": run.trigger,
        "commit_sha": run.commit_sha,
        "author": run.author,
        "status": run.status,
        "started_at": run.started_at,
        "finished_at": finished,
        "duration_s": (finished - run.started_at).total_seconds() if finished else None,
        "summary": summary_out(run.summary),
        "error": run.error,
        # A server path is no business of API clients: the route that serves it is.
        "log_url": f"/api/v1/runs/{run.id}/log" if run.log_path else None,
    }


def plan_out(plan: PlanRecord) -> PlanOut:
    return PlanOut(
        id=plan.id,
        commit_sha=plan.commit_sha,
        checksum=plan.checksum,
        created_at=plan.created_at,
        discarded_at=plan.discarded_at,
        trusted=plan.trusted,
        changes=[ChangeOut(address=c.address, actions=list(c.actions)) for c in plan.changes],
    )


def project_out(status: ProjectStatus) -> ProjectOut:
    return ProjectOut(
        repo=status.repo,
        project=status.project,
        dir=status.dir,
        workspace=status.workspace,
        state=status.state,
        reason=status.reason,
        last_scan=status.last_scan,
        drift=drift_out(status.drift) if status.drift else None,
        last_run=run_out(status.last_run) if status.last_run else None,
        lock=lock_out(status.lock) if status.lock else None,
    )
