"""Apply a pull request's reviewed plans: by `gitops apply`, and on merge.

Both go through the one guarded apply path (`engine/apply.py`) with the PR's gates
(`commands/apply_gates.py`); what differs is how the plans are chosen:

- by comment: the saved plans made at the PR's current head (requested by someone
  with write permission), gated by the default branch's requirements and modes;
- on merge into the default branch (or a branch the server names): the merge commit
  is planned again and applied only where the requirements held at merge time and
  the new plan equals the reviewed one in addresses, actions and attribute values.
  A plan that differs is never kept as appliable: the PR is told what differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from runner.commands.apply_gates import (
    FreshPlanGate,
    HoldsLockGate,
    ModeGate,
    RequirementsGate,
    TrustedPlanGate,
    TrustedRules,
    UntrustedConfig,
    rules_at,
)
from runner.commands.apply_requirements import RequirementContext
from runner.commands.feedback import PullRequestFeedback
from runner.commands.planning import PlanRequest, step_context, worktree_key
from runner.commands.policy_review import PullRequestPolicies
from runner.config.errors import ConfigError
from runner.config.loader import load_repo_config
from runner.config.model import ProjectConfig, RepoConfig
from runner.config.server_config import server_rules
from runner.engine.apply import ApplyItem, ApplyRequest, Gate, LockHolder
from runner.engine.planner import PlanOptions, PlanTarget
from runner.engine.project_mutex import state_key
from runner.engine.recording import record_plan_result
from runner.engine.services import Services
from runner.events.commands import Command
from runner.events.model import RepoRef
from runner.forge.base import APPLY_CONTEXT, WRITE_PERMISSIONS, CommitState, PullRequestInfo
from runner.notify.events import ApplyEvents
from runner.results.model import ApplyResult, PlanResult, PlanStatus, PlanSummary
from runner.results.render import render_message
from runner.results.summary import changes_content_hash, content_differences
from runner.store.runs import PlanRecord, RunStatus, Trigger
from runner.workspace.working_copy import WorkingCopyError


class _Refused(Exception):
    """Nothing is applied; `message` (and `details`) tell the PR why."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class PullRequestApplier:
    """Applies a PR's plans and reports on the PR."""

    def __init__(self, services: Services, feedback: PullRequestFeedback) -> None:
        self._services = services
        self._feedback = feedback
        self._policies = PullRequestPolicies(services, feedback)
        self._events = ApplyEvents(
            services.notifier,
            services.store,
            public_url=services.settings.public_url,
            masker=feedback.masker,
        )

    # ---- gitops apply -------------------------------------------------------------------

    def apply_by_comment(
        self, repo: RepoRef, pr: PullRequestInfo, author: str, command: Command
    ) -> list[ApplyResult]:
        """Check everything first, then apply in dependency order; say exactly what failed."""
        try:
            return self._apply_by_comment(repo, pr, author, command)
        except _Refused as refused:
            self._feedback.comment(
                render_message("error", message=refused.message, details=refused.details)
            )
            return []

    def _apply_by_comment(
        self, repo: RepoRef, pr: PullRequestInfo, author: str, command: Command
    ) -> list[ApplyResult]:
        forge = self._feedback.forge
        if forge.permission(repo, author) not in WRITE_PERMISSIONS:
            raise _Refused(f"@{author} needs write permission on the repository to apply.")
        if pr.state == "closed":
            raise _Refused("This pull request is closed without merging: nothing to apply.")
        plans = self._selected_plans(repo, pr, command)
        if not plans and pr.state == "merged":
            raise _Refused(
                "There is no plan to apply: after a merge, only a failed merge apply can be "
                "retried. Open a new pull request for further changes."
            )
        if not plans:
            raise _Refused(
                "There is no plan to apply for this selection. Comment `gitops plan` first."
            )
        checkout = self._checkout(repo, pr, plans[0].commit_sha)
        items = self._items(plans, self._config(checkout, repo), pr.number)
        rules = self._trusted_rules(repo, repo.default_branch)
        context = RequirementContext(forge, self._services.working_copies, repo, pr)
        gates: list[Gate] = [
            FreshPlanGate(pr),
            TrustedPlanGate(),
            ModeGate(rules, on_merge=pr.state == "merged"),
            HoldsLockGate(self._services.store),
            RequirementsGate(rules, context),
            self._policies.gate(repo, pr, author, rules, Trigger.COMMENT),
        ]
        request = self._request(repo, pr, author, checkout, items, Trigger.COMMENT)
        refusals = self._services.executor.refusals(request, gates)
        if refusals:
            lines = [str(refusal) for refusal in refusals]
            raise _Refused(
                "Not applied: " + (lines[0] if len(lines) == 1 else "see below"),
                details="\n".join(lines) if len(lines) > 1 else "",
            )
        return self._apply_and_report(repo, pr, author, request)

    def _selected_plans(
        self, repo: RepoRef, pr: PullRequestInfo, command: Command
    ) -> list[PlanRecord]:
        plans = self._services.store.runs.latest_plans(repo.key, pr.number)
        return [plan for plan in plans if command.selects(plan.project, plan.dir, plan.workspace)]

    def _items(
        self, plans: Sequence[PlanRecord], config: RepoConfig, pr_number: int
    ) -> list[ApplyItem]:
        missing = [plan.project for plan in plans if config.project(plan.project) is None]
        if missing:
            names = ", ".join(f"`{name}`" for name in missing)
            raise _Refused(f"Not applied: no such project in the configuration: {names}")
        return [self._item(plan, _project(config, plan), pr_number) for plan in plans]

    def _item(self, plan: PlanRecord, project: ProjectConfig, pr_number: int) -> ApplyItem:
        run = self._services.store.runs.get_run(plan.run_id)
        summary = run.summary if run and run.summary else PlanSummary()
        return ApplyItem(
            project=project,
            plan_path=Path(plan.path),
            plan_checksum=plan.checksum,
            commit=plan.commit_sha,
            summary=summary,
            holder=LockHolder(pr_number=pr_number),
            plan_id=plan.id,
            trusted=plan.trusted,
        )

    # ---- apply on merge -----------------------------------------------------------------

    def apply_on_merge(
        self, repo: RepoRef, pr: PullRequestInfo, merge_sha: str, author: str
    ) -> list[ApplyResult]:
        """Re-plan the merge commit per reviewed project; apply only what was reviewed."""
        try:
            return self._apply_on_merge(repo, pr, merge_sha, author)
        except _Refused as refused:
            self._needs_attention(repo, pr, author, merge_sha, refused.message, [refused.details])
            return []

    def _apply_on_merge(
        self, repo: RepoRef, pr: PullRequestInfo, merge_sha: str, author: str
    ) -> list[ApplyResult]:
        store = self._services.store
        if not self._applies_merges_into(repo, pr.base_ref):
            store.locks.release_all(repo.key, pr.number)
            return []
        reviewed = {
            plan.project: plan
            for plan in store.runs.latest_plans(repo.key, pr.number)
            if plan.changes and not self._already_applied(repo, pr, plan)
        }
        if not reviewed:
            store.locks.release_all(repo.key, pr.number)
            return []
        checkout = self._checkout(repo, pr, merge_sha)
        config = self._config(checkout, repo)
        rules = self._trusted_rules(repo, self._base_before(repo, merge_sha))
        on_merge = ModeGate(rules, on_merge=True)
        projects = [
            project
            for project in config.projects
            if (plan := reviewed.get(project.name)) is not None
            and project.key == (plan.dir, plan.workspace)
            and on_merge.allows(project)
        ]
        self._release_unapplied(repo, pr, reviewed, projects)
        if not projects:
            return []
        attention = self._unmet_at_merge(repo, pr, projects, reviewed, rules)
        to_plan = [project for project in projects if project.name not in attention]
        items = self._verified_merge_plans(
            repo, pr, checkout, to_plan, reviewed, merge_sha, author, attention
        )
        if attention:
            lines = [f"`{name}`: {why}" for name, why in attention.items()]
            message = (
                "Needs attention: not applied after merge. A new reviewed change is the "
                "way forward."
            )
            self._needs_attention(repo, pr, author, merge_sha, message, lines)
        items = self._policy_checked_at_merge(repo, pr, author, rules, reviewed, items)
        if not items:
            return []
        request = self._request(repo, pr, author, checkout, items, Trigger.MERGE)
        return self._apply_and_report(repo, pr, author, request)

    def _policy_checked_at_merge(
        self,
        repo: RepoRef,
        pr: PullRequestInfo,
        author: str,
        rules: TrustedRules,
        reviewed: dict[str, PlanRecord],
        items: list[ApplyItem],
    ) -> list[ApplyItem]:
        """The merge plans whose policies pass (kind `merge`), or were approved on the
        reviewed plan; the others need attention and are not applied."""
        gate = self._policies.gate(
            repo, pr, author, rules, Trigger.MERGE, {n: p.id for n, p in reviewed.items()}
        )
        kept: list[ApplyItem] = []
        for item in items:
            request = ApplyRequest(repo.key, Path(), (item,), Trigger.MERGE, author)
            why = gate.refusal(item, request)
            if why is None:
                kept.append(item)
            else:
                self._needs_attention(repo, pr, author, item.commit, why, [])
        return kept

    def _release_unapplied(
        self,
        repo: RepoRef,
        pr: PullRequestInfo,
        reviewed: dict[str, PlanRecord],
        projects: Sequence[ProjectConfig],
    ) -> None:
        """Reviewed projects a merge does not apply (`apply: comment`) free their locks:
        after the merge their plans are void, and nothing else would release them."""
        applied_on_merge = {project.name for project in projects}
        for name, plan in reviewed.items():
            if name not in applied_on_merge:
                self._services.store.locks.release(repo.key, plan.dir, plan.workspace, pr.number)

    def _applies_merges_into(self, repo: RepoRef, branch: str) -> bool:
        """Merges apply into the default branch and the branches the server names only."""
        return branch == repo.default_branch or branch in self._services.settings.apply_branches

    def _base_before(self, repo: RepoRef, merge_sha: str) -> str:
        try:
            return self._services.working_copies.first_parent(repo.clone_url, merge_sha)
        except WorkingCopyError as error:
            raise _Refused("Cannot read the base branch before the merge.", str(error)) from error

    def _unmet_at_merge(
        self,
        repo: RepoRef,
        pr: PullRequestInfo,
        projects: Sequence[ProjectConfig],
        reviewed: dict[str, PlanRecord],
        rules: TrustedRules,
    ) -> dict[str, str]:
        """Projects whose reviewed plan may not be applied, and why."""
        context = RequirementContext(self._feedback.forge, self._services.working_copies, repo, pr)
        gates: list[Gate] = [TrustedPlanGate(), RequirementsGate(rules, context)]
        unmet: dict[str, str] = {}
        for project in projects:
            item = self._item(reviewed[project.name], project, pr.number)
            request = ApplyRequest(repo.key, Path(), (item,), Trigger.MERGE, pr.author)
            reasons = [str(r.reason) for r in self._services.executor.refusals(request, gates)]
            if reasons:
                unmet[project.name] = "; ".join(reasons)
        return unmet

    def _verified_merge_plans(
        self,
        repo: RepoRef,
        pr: PullRequestInfo,
        checkout: Path,
        projects: list[ProjectConfig],
        reviewed: dict[str, PlanRecord],
        merge_sha: str,
        author: str,
        attention: dict[str, str],
    ) -> list[ApplyItem]:
        """Plan the merge commit; keep only plans equal to the reviewed ones as appliable."""
        store = self._services.store
        results = self._plan_merge(repo, pr, checkout, projects, merge_sha, author)
        fresh = {plan.project: plan for plan in store.runs.latest_plans(repo.key, pr.number)}
        items: list[ApplyItem] = []
        for project, result in zip(projects, results, strict=True):
            verdict = _compare(reviewed[project.name], result)
            plan = fresh.get(project.name)
            if verdict is not None:
                attention[project.name] = verdict
                if plan is not None and plan.commit_sha == merge_sha:
                    store.runs.discard_plan(plan.id)  # never appliable: nobody reviewed it
            elif result.status is PlanStatus.NO_CHANGES:
                store.locks.release(repo.key, project.dir, project.workspace, pr.number)
            elif plan is not None:
                items.append(self._item(plan, project, pr.number))
        return items

    def _plan_merge(
        self,
        repo: RepoRef,
        pr: PullRequestInfo,
        checkout: Path,
        projects: list[ProjectConfig],
        merge_sha: str,
        author: str,
    ) -> list[PlanResult]:
        services = self._services
        options = PlanOptions(
            secret_values=services.secret_values,
            guard=lambda project: services.mutex.hold(
                state_key(repo.key, project.dir, project.workspace)
            ),
        )
        request = PlanRequest(repo, pr, Trigger.MERGE, author)
        context = replace(step_context(request), head_commit=merge_sha)
        targets = [PlanTarget(p, "merged", context=context) for p in projects]
        results = services.planner.plan_all(checkout, targets, merge_sha, options)
        for result in results:
            record_plan_result(
                services.store,
                result,
                repo=repo.key,
                trigger=Trigger.MERGE,
                pr_number=pr.number,
                author=author,
            )
        return results

    def _already_applied(self, repo: RepoRef, pr: PullRequestInfo, plan: PlanRecord) -> bool:
        """A project applied by comment before the merge is not applied again."""
        runs = self._services.store.runs.list_runs(repo.key, pr.number, limit=200)
        applied = any(
            run.command == "apply"
            and run.project == plan.project
            and run.status is RunStatus.SUCCESS
            and run.commit_sha == plan.commit_sha
            for run in runs
        )
        if applied:
            self._services.store.locks.release(repo.key, plan.dir, plan.workspace, pr.number)
        return applied

    def _needs_attention(
        self,
        repo: RepoRef,
        pr: PullRequestInfo,
        author: str,
        merge_sha: str,
        message: str,
        lines: list[str],
    ) -> None:
        details = "\n".join(line for line in lines if line)
        self._feedback.comment(render_message("error", message=message, details=details))
        self._events.needs_attention(repo, pr, author, lines, merge_sha)

    # ---- shared ---------------------------------------------------------------------------

    def _request(
        self,
        repo: RepoRef,
        pr: PullRequestInfo,
        author: str,
        checkout: Path,
        items: Sequence[ApplyItem],
        trigger: Trigger,
    ) -> ApplyRequest:
        return ApplyRequest(
            repo_key=repo.key,
            tree=checkout,
            items=tuple(items),
            trigger=trigger,
            author=author,
            pr_number=pr.number,
        )

    def _apply_and_report(
        self, repo: RepoRef, pr: PullRequestInfo, author: str, request: ApplyRequest
    ) -> list[ApplyResult]:
        commit = request.items[0].commit
        self._feedback.status(commit, APPLY_CONTEXT, CommitState.PENDING, "applying")
        started = replace(
            request, started=lambda item: self._feedback.apply_started(commit, item.project.name)
        )
        results = list(self._services.executor.run(started).results)
        self._release_after_merge(repo, pr, results)
        # Check runs (GitHub App) or statuses per project, then the comment linking them.
        self._feedback.apply_results(commit, results)
        failed = [r for r in results if not r.status.applied]
        state = CommitState.FAILURE if failed else CommitState.SUCCESS
        self._feedback.status(
            commit, APPLY_CONTEXT, state, f"{len(results) - len(failed)}/{len(results)} applied"
        )
        self._events.applied(repo, pr, author, results, request.trigger)
        return results

    def _release_after_merge(
        self, repo: RepoRef, pr: PullRequestInfo, results: list[ApplyResult]
    ) -> None:
        """A merged PR's applied projects give up their locks."""
        if pr.state != "merged":
            return
        for result in results:
            if result.status.applied:
                self._services.store.locks.release(
                    repo.key, result.dir, result.workspace, pr.number
                )

    def _checkout(self, repo: RepoRef, pr: PullRequestInfo, commit: str) -> Path:
        return self._services.working_copies.checkout(
            repo.clone_url, worktree_key(pr.number), commit
        )

    def _config(self, checkout: Path, repo: RepoRef) -> RepoConfig:
        """The config of the plans' commit, under the server's rules (its workflows run)."""
        try:
            rules = server_rules(self._services.settings.repo_config, repo.key)
            return load_repo_config(checkout, rules=rules)
        except ConfigError as error:
            raise _Refused(f"The repository configuration is invalid: {error}") from error

    def _trusted_rules(self, repo: RepoRef, commit_or_branch: str) -> TrustedRules:
        try:
            return rules_at(self._services, repo, commit_or_branch)
        except (UntrustedConfig, WorkingCopyError) as error:
            raise _Refused(f"Not applied: {error}") from error


def _project(config: RepoConfig, plan: PlanRecord) -> ProjectConfig:
    project = config.project(plan.project)
    assert project is not None  # checked by _items
    return project


def _compare(reviewed: PlanRecord, merged: PlanResult) -> str | None:
    """None when the merge plan does exactly what was reviewed; else what differs."""
    if merged.status is PlanStatus.ERROR:
        first = (merged.error.splitlines() or ["see the log"])[0]
        return f"the merge commit failed to plan: {first}"
    if reviewed.content_hash and reviewed.content_hash == changes_content_hash(merged.changes):
        return None
    lines = content_differences(reviewed.changes, merged.changes)
    return "the plan of the merge commit differs from the reviewed plan: " + (
        "; ".join(lines) or "the reviewed plan predates value checks; plan it again"
    )
