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
    # An import is planned even when its actions are ("no-op",), so it is kept apart.
    importing: bool = field(default=False, kw_only=True)
    # sha256 of the object's before/after values and what is unknown until apply; ""
    # when not known. Values themselves are never kept (they may be secrets).
    values: str = field(default="", kw_only=True, compare=False)
    # Top-level attributes the action sets to another (or a not yet known) value.
    attributes: tuple[str, ...] = field(default=(), kw_only=True, compare=False)
    # Drift scans: the change only puts back the values the object had before it drifted.
    reverts_drift: bool = field(default=False, kw_only=True, compare=False)


@dataclass(frozen=True)
class DriftedResource(ResourceChange):
    """An object changed outside of Terraform, with the top-level attributes that moved.

    A ResourceChange so it fits `PlanResult.drift`; the attribute names feed drift
    reports ("tags, size changed") without storing the values, which may be sensitive.
    """

    changed_attributes: tuple[str, ...] = ()


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
    # The JSON plan is still to be read (Planner.read_plans): `summary` holds the counts
    # Terraform printed, `changes` and `drift` are empty, and the plan is not appliable.
    changes_pending: bool = False


class ApplyStatus(StrEnum):
    APPLIED = "applied"
    FAILED = "failed"  # refused by a check, or Terraform failed
    BLOCKED = "blocked"  # not tried: a project it depends on failed
    BUSY = "busy"  # not tried: another run holds the state; may be retried

    @property
    def applied(self) -> bool:
        return self is ApplyStatus.APPLIED


@dataclass(frozen=True)
class ApplyResult:
    """One project's apply, ready to be stored and rendered."""

    project: str
    dir: str
    workspace: str
    status: ApplyStatus
    summary: PlanSummary = field(default_factory=PlanSummary)  # of the plan that was applied
    output: str = ""  # human apply output, already masked
    error: str = ""  # tail of stderr when status is FAILED, already masked
    commit: str | None = None
    log_path: str | None = None
    duration_s: float = 0.0
    run_id: int | None = None  # the stored apply run, for links; None when it never started
