"""The input document every policy sees: the JSON plan, plus `run` (who, what, why).

The plan's own keys stay at the top level (`input.resource_changes`, ...), as conftest
gives them to Atlantis policies; `input.run` is ours and never clashes with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runner.config.model import ProjectConfig
from runner.policies.plans import PlanDocument
from runner.results.policy import PolicyKind


@dataclass(frozen=True)
class RunContext:
    """What a plan is for, as policies read it in `input.run`."""

    kind: PolicyKind
    repository: str
    trigger: str  # the run's trigger: autoplan, comment, merge, schedule, reconcile, cli
    author: str = ""  # who asked (commenter, merger), or the runner itself
    commit: str | None = None
    pr_number: int | None = None
    pr_author: str | None = None
    branch: str | None = None  # the branch the change lands on (a PR's base branch)
    default_branch: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def input_document(
    document: PlanDocument, context: RunContext, project: ProjectConfig
) -> dict[str, Any]:
    """`{...plan, "run": {...}}`: what `input` is in every policy."""
    pull_request = (
        {"number": context.pr_number, "author": context.pr_author}
        if context.pr_number is not None
        else None
    )
    run = {
        "kind": str(context.kind),
        "repository": context.repository,
        "trigger": context.trigger,
        "author": context.author,
        "commit": context.commit,
        "pull_request": pull_request,
        "branch": context.branch,
        "default_branch": context.default_branch,
        "plan_flags": list(document.flags),
        "project": {
            "name": project.name,
            "dir": project.dir,
            "workspace": project.workspace,
            "data": dict(project.policy_data),
        },
        **context.extra,
    }
    return {**document.plan, "run": run}
