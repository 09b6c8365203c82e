"""Turn plan results into run and plan records, the audit trail every view reads."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import timedelta

from runner.config.model import ProjectConfig
from runner.observability.log_context import add_ids
from runner.results.model import PlanResult, PlanStatus
from runner.results.summary import changes_content_hash
from runner.store.models import utcnow
from runner.store.owners import process_owner_prefix
from runner.store.runs import RunStatus, Trigger
from runner.store.store import Store

_RUN_STATUS = {
    PlanStatus.CHANGES: RunStatus.SUCCESS,
    PlanStatus.NO_CHANGES: RunStatus.NO_CHANGES,
    PlanStatus.ERROR: RunStatus.FAILED,
}


def record_plan_result(
    store: Store,
    result: PlanResult,
    *,
    repo: str,
    trigger: Trigger | str,
    command: str = "plan",
    pr_number: int | None = None,
    author: str | None = None,
    run_id: int | None = None,
    trusted: bool = True,
) -> int:
    """Finish (or create) the run of one plan and remember its plan file; returns the run id.

    Pass `run_id` when the run was started before planning so it showed as running;
    `trusted=False` when someone without write permission asked (shown, never applied).
    """
    if run_id is None:
        run_id = store.runs.start(
            repo=repo,
            project=result.project,
            dir=result.dir,
            workspace=result.workspace,
            command=command,
            trigger=trigger,
            pr_number=pr_number,
            commit_sha=result.commit,
            author=author,
            log_path=result.log_path,
            started_at=utcnow() - timedelta(seconds=result.duration_s),
        )
    _finish(store, run_id, result)
    if not result.changes_pending:
        _keep_plan(store, run_id, result, trusted)
    return run_id


def record_read_plan(store: Store, run_id: int, result: PlanResult, *, trusted: bool) -> None:
    """Complete a run recorded while its JSON plan was pending (`Planner.read_plans`):
    the counts read from the JSON plan and, only now, the plan that may be applied."""
    _finish(store, run_id, result)
    _keep_plan(store, run_id, result, trusted)


def _finish(store: Store, run_id: int, result: PlanResult) -> None:
    summary = None if result.status is PlanStatus.ERROR else result.summary
    store.runs.finish(
        run_id,
        _RUN_STATUS[result.status],
        summary=summary,
        error=result.error or None,
        log_path=result.log_path,
    )


def _keep_plan(store: Store, run_id: int, result: PlanResult, trusted: bool) -> None:
    if result.plan_path and result.plan_checksum and result.commit:
        store.runs.record_plan(
            run_id,
            path=result.plan_path,
            checksum=result.plan_checksum,
            changes=result.changes,
            commit_sha=result.commit,
            content_hash=changes_content_hash(result.changes),
            trusted=trusted,
        )


def record_plan_results(
    store: Store,
    *,
    repo: str,
    results: Sequence[PlanResult],
    trigger: Trigger | str,
    command: str = "plan",
    pr_number: int | None = None,
    author: str | None = None,
) -> list[int]:
    """Record every result of one plan command; returns the run ids in the same order."""
    return [
        record_plan_result(
            store,
            result,
            repo=repo,
            trigger=trigger,
            command=command,
            pr_number=pr_number,
            author=author,
        )
        for result in results
    ]


class LiveRuns:
    """Plan runs recorded as running the moment their log opens (`PlanOptions.log_opened`),
    so the dashboard lists them and streams their log while Terraform runs.

    `record_plan_result(..., run_id=live.take(result))` finishes each one; `cancel_rest`
    marks the ones never recorded (the plan was cancelled) as cancelled, and a crash
    leaves them to job recovery, which the `owner` lets tell a dead process.
    """

    def __init__(
        self,
        store: Store,
        *,
        repo: str,
        trigger: Trigger | str,
        commit: str | None,
        pr_number: int | None = None,
        author: str | None = None,
    ) -> None:
        self._store = store
        self._run = {"repo": repo, "trigger": trigger, "commit_sha": commit,
                     "pr_number": pr_number, "author": author}  # fmt: skip
        self._ids: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def opened(self, project: ProjectConfig, log_path: str) -> None:
        run_id = self._store.runs.start(
            project=project.name,
            dir=project.dir,
            workspace=project.workspace,
            command="plan",
            log_path=log_path,
            owner=process_owner_prefix(),
            **self._run,
        )
        with self._lock:
            self._ids[(project.dir, project.workspace)] = run_id
        add_ids(run=run_id)  # the rest of this project's plan logs with its run id

    def take(self, result: PlanResult) -> int | None:
        """The run started for `result`'s project (None: its Terraform never started)."""
        with self._lock:
            return self._ids.pop((result.dir, result.workspace), None)

    def cancel_rest(self) -> None:
        with self._lock:
            left, self._ids = list(self._ids.values()), {}
        for run_id in left:
            self._store.runs.finish(run_id, RunStatus.CANCELLED, error="cancelled")
