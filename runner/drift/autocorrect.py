"""Auto-correction: apply exactly the scan's plan, only when that is provably safe.

Safe means: the project opted in (`auto_correct: true`); the default branch has not
moved since the scan; the plan deletes and replaces nothing (unless
`allow_destroy: true`); the plan file is the one the scan checksummed; we are inside
the project's correction window; and the project lock is free (taken for the apply).
Anything else leaves the drift for a human, with the reason in the report.
Policy checks are not part of the runner yet; when they are, they go in `refusal`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, time
from pathlib import Path

from runner.config.model import ProjectConfig
from runner.drift.model import Correction, DriftResult, DriftStatus
from runner.store.locks import LockOwner
from runner.store.runs import RunStatus
from runner.store.store import Store
from runner.terraform import Terraform, workspace_env
from runner.terraform.planfile import plan_checksum

TerraformFor = Callable[[str | None], Terraform]
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


def _short(sha: str | None) -> str:
    return (sha or "?")[:12]


@dataclass(frozen=True)
class ApplyOutcome:
    ok: bool
    error: str = ""


class AutoCorrector:
    """Applies a scan's plan under the project lock and records the apply as a run."""

    def __init__(self, store: Store, terraform_for: TerraformFor, log_dir: Path) -> None:
        self._store = store
        self._terraform_for = terraform_for
        self._log_dir = log_dir

    def apply(
        self, tree: Path, repo_key: str, project: ProjectConfig, result: DriftResult
    ) -> DriftResult:
        """Apply under the lock; returns the result marked NEEDS_APPROVAL or FAILED, or as is."""
        assert result.plan_path is not None
        run_id = self._store.runs.start(
            repo=repo_key,
            project=project.name,
            dir=project.dir,
            workspace=project.workspace,
            command="apply",
            trigger="schedule",
            commit_sha=result.commit,
            author=LOCK_USER,
        )
        owner = LockOwner(pr_number=None, user=LOCK_USER, run_id=run_id)
        taken = self._store.locks.acquire(repo_key, project.dir, project.workspace, owner)
        if not taken.acquired:
            holder = taken.lock.owner_pr
            why = f"locked by PR #{holder}" if holder is not None else "the project is locked"
            self._store.runs.finish(run_id, RunStatus.CANCELLED, error=why)
            return replace(result, correction=Correction.NEEDS_APPROVAL, correction_reason=why)
        try:
            outcome = self._apply_plan(tree, project, result, run_id)
        finally:
            self._store.locks.release(repo_key, project.dir, project.workspace)
        if not outcome.ok:
            return replace(result, correction=Correction.FAILED, correction_reason=outcome.error)
        return result

    def _apply_plan(
        self, tree: Path, project: ProjectConfig, result: DriftResult, run_id: int
    ) -> ApplyOutcome:
        terraform = self._terraform_for(project.terraform_version)
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log = self._log_dir / f"drift-apply-{run_id}.log"
        outcome = terraform.apply(
            tree / project.dir,
            Path(result.plan_path or ""),
            log=log,
            env=workspace_env(project.workspace),
        )
        if outcome.ok:
            self._store.runs.finish(run_id, RunStatus.SUCCESS, summary=result.summary)
            return ApplyOutcome(ok=True)
        error = f"apply exited with code {outcome.exit_code}: {outcome.stderr_tail()}".strip()
        self._store.runs.finish(run_id, RunStatus.FAILED, error=error, log_path=str(log))
        return ApplyOutcome(ok=False, error=error)


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
