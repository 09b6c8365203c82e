"""Progress of plans and applies as they happen, for a person watching the CLI.

The planner (and reconcile's apply step) tell an optional observer when a project is
queued, starts `init`, starts `plan`, is planned and is applied. The server passes
none; the CLI shows the events as a live table or as one line each
(`runner/console/progress.py`). Observers are called from the planner's threads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from runner.results.model import PlanResult, PlanStatus, PlanSummary


class Phase(StrEnum):
    QUEUED = "queued"
    INIT = "init"
    PLAN = "plan"
    PLANNED = "planned"  # the plan is done: its counts (or error) are in `detail`
    APPLY = "apply"
    DONE = "done"  # applied (or not): the outcome is in `detail`


@dataclass(frozen=True)
class ProgressEvent:
    """One project entering a phase; `detail` carries the counts or the error."""

    project: str
    workspace: str
    phase: Phase
    detail: str = ""
    failed: bool = False


ProgressObserver = Callable[[ProgressEvent], None]


def counts(summary: PlanSummary) -> str:
    """`+1 ~0 -2` (and `±n` replaced): the plan's counts, short enough for a table cell."""
    text = f"+{summary.add} ~{summary.change} -{summary.destroy}"
    return text + (f" ±{summary.replace}" if summary.replace else "")


def planned_event(result: PlanResult) -> ProgressEvent:
    """The PLANNED event of a plan result: counts, "no changes", or the error's first line."""
    if result.status is PlanStatus.ERROR:
        first = (result.error or "plan failed").strip().splitlines()
        detail, failed = f"error: {first[0] if first else 'plan failed'}", True
    elif result.status is PlanStatus.CHANGES:
        detail, failed = counts(result.summary), False
    else:
        detail, failed = "no changes", False
    return ProgressEvent(result.project, result.workspace, Phase.PLANNED, detail, failed)
