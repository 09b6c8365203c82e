"""The conditions a pull request's apply must meet: `Gate`s of the one apply path.

Who may apply is decided by the default branch, never by the change being applied:
`apply_requirements` and `apply:` come from the repository config of the default
branch (for a merge: of the base branch just before the merge), plus the
requirements the server adds for every project (`GITOPS_APPLY_REQUIREMENTS`). A
PR that deletes `apply_requirements: [approved]` is planned with its new config,
and gated by the old one.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

from runner.commands.apply_requirements import RequirementContext, unmet_requirements
from runner.config.errors import ConfigError
from runner.config.loader import load_repo_config
from runner.config.model import ApplyMode, ProjectConfig
from runner.config.server_config import merge_requirements, server_rules
from runner.engine.apply import ApplyItem, ApplyRequest
from runner.engine.services import Services
from runner.events.model import RepoRef
from runner.forge.base import PullRequestInfo
from runner.store.store import Store
from runner.workspace.working_copy import WorkingCopies

StateKey = tuple[str, str]  # (dir, workspace): a state, whatever the project is called


class UntrustedConfig(Exception):
    """The default branch's config cannot be read, so nothing may be applied."""


@dataclass(frozen=True)
class TrustedRules:
    """`apply_requirements` and `apply:` per state, as the default branch has them."""

    projects: Mapping[StateKey, ProjectConfig]
    server_requirements: tuple[str, ...] = ()

    def requirements(self, project: ProjectConfig) -> tuple[str, ...]:
        """The default branch's requirements of this state, plus the server's.

        A state the default branch does not know yet keeps the requirements the PR
        gives it; the server's always apply (see docs/security.md).
        """
        trusted = self.projects.get(project.key)
        own = trusted.apply_requirements if trusted is not None else project.apply_requirements
        return tuple(dict.fromkeys((*own, *self.server_requirements)))

    def mode(self, project: ProjectConfig) -> ApplyMode:
        trusted = self.projects.get(project.key)
        return trusted.apply if trusted is not None else project.apply


def load_trusted_rules(
    working_copies: WorkingCopies,
    repo_url: str,
    commit: str,
    server_requirements: tuple[str, ...] = (),
) -> TrustedRules:
    """The rules of the config at `commit` (the default branch), plus the server's."""
    return TrustedRules(_projects_at(working_copies, repo_url, commit), server_requirements)


# A commit's config never changes, so each is read once: an apply, a plan's policy
# check and an approval of the same default-branch head share one export of the tree.
@lru_cache(maxsize=128)
def _projects_at(
    working_copies: WorkingCopies, repo_url: str, commit: str
) -> Mapping[StateKey, ProjectConfig]:
    with tempfile.TemporaryDirectory(prefix="gitops-trusted-") as scratch:
        tree = working_copies.checkout_fresh(repo_url, commit, Path(scratch) / "tree")
        try:
            config = load_repo_config(tree)
        except ConfigError as error:
            raise UntrustedConfig(
                f"the configuration of the default branch (`{commit[:7]}`) is invalid, so "
                f"nothing can be applied until it is fixed: {error}"
            ) from error
    return MappingProxyType({project.key: project for project in config.projects})


def rules_at(services: Services, repo: RepoRef, commit_or_branch: str) -> TrustedRules:
    """The trusted rules at a commit or branch of `repo`, plus the server's requirements."""
    working_copies = services.working_copies
    commit = working_copies.resolve(repo.clone_url, commit_or_branch)
    try:
        # The server-side repo config's apply_requirements are the server's too.
        server = server_rules(services.settings.repo_config, repo.key)
    except ConfigError as error:
        raise UntrustedConfig(f"the server's repo config is invalid: {error}") from error
    requirements = merge_requirements(
        services.settings.apply_requirements, server.apply_requirements
    )
    return load_trusted_rules(working_copies, repo.clone_url, commit, requirements)


@dataclass(frozen=True)
class ModeGate:
    """`apply: on_merge` projects apply on merge only; `apply: comment` by comment only."""

    rules: TrustedRules
    on_merge: bool  # the merge itself, or a retry of its apply on the merged PR

    def allows(self, project: ProjectConfig) -> bool:
        mode = self.rules.mode(project)
        return mode == "both" or (mode == "on_merge") == self.on_merge

    def refusal(self, item: ApplyItem, request: ApplyRequest) -> str | None:
        if self.allows(item.project):
            return None
        if self.on_merge:
            return "`apply: comment`: applied by a `gitops apply` comment, not on merge"
        return "`apply: on_merge`: this project is applied when the pull request is merged"


@dataclass(frozen=True)
class RequirementsGate:
    """The default branch's `apply_requirements` hold for this PR right now."""

    rules: TrustedRules
    context: RequirementContext

    def refusal(self, item: ApplyItem, request: ApplyRequest) -> str | None:
        reasons = unmet_requirements(self.rules.requirements(item.project), self.context)
        return "; ".join(reasons) or None


@dataclass(frozen=True)
class TrustedPlanGate:
    """A plan asked for by someone without write permission is never applied."""

    def refusal(self, item: ApplyItem, request: ApplyRequest) -> str | None:
        if item.trusted:
            return None
        return (
            "the saved plan was requested by someone without write permission; "
            "someone with write permission must comment `gitops plan` again"
        )


@dataclass(frozen=True)
class FreshPlanGate:
    """An open PR applies only plans made at its current head."""

    pr: PullRequestInfo

    def refusal(self, item: ApplyItem, request: ApplyRequest) -> str | None:
        if self.pr.state != "open" or item.commit == self.pr.head_sha:
            return None
        return (
            f"the plan is stale (made at `{item.commit[:7]}`, the head is "
            f"`{self.pr.head_sha[:7]}`); comment `gitops plan` again"
        )


@dataclass(frozen=True)
class HoldsLockGate:
    """The PR still holds the project's lock (checked again under the state's mutex)."""

    store: Store

    def refusal(self, item: ApplyItem, request: ApplyRequest) -> str | None:
        project = item.project
        lock = self.store.locks.get(request.repo_key, project.dir, project.workspace)
        if item.holder.holds(lock):
            return None
        return "this pull request does not hold its lock"
