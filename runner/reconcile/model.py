"""Values describing a reconcile pass, shared by the reconciler, reports and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from runner.drift.scan import DriftRepo
from runner.results.model import PlanSummary


class ProjectStatus(StrEnum):
    APPLIED = "applied"
    NO_CHANGES = "no_changes"  # planned, nothing to apply
    BUSY = "busy"  # locked by an open PR or another run: retried on the next poll
    FAILED = "failed"  # the plan or the apply failed: waits for a new commit
    BLOCKED = "blocked"  # not applied because a project it depends on failed
    SKIPPED = "skipped"  # `apply: comment`: only a person applies it


FAILURES = frozenset({ProjectStatus.FAILED, ProjectStatus.BLOCKED})


@dataclass(frozen=True)
class PollTarget:
    """A repository the reconciler polls, and how often.

    `snapshot_of` is set for a plain directory: it is snapshotted into `repo` (a git
    repository under the data dir) before every poll.
    """

    repo: DriftRepo
    interval_s: float = 60.0
    label: str = ""  # how people call it ("examples/sample-infra"); default: the repo name
    snapshot_of: Path | None = None

    @property
    def name(self) -> str:
        return self.label or self.repo.name


@dataclass(frozen=True)
class ProjectOutcome:
    """What a pass did with one project."""

    project: str
    dir: str
    workspace: str
    status: ProjectStatus
    reason: str = ""  # why the project was chosen (the files that changed)
    detail: str = ""  # why it is busy / failed / blocked / skipped
    summary: PlanSummary = field(default_factory=PlanSummary)
    plan_run_id: int | None = None
    apply_run_id: int | None = None
    log_path: str | None = None  # the Terraform log of the step that failed

    @property
    def label(self) -> str:
        return f"{self.project}/{self.workspace}"


@dataclass(frozen=True)
class ReconcileReport:
    """One poll of one repository: which head, what was applied, what went wrong."""

    repo: str  # the repository key (locks, runs)
    name: str  # how people call it
    started_at: datetime
    finished_at: datetime
    branch: str | None = None
    head: str | None = None
    base: str | None = None  # the last reconciled commit the change was detected from
    projects: tuple[ProjectOutcome, ...] = ()
    up_to_date: bool = False  # no new commit and nothing to retry: nothing was done
    retry: bool = False  # a retry of busy projects at an already seen head
    error: str = ""  # the pass itself failed (fetch, config, snapshot)
    config_invalid: bool = False  # ... because the repository config is invalid (exit 2)
    notes: tuple[str, ...] = ()

    def with_status(self, *statuses: ProjectStatus) -> list[ProjectOutcome]:
        return [p for p in self.projects if p.status in statuses]

    @property
    def ok(self) -> bool:
        """Nothing failed (busy projects are not failures: they are retried)."""
        return not self.error and not self.with_status(*FAILURES)

    @property
    def applied(self) -> list[ProjectOutcome]:
        return self.with_status(ProjectStatus.APPLIED)

    def counts(self) -> dict[str, int]:
        return {status.value: len(self.with_status(status)) for status in ProjectStatus}
