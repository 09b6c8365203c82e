"""Whether a project's `apply_requirements` hold for a pull request right now.

Each requirement is checked against the forge's live state and the working copy,
and every failure is named, so a refused apply says exactly what is missing. This
is the one place that decides what counts as an approval.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from runner.events.model import RepoRef
from runner.forge.base import (
    APPLY_CONTEXT,
    WRITE_PERMISSIONS,
    Approval,
    Forge,
    PullRequestInfo,
    same_user,
)
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
    if any(_counts(approval, context) for approval in _approvals(context)):
        return None
    return (
        "`approved`: the pull request needs an approving review at its current head "
        f"(`{context.pr.head_sha[:7]}`) by someone with write permission other than its author"
    )


def _approvals(context: RequirementContext) -> list[Approval]:
    return context.forge.approvals(context.repo, context.pr.number)


def _counts(approval: Approval, context: RequirementContext) -> bool:
    """An approval counts when given at the head, not by the author, by a writer.

    At the head: a push after the review voids it (GitHub's "dismiss stale reviews"),
    so nobody applies code the reviewer never saw. Not the author: nobody reviews
    their own change. A writer: anyone can review a public repository. The cheap
    checks go first; the permission costs a forge request.
    """
    return (
        approval.commit_sha == context.pr.head_sha
        and not same_user(approval.user, context.pr.author)
        and context.forge.permission(context.repo, approval.user) in WRITE_PERMISSIONS
    )


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
