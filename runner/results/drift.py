"""Values describing a drift scan, shared by store, reports, issues and the API."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from runner.results.model import DriftedResource, PlanSummary, ResourceChange
from runner.results.summary import normalized_changes_hash


class DriftStatus(StrEnum):
    IN_SYNC = "in_sync"
    DRIFT = "drift"  # objects changed outside Terraform (resource_drift)
    PENDING = "pending"  # the default branch has changes that were never applied
    ERROR = "error"  # never counted as "no drift"
    BUSY = "busy"  # locked by an open PR or in the middle of an apply: not scanned


class Correction(StrEnum):
    CORRECTED = "corrected"
    STILL_DRIFTED = "still_drifted"
    NEEDS_APPROVAL = "needs_approval"
    FAILED = "failed"


@dataclass(frozen=True)
class DriftResult:
    """One project's drift at one commit of the default branch."""

    repo: str  # the repository key locks are scoped by ("github.com/acme/infra", or a path)
    project: str
    dir: str
    workspace: str
    status: DriftStatus
    commit: str | None = None
    summary: PlanSummary = field(default_factory=PlanSummary)
    drifted: tuple[DriftedResource, ...] = ()
    changes: tuple[ResourceChange, ...] = ()  # what an apply of the scan's plan would do
    plan_checksum: str | None = None
    plan_path: str | None = None  # only meaningful during the scan that made it
    plan_run_id: int | None = None  # the scan's plan run, during the scan that made it
    log_path: str | None = None  # the scan's Terraform log, during the scan that made it
    error: str = ""
    correction: Correction | None = None
    correction_reason: str = ""
    scanned_at: datetime | None = None
    id: int | None = None
    notified: bool = False
    issue_number: int | None = None

    @property
    def drift_hash(self) -> str | None:
        """Identifies "the same drift" across scans; None when nothing drifted."""
        if self.status is not DriftStatus.DRIFT:
            return None
        return drift_hash(self.drifted, self.changes)

    @property
    def label(self) -> str:
        """`project/workspace`, as in issue titles and Slack lines."""
        return f"{self.project}/{self.workspace}"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.repo, self.dir, self.workspace)


def drift_hash(drifted: Iterable[DriftedResource], changes: Iterable[ResourceChange]) -> str:
    """sha256 of what drifted (addresses, actions, attribute names) and the planned fix.

    Values are left out on purpose: a value that keeps moving (a timestamp someone
    edits by hand) would otherwise re-alert on every scan although nothing new happened.
    """
    lines = sorted(
        json.dumps([d.address, list(d.actions), sorted(d.changed_attributes)]) for d in drifted
    )
    lines.append(normalized_changes_hash(changes))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclass(frozen=True)
class DriftReport:
    """Everything one scan found, in a stable order, plus what it did about it."""

    results: tuple[DriftResult, ...]
    started_at: datetime
    finished_at: datetime
    notes: tuple[str, ...] = ()  # repo-level problems (clone failed, bad config)

    def with_status(self, *statuses: DriftStatus) -> list[DriftResult]:
        return [r for r in self.results if r.status in statuses]

    @property
    def drifted(self) -> list[DriftResult]:
        return self.with_status(DriftStatus.DRIFT)

    @property
    def all_in_sync(self) -> bool:
        return not self.notes and all(r.status is DriftStatus.IN_SYNC for r in self.results)

    def counts(self) -> dict[str, int]:
        return {status.value: len(self.with_status(status)) for status in DriftStatus}
