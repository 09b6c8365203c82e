"""Which policy sets check which project: the server's sets, chosen by trusted config.

The server names every set (`GITOPS_POLICY_SETS`); a `required` set checks every
project, an optional one only the projects whose config on the default branch lists
it in `policy_sets:`. A name the server does not define is a failure, never ignored:
a typo must not switch a guardrail off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runner.config.model import ProjectConfig
from runner.settings import PolicySetSettings


@dataclass(frozen=True)
class PolicySet:
    """A directory of `.rego` files, its owners and how many of them override a failure."""

    name: str
    path: Path
    owners: tuple[str, ...] = ()
    approvals_needed: int = 1
    required: bool = True

    @classmethod
    def from_settings(cls, spec: PolicySetSettings) -> PolicySet:
        return cls(
            spec.name,
            spec.path.expanduser(),
            spec.owners,
            spec.approvals_needed,
            spec.required,
        )


@dataclass(frozen=True)
class Selection:
    """The sets a project is checked against, and names its config gives that do not exist."""

    sets: tuple[PolicySet, ...] = ()
    missing: tuple[str, ...] = field(default=())


def select_sets(available: Sequence[PolicySet], trusted: ProjectConfig | None) -> Selection:
    """Required sets plus those the trusted (default-branch) config names for the project."""
    by_name = {policy_set.name: policy_set for policy_set in available}
    named = trusted.policy_sets if trusted is not None else ()
    chosen = [s for s in available if s.required or s.name in named]
    missing = tuple(name for name in named if name not in by_name)
    return Selection(tuple(chosen), missing)
