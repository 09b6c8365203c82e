"""Auto-correction: apply exactly the scan's plan, only when that is provably safe.

Safe means: the project opted in (`auto_correct: true`); the plan does nothing but
revert what drifted (a change nobody applied yet is "pending", never corrected); the
default branch has not moved since the scan; the plan deletes and replaces nothing
(unless `allow_destroy: true`); we are inside the project's correction window; and
the project lock is free (taken for the apply). The apply itself goes through the
one guarded path (`engine/apply.py`: mutex, lock, checksum, run record, masking),
with these conditions as its `CorrectionGate`. Anything else leaves the drift for a
human, with the reason in the report.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, time
from pathlib import Path

from runner.config.model import ProjectConfig
from runner.engine.apply import ApplyExecutor, ApplyItem, ApplyRequest, Gate, LockHolder
from runner.results.drift import Correction, DriftResult, DriftStatus
from runner.store.locks import LockOwner
from runner.store.runs import Trigger
from runner.store.store import Store
from runner.terraform.planfile import plan_checksum

LOCK_USER = "gitops-runner drift auto-correct"
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(
    r"^\s*(?:(?P<d1>[a-z]{3})(?:-(?P<d2>[a-z]{3}))?\s+)?"
    r"(?P<h1>\d{1,2}):(?P<m1>\d{2})-(?P<h2>\d{1,2}):(?P<m2>\d{2})\s*$",
    re.IGNORECASE,
)


def in_window(window: str | None, now: datetime) -> bool:
    """Whether `now` (UTC) is inside e.g. "Mon-Fri 09:00-17:00"; no window = always.

    An unparsable window counts as closed: a typo must not allow corrections at 3 am.
    """
    if not window:
        return True
    match = _WINDOW.match(window)
    if match is None:
        return False
    if match["d1"]:
        first = _DAYS.index(match["d1"].lower()) if match["d1"].lower() in _DAYS else -1
        last_name = (match["d2"] or match["d1"]).lower()
        last = _DAYS.index(last_name) if last_name in _DAYS else -1
        if first < 0 or last < 0:
            return False
        day = now.weekday()
        inside = first <= day <= last if first <= last else (day >= first or day <= last)
        if not inside:
            return False
    start = time(int(match["h1"]), int(match["m1"]))
    end = time(int(match["h2"]), int(match["m2"]))
    current = now.time().replace(tzinfo=None)
    return start <= current < end if start <= end else (current >= start or current < end)


def refusal(result: DriftResult, project: ProjectConfig, head_now: str, now: datetime) -> str:
    """Why the scan's plan must not be applied automatically ("" when it may be)."""
    if pending := _not_reverting_drift(result):
        return "pending changes, not corrected: the plan also changes " + ", ".join(pending)
    if head_now != result.commit:
        moved = f"{_short(result.commit)} → {_short(head_now)}"
        return f"the default branch moved since the scan ({moved})"
    destructive = [c.address for c in result.changes if "delete" in c.actions]
    if destructive and not project.drift.allow_destroy:
        return "the correction would delete or replace " + ", ".join(destructive)
    if any(c.importing for c in result.changes):
        return "the plan imports objects"
    if not in_window(project.drift.window, now):
        return f"outside the correction window ({project.drift.window})"
    if not result.plan_path or not result.plan_checksum:
        return "the scan kept no plan file"
    path = Path(result.plan_path)
    if not path.is_file() or plan_checksum(path) != result.plan_checksum:
        return "the plan file changed since the scan"
    return ""


def _not_reverting_drift(result: DriftResult) -> list[str]:
    """Planned changes that are not the reversal of a drift (sorted addresses).

    A reversal puts back what changed outside Terraform: an object deleted outside is
    created again, an object edited outside gets its values from before the edit
    (`ResourceChange.reverts_drift`, judged on the values in the JSON plan). Anything
    else, such as a change on the default branch nobody applied, is pending.
    """
    drifted = {resource.address for resource in result.drifted}
    return sorted(
        change.address
        for change in result.changes
        if change.address not in drifted or not change.reverts_drift
    )


def _short(sha: str | None) -> str:
    return (sha or "?")[:12]


@dataclass(frozen=True)
class CorrectionGate:
    """The scan's safety rules (`refusal`) as a gate of the one apply path."""

    result: DriftResult
    head_now: str
    now: datetime

    def refusal(self, item: ApplyItem, request: ApplyRequest) -> str | None:
        return refusal(self.result, item.project, self.head_now, self.now) or None


class AutoCorrector:
    """Applies a scan's plan under the project lock, through the one apply path."""

    def __init__(self, store: Store, executor: ApplyExecutor) -> None:
        self._store = store
        self._executor = executor

    def apply(
        self,
        tree: Path,
        repo_key: str,
        project: ProjectConfig,
        result: DriftResult,
        gates: Sequence[Gate],
    ) -> DriftResult:
        """Apply under the lock; returns the result marked NEEDS_APPROVAL or FAILED, or as is."""
        # The lock names the scan's plan run, so the apply path can tell it is ours.
        run_id = result.plan_run_id
        owner = LockOwner(pr_number=None, user=LOCK_USER, run_id=run_id)
        taken = self._store.locks.acquire(repo_key, project.dir, project.workspace, owner)
        if not taken.acquired:
            holder = taken.lock.owner_pr
            why = f"locked by PR #{holder}" if holder is not None else "the project is locked"
            return replace(result, correction=Correction.NEEDS_APPROVAL, correction_reason=why)
        try:
            batch = self._executor.run(_request(tree, repo_key, project, result), gates)
        finally:
            self._store.locks.release(repo_key, project.dir, project.workspace)
        if batch.refused:
            why = "; ".join(refusal.reason for refusal in batch.refusals)
            return replace(result, correction=Correction.NEEDS_APPROVAL, correction_reason=why)
        applied = batch.results[0]
        if not applied.status.applied:
            why = f"apply failed: {applied.error}".strip()
            return replace(result, correction=Correction.FAILED, correction_reason=why)
        return result


def _request(
    tree: Path, repo_key: str, project: ProjectConfig, result: DriftResult
) -> ApplyRequest:
    item = ApplyItem(
        project=project,
        plan_path=Path(result.plan_path or ""),
        plan_checksum=result.plan_checksum or "",
        commit=result.commit or "",
        summary=result.summary,
        holder=LockHolder(run_id=result.plan_run_id),
    )
    return ApplyRequest(repo_key, tree, (item,), Trigger.SCHEDULE, LOCK_USER)


def after_rescan(original: DriftResult, rescanned: DriftResult) -> DriftResult:
    """The final result of a corrected project: the re-scan's status, the original drift."""
    correction = (
        Correction.CORRECTED
        if rescanned.status is DriftStatus.IN_SYNC
        else Correction.STILL_DRIFTED
    )
    reason = "" if correction is Correction.CORRECTED else "the re-scan still shows changes"
    return replace(
        rescanned,
        drifted=original.drifted if correction is Correction.CORRECTED else rescanned.drifted,
        correction=correction,
        correction_reason=reason,
    )
