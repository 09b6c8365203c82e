"""What a policy check produced, per project: values shared by the PR flow, the gate and render.

A check runs every policy set a project is bound to against one plan. Each set
passes, warns, or fails (a `deny`/`violation` message, a Rego error, a time-out);
a failing set may be overridden by enough of its owners (`gitops approve_policies`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from enum import StrEnum


class PolicyKind(StrEnum):
    """Why the plan was made: policies see it as `input.run.kind`."""

    PR = "pr"
    MERGE = "merge"
    DRIFT = "drift"
    RECONCILE = "reconcile"


@dataclass(frozen=True)
class SetResult:
    """One policy set's verdict on one plan; messages are shown verbatim."""

    name: str
    failures: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    # Broken Rego, a time-out, a missing set: failures that no rule decided.
    errors: tuple[str, ...] = ()
    owners: tuple[str, ...] = ()
    approvals_needed: int = 1

    @property
    def failed(self) -> bool:
        return bool(self.failures or self.errors)

    def approved_by(self, approvers: Collection[str]) -> bool:
        """Whether enough distinct owners approved overriding this set's failure."""
        owners = {owner.casefold() for owner in self.owners}
        count = len({user.casefold() for user in approvers} & owners)
        return self.approvals_needed > 0 and count >= self.approvals_needed


@dataclass(frozen=True)
class PolicyCheck:
    """Every set bound to one project, checked against its plan."""

    project: str
    sets: tuple[SetResult, ...] = field(default=())

    @property
    def failed_sets(self) -> tuple[SetResult, ...]:
        return tuple(result for result in self.sets if result.failed)

    @property
    def passed(self) -> bool:
        return not self.failed_sets

    @property
    def clean(self) -> bool:
        """No failure and no warning: what an unattended apply (drift) requires."""
        return self.passed and not any(result.warnings for result in self.sets)

    def unapproved(self, approvals: dict[str, Collection[str]]) -> tuple[SetResult, ...]:
        """Failed sets whose owners have not approved enough (approvals: set → users)."""
        return tuple(
            result
            for result in self.failed_sets
            if not result.approved_by(approvals.get(result.name, ()))
        )
