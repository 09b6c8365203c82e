"""Every project's sync state at a glance: one value per (repo, dir, workspace).

The state is read, never stored: it is derived on each request from what the store
already holds (the newest drift result, the newest run, the lock, the reconcile
bookmark), so it can never disagree with the pages that show those records.
The dashboard's project list, the project page and `GET /api/v1/projects` all read it
from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from runner.results.drift import Correction, DriftResult, DriftStatus
from runner.store.locks import LockInfo
from runner.store.reconcile import ReconcileStateStore
from runner.store.runs import RunQuery, RunRecord, RunStatus
from runner.store.store import Store

ProjectKey = tuple[str, str, str]  # (repo, dir, workspace), the key locks use


class SyncState(StrEnum):
    """Worst first: a project shows the first state that applies to it."""

    ERROR = "error"
    NEEDS_ATTENTION = "needs_attention"
    DRIFTED = "drifted"
    LOCKED = "locked"
    PENDING = "pending"
    IN_SYNC = "in_sync"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


_FAILED_RUNS = frozenset({RunStatus.FAILED, RunStatus.ERRORED, RunStatus.INTERRUPTED})
_ACTIVE_RUNS = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})
# A correction that did not bring the project back in sync needs a person.
_UNRESOLVED = frozenset({Correction.NEEDS_APPROVAL, Correction.FAILED, Correction.STILL_DRIFTED})


@dataclass(frozen=True)
class ProjectStatus:
    """One project with its state and the records the state was read from."""

    repo: str
    project: str
    dir: str
    workspace: str
    state: SyncState
    reason: str  # one sentence a person can check against the records below
    drift: DriftResult | None
    last_run: RunRecord | None
    lock: LockInfo | None

    @property
    def key(self) -> ProjectKey:
        return (self.repo, self.dir, self.workspace)

    @property
    def last_scan(self) -> datetime | None:
        return self.drift.scanned_at if self.drift is not None else None


@dataclass
class _Records:
    """What the store holds about one project, gathered before the state is judged."""

    project: str = ""
    drift: DriftResult | None = None
    last_run: RunRecord | None = None
    lock: LockInfo | None = None
    reconcile_failed: bool = False


def project_statuses(
    store: Store, drift: Iterable[DriftResult], repo: str | None = None
) -> list[ProjectStatus]:
    """Every project the store knows (scanned, run or locked) of every repository (or
    of `repo`, a key as stored), sorted by repo and dir.

    `drift` is the newest result per project (the caller reads it through the drift
    service when this process has one, else from the store).
    """
    records: dict[ProjectKey, _Records] = {}
    for result in drift:
        if repo is None or result.repo == repo:
            _records(records, result.key, result.project).drift = result
    for run in store.runs.latest_per_project(repo):
        _records(records, (run.repo, run.dir, run.workspace), run.project).last_run = run
    for lock in store.locks.list(repo):
        _records(records, (lock.repo, lock.dir, lock.workspace), "").lock = lock
    _mark_reconcile_failures(store, records)
    statuses = [_status(key, found) for key, found in records.items()]
    return sorted(statuses, key=lambda s: (s.repo, s.dir, s.workspace))


def project_status(
    store: Store, key: ProjectKey, drift: DriftResult | None
) -> ProjectStatus | None:
    """One project's status from its own records (indexed reads by key), as
    `project_statuses` derives it; None when the store knows nothing of it."""
    repo, dir, workspace = key
    runs = store.runs.search(RunQuery(repo=repo, dir=dir, workspace=workspace), limit=1)
    found = _Records(drift=drift, last_run=runs[0] if runs else None)
    found.lock = store.locks.get(repo, dir, workspace)
    if found.drift is None and found.last_run is None and found.lock is None:
        return None
    # Named as in `project_statuses`: by the drift result, else the run, else the dir.
    found.project = (drift.project if drift else "") or (
        found.last_run.project if found.last_run else ""
    )
    failed = ReconcileStateStore(store).list(repo)
    found.reconcile_failed = any(found.project in state.failed for state in failed)
    return _status(key, found)


def _records(records: dict[ProjectKey, _Records], key: ProjectKey, name: str) -> _Records:
    found = records.setdefault(key, _Records())
    found.project = found.project or name
    return found


def _mark_reconcile_failures(store: Store, records: dict[ProjectKey, _Records]) -> None:
    """Reconcile remembers failed projects by name, per repository."""
    failed = {
        (state.repo, name) for state in ReconcileStateStore(store).list() for name in state.failed
    }
    for (repo, _dir, _workspace), found in records.items():
        found.reconcile_failed = (repo, found.project) in failed


def _status(key: ProjectKey, found: _Records) -> ProjectStatus:
    repo, dir, workspace = key
    state, reason = judge(found.drift, found.last_run, found.lock, found.reconcile_failed)
    return ProjectStatus(
        repo=repo,
        project=found.project or dir,
        dir=dir,
        workspace=workspace,
        state=state,
        reason=reason,
        drift=found.drift,
        last_run=found.last_run,
        lock=found.lock,
    )


def judge(
    drift: DriftResult | None,
    last_run: RunRecord | None,
    lock: LockInfo | None,
    reconcile_failed: bool = False,
) -> tuple[SyncState, str]:
    """The worst state that applies, and why. A PR's failed plan is the PR's business,
    not the project's: only a failed apply (or scan) marks the project as an error."""
    drift_status = drift.status if drift is not None else None
    if drift_status is DriftStatus.ERROR:
        return SyncState.ERROR, "the last drift scan failed"
    if last_run is not None and last_run.command == "apply" and last_run.status in _FAILED_RUNS:
        return SyncState.ERROR, f"the last apply (run {last_run.id}) {last_run.status.value}"
    if reconcile_failed:
        return SyncState.NEEDS_ATTENTION, "reconcile failed on the default branch's head"
    if drift is not None and drift.correction in _UNRESOLVED:
        return SyncState.NEEDS_ATTENTION, f"drift correction: {drift.correction.value}"
    if drift_status is DriftStatus.DRIFT:
        return SyncState.DRIFTED, "changed outside Terraform since the last apply"
    if lock is not None:
        holder = f"#{lock.owner_pr}" if lock.owner_pr else lock.owner_user or "a run"
        return SyncState.LOCKED, f"locked by {holder}"
    if last_run is not None and last_run.status in _ACTIVE_RUNS:
        return SyncState.PENDING, f"run {last_run.id} is {last_run.status.value}"
    if drift_status in (DriftStatus.PENDING, DriftStatus.BUSY):
        return SyncState.PENDING, _PENDING_REASON[drift_status]
    if drift_status is DriftStatus.IN_SYNC:
        return SyncState.IN_SYNC, "the last drift scan found no difference"
    return SyncState.PENDING, "never scanned for drift"


_PENDING_REASON = {
    DriftStatus.PENDING: "the default branch has changes that were never applied",
    DriftStatus.BUSY: "the last scan skipped it (locked or applying)",
}
