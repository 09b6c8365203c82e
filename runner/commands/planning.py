"""Plan a pull request: autoplan on push, and `gitops plan` by comment.

checkout at the head commit → repo config → projects (changed, or named) →
locks → plan (one Terraform per state at a time) → records → comment + statuses →
the JSON plans read and recorded (only now can a plan be applied).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path

from runner.commands.feedback import PullRequestFeedback
from runner.commands.policy_review import PullRequestPolicies
from runner.commands.workflow_hooks import run_workflow_hooks
from runner.config.errors import ConfigError
from runner.config.loader import load_repo_config
from runner.config.model import RepoConfig
from runner.config.server_config import server_rules
from runner.engine.planner import PlanOptions, PlanTarget
from runner.engine.project_mutex import state_key
from runner.engine.recording import LiveRuns, record_plan_result, record_read_plan
from runner.engine.services import Services
from runner.engine.workflow_steps import StepContext
from runner.events.commands import Command
from runner.events.model import RepoRef
from runner.forge.base import PLAN_CONTEXT, CommitState, PullRequestInfo
from runner.projects.detection import ProjectSelectionError, affected_projects, select_projects
from runner.results.limits import OutputLimits
from runner.results.masking import Masker
from runner.results.model import PlanResult, PlanStatus
from runner.results.render import COMMAND_WORD, render_message
from runner.store.locks import LockOwner
from runner.store.runs import Trigger
from runner.terraform.modules import ModuleGraph


@dataclass(frozen=True)
class PlanRequest:
    """One plan of a PR: who asked, how, and for which commit."""

    repo: RepoRef
    pr: PullRequestInfo
    trigger: Trigger
    author: str
    command: Command | None = None  # None: autoplan of the changed projects
    # False when someone without write permission asked: such a plan is shown, never applied.
    trusted: bool = True


def worktree_key(number: int) -> str:
    return f"pr-{number}"


def step_context(request: PlanRequest) -> StepContext:
    """What custom workflow `run` steps and hooks are told about this plan (as env vars)."""
    comment_args = request.command.extra_args if request.command else ()
    return change_context(request.repo, request.pr, request.author, comment_args)


def change_context(
    repo: RepoRef, pr: PullRequestInfo, author: str, comment_args: tuple[str, ...] = ()
) -> StepContext:
    """What `run` steps and hooks are told about a PR's change, for whoever asked."""
    return StepContext(
        pull_num=pr.number,
        pull_url=pr.html_url,
        pull_author=pr.author,
        head_commit=pr.head_sha,
        base_repo=repo.full_name,
        head_repo=repo.full_name,
        head_branch=pr.head_ref,
        base_branch=pr.base_ref,
        user_name=author,
        comment_args=comment_args,
    )


class PullRequestPlanner:
    """Plans a PR's projects and reports on the PR."""

    def __init__(self, services: Services) -> None:
        self._services = services

    def run(self, request: PlanRequest, cancel: threading.Event) -> list[PlanResult]:
        services = self._services
        feedback = self.feedback(request.repo, request.pr.number)
        head = request.pr.head_sha
        checkout = services.working_copies.checkout(
            request.repo.clone_url, worktree_key(request.pr.number), head
        )
        context = step_context(request)
        try:
            rules = server_rules(services.settings.repo_config, request.repo.key)
        except ConfigError as error:
            self._report_config_error(feedback, head, error)
            return []
        # The server's pre_workflow_hooks run before the repo config is read (a hook may
        # write it); a failing hook stops the plan and is reported with its output.
        hooks = rules.pre_workflow_hooks
        if not run_workflow_hooks(
            services, feedback, "pre", hooks, checkout, context, "plan", cancel
        ):
            return []
        graph = ModuleGraph.build(checkout, services.settings.data_dir / "module-cache")
        try:
            config = load_repo_config(checkout, graph=graph, rules=rules)
        except ConfigError as error:
            self._report_config_error(feedback, head, error)
            return []
        try:
            targets = [
                replace(target, context=context) for target in self._targets(request, config, graph)
            ]
        except ProjectSelectionError as error:
            feedback.comment(render_message("error", message=str(error)))
            return []
        if not targets:
            self._report_nothing_to_plan(feedback, request)
            return []
        limit = services.settings.max_projects_per_pr
        if len(targets) > limit:
            self._report_too_many(feedback, head, len(targets), limit)
            return []
        feedback.status(head, PLAN_CONTEXT, CommitState.PENDING, "planning")
        services.store.runs.discard_plans(request.repo.key, request.pr.number, except_commit=head)
        feedback.plan_started(head, [target.project.name for target in targets])
        results, unread = self._plan_targets(request, checkout, targets, cancel)
        if cancel.is_set():
            feedback.plan_cancelled(head, [target.project.name for target in targets])
            return results  # a newer push superseded this plan: it will comment instead
        projects = {target.project.name: target.project for target in targets}
        policies = PullRequestPolicies(services, feedback).check_plans(
            request.repo, request.pr, request.author, results, projects
        )
        # Check runs (GitHub App) or statuses per project, then the comment linking them.
        feedback.plan_results(head, results, policies)
        results = self._read_plans(request, feedback, unread, results, cancel)
        hooks = rules.post_workflow_hooks
        run_workflow_hooks(services, feedback, "post", hooks, checkout, context, "plan", cancel)
        return results

    def feedback(self, repo: RepoRef, number: int) -> PullRequestFeedback:
        services = self._services
        return PullRequestFeedback(
            forge=services.forge_for(repo.forge),
            store=services.store,
            repo=repo,
            number=number,
            masker=Masker.from_secrets(services.secret_values),
            limits=OutputLimits.from_settings(services.settings),
        )

    def _targets(
        self, request: PlanRequest, config: RepoConfig, graph: ModuleGraph
    ) -> list[PlanTarget]:
        command = request.command
        extra = command.extra_args if command else ()
        if command and (command.project or command.dir or command.workspace):
            chosen = select_projects(config, command.project, command.dir, command.workspace)
            return [PlanTarget(p, f"requested by @{request.author}", extra) for p in chosen]
        changed = self._services.working_copies.changed_files(
            request.repo.clone_url, request.pr.base_sha, request.pr.head_sha
        )
        return [
            PlanTarget(item.project, item.reason, extra)
            for item in affected_projects(config, changed, graph)
        ]

    def _plan_targets(
        self,
        request: PlanRequest,
        checkout: Path,
        targets: list[PlanTarget],
        cancel: threading.Event,
    ) -> tuple[list[PlanResult], list[_UnreadPlan]]:
        """The results in the order of `targets`, and the plans whose JSON form is left to
        `_read_plans` (only without policy sets: policies read it before the comment)."""
        services = self._services
        locked: list[PlanTarget] = []
        conflicts: dict[str, PlanResult] = {}
        for target in targets:
            conflict = self._lock(request, target)
            if conflict is None:
                locked.append(target)
            else:
                conflicts[target.project.name] = conflict
        live = LiveRuns(
            services.store,
            repo=request.repo.key,
            trigger=request.trigger,
            commit=request.pr.head_sha,
            pr_number=request.pr.number,
            author=request.author,
        )
        options = PlanOptions(
            secret_values=services.secret_values,
            cancel=cancel,
            guard=lambda project: services.mutex.hold(
                state_key(request.repo.key, project.dir, project.workspace)
            ),
            log_opened=live.opened,
            read_plan_later=not services.policies.enabled,
        )
        planned = services.planner.plan_all(checkout, locked, request.pr.head_sha, options)
        by_name = {result.project: result for result in planned}
        unread: list[_UnreadPlan] = []
        for target, result in zip(locked, planned, strict=True):
            if cancel.is_set():
                continue
            run_id = record_plan_result(
                services.store,
                result,
                repo=request.repo.key,
                trigger=request.trigger,
                pr_number=request.pr.number,
                author=request.author,
                run_id=live.take(result),
                trusted=request.trusted,
            )
            if result.changes_pending:
                unread.append(_UnreadPlan(target, result, run_id))
        live.cancel_rest()
        results = [by_name.get(t.project.name) or conflicts[t.project.name] for t in targets]
        return results, unread

    def _read_plans(
        self,
        request: PlanRequest,
        feedback: PullRequestFeedback,
        unread: list[_UnreadPlan],
        results: list[PlanResult],
        cancel: threading.Event,
    ) -> list[PlanResult]:
        """Read the JSON plans the comment did not wait for, and record them: a plan can be
        applied from here on. The PR's jobs run one at a time, so no apply of this PR
        starts before this is done; a plan that cannot be read is reported and stays
        unappliable."""
        if not unread or cancel.is_set():
            return results
        services = self._services
        options = PlanOptions(secret_values=services.secret_values, cancel=cancel)
        read = services.planner.read_plans(
            [plan.target for plan in unread], [plan.result for plan in unread], options
        )
        for plan, result in zip(unread, read, strict=True):
            if not cancel.is_set():
                record_read_plan(services.store, plan.run_id, result, trusted=request.trusted)
        failed = [result for result in read if result.status is PlanStatus.ERROR]
        if failed and not cancel.is_set():
            feedback.comment(render_message("error", message=_unreadable(failed)))
        by_name = {result.project: result for result in read}
        return [by_name.get(result.project, result) for result in results]

    def _lock(self, request: PlanRequest, target: PlanTarget) -> PlanResult | None:
        """Take the project's lock for this PR; a PlanResult explaining the conflict if held."""
        project = target.project
        owner = LockOwner(
            pr_number=request.pr.number, pr_url=request.pr.html_url, user=request.pr.author
        )
        result = self._services.store.locks.acquire(
            request.repo.key, project.dir, project.workspace, owner
        )
        if result.acquired:
            return None
        holder = result.lock
        message = render_message(
            "lock_conflict",
            project=project.name,
            dir=project.dir,
            workspace=project.workspace,
            holder=f"#{holder.owner_pr}" if holder.owner_pr else "another run",
            holder_url=holder.owner_pr_url or "",
        )
        return PlanResult(
            project=project.name,
            dir=project.dir,
            workspace=project.workspace,
            status=PlanStatus.ERROR,
            reason=target.reason,
            error=f"{message.strip()}\n(locked since {holder.since:%Y-%m-%d %H:%M} UTC)",
            commit=request.pr.head_sha,
        )

    def _report_config_error(
        self, feedback: PullRequestFeedback, head: str, error: ConfigError
    ) -> None:
        feedback.comment(
            render_message(
                "error",
                message=f"The repository configuration is invalid: {error}",
                details=f"File `{error.file}`, line {error.line or '?'}: {error.reason}",
            )
        )
        feedback.status(head, PLAN_CONTEXT, CommitState.FAILURE, f"invalid {error.file}")

    def _report_too_many(
        self, feedback: PullRequestFeedback, head: str, count: int, limit: int
    ) -> None:
        """A change touching hundreds of states is refused rather than planned for hours."""
        feedback.comment(
            render_message(
                "error",
                message=f"Not planned: this change touches {count} projects, more than the "
                f"{limit} this server plans for one pull request (GITOPS_MAX_PROJECTS_PER_PR). "
                "Split the change, or plan projects one by one with `gitops plan -p PROJECT`.",
            )
        )
        feedback.status(head, PLAN_CONTEXT, CommitState.FAILURE, f"{count} projects: too many")

    def _report_nothing_to_plan(self, feedback: PullRequestFeedback, request: PlanRequest) -> None:
        """Say "no projects" once per PR (and every time it is asked for by comment)."""
        store = self._services.store
        said_before = store.comments.list(request.repo.key, request.pr.number, "no_projects")
        if request.command is not None or not said_before:
            feedback.comment(
                render_message("no_projects", command="plan"),
                kind="no_projects",
                commit=request.pr.head_sha,
            )
        feedback.status(
            request.pr.head_sha, PLAN_CONTEXT, CommitState.SUCCESS, "no Terraform project changed"
        )


@dataclass(frozen=True)
class _UnreadPlan:
    """A plan recorded before its JSON form was read (`PlanOptions.read_plan_later`)."""

    target: PlanTarget
    result: PlanResult
    run_id: int


def _unreadable(failed: list[PlanResult]) -> str:
    names = ", ".join(f"`{result.project}`" for result in failed)
    return (
        f"The plan of {names} was made but could not be read back, so it cannot be applied; "
        f"comment `{COMMAND_WORD} plan` to plan again.\n\n"
        + "\n".join(result.error for result in failed)
    )
