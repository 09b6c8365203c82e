"""Whether a project's `apply_requirements` hold for a pull request right now.

Each requirement is checked against the forge's live state and the working copy,
and every failure is named, so a refused apply says exactly what is missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from runner.commands.feedback import APPLY_CONTEXT
from runner.events.model import RepoRef
from runner.forge.base import Forge, PullRequestInfo
from runner.workspace.working_copy import WorkingCopies


@dataclass(frozen=True)
class RequirementContext:
    """The live facts the requirements are judged on (read once per apply command)."""

    forge: Forge
    working_copies: WorkingCopies
    repo: RepoRef
    pr: PullRequestInfo


def unmet_requirements(requirements: Iterable[str], context: RequirementContext) -> list[str]:
    """Human-readable reasons for each requirement that does not hold (empty: all hold)."""
    checks = {
        "approved": _approved,
        "mergeable": _mergeable,
        "undiverged": _undiverged,
    }
    return [
        reason
        for requirement in requirements
        if (reason := checks[requirement](context)) is not None
    ]


def _approved(context: RequirementContext) -> str | None:
    approvers = context.forge.approvers(context.repo, context.pr.number) - {context.pr.author}
    if approvers:
        return None
    return "`approved`: the pull request needs an approving review by someone other than its author"


def _mergeable(context: RequirementContext) -> str | None:
    if context.pr.state == "merged":
        return None
    if context.forge.is_mergeable(context.repo, context.pr.number, [APPLY_CONTEXT]):
        return None
    return "`mergeable`: the forge says the pull request cannot be merged yet"


def _undiverged(context: RequirementContext) -> str | None:
    if context.pr.state == "merged":
        return None
    url = context.repo.clone_url
    base_head = context.working_copies.resolve(url, context.pr.base_ref)
    if context.working_copies.is_ancestor(url, base_head, context.pr.head_sha):
        return None
    return (
        f"`undiverged`: the branch does not contain the head of `{context.pr.base_ref}` "
        f"(`{base_head[:7]}`); merge or rebase it first"
    )
