"""Values describing what a plan or apply produced, shared by store, render and forge."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class PlanStatus(StrEnum):
    NO_CHANGES = "no_changes"
    CHANGES = "changes"
    ERROR = "error"


@dataclass(frozen=True)
class PlanSummary:
    """Counts parsed from `terraform show -json` (resource_changes / resource_drift)."""

    add: int = 0
    change: int = 0
    destroy: int = 0
    replace: int = 0
    import_: int = 0
    drifted: int = 0  # objects changed outside of Terraform

    @property
    def has_changes(self) -> bool:
        return any((self.add, self.change, self.destroy, self.replace, self.import_))


@dataclass(frozen=True)
class ResourceChange:
    """One planned action, the unit compared between a PR plan and a merge plan."""

    address: str
    actions: tuple[str, ...]  # e.g. ("create",), ("delete", "create")


@dataclass(frozen=True)
class PlanResult:
    """One project's plan, ready to be stored and rendered."""

    project: str
    dir: str
    workspace: str
    status: PlanStatus
    reason: str = ""  # why the project was chosen (change detection)
    summary: PlanSummary = field(default_factory=PlanSummary)
    output: str = ""  # human plan output, already masked
    error: str = ""  # tail of stderr when status is ERROR, already masked
    changes: tuple[ResourceChange, ...] = ()
    drift: tuple[ResourceChange, ...] = ()
    plan_path: str | None = None
    plan_checksum: str | None = None
    commit: str | None = None
    log_path: str | None = None
    duration_s: float = 0.0
