"""Apply a pull request's reviewed plans: by `gitops apply`, and on merge.

Nothing unreviewed is ever applied: a comment apply uses the saved plan made at
the PR's current head (checksum verified); a merge apply re-plans the merge commit
and applies only when its changes equal those of the PR's last plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from runner.commands.apply_requirements import RequirementContext, unmet_requirements
from runner.commands.feedback import APPLY_CONTEXT, PullRequestFeedback
from runner.commands.model import Command
from runner.commands.planning import project_mutex_key, worktree_key
from runner.commands.services import Services
from runner.config.errors import ConfigError
from runner.config.loader import load_repo_config
from runner.config.model import ProjectConfig, RepoConfig
from runner.engine.execution_order import apply_order
from runner.engine.planner import PlanOptions, PlanTarget
from runner.engine.project_mutex import MutexBusy
from runner.engine.recording import record_plan_result
from runner.events.model import RepoRef
from runner.forge.base import CommitState, PullRequestInfo
from runner.notify.events import ApplyEvents
from runner.results.model import ApplyResult, ApplyStatus, PlanResult, PlanStatus, PlanSummary
from runner.results.render import render_apply_comment, render_message
from runner.results.summary import normalized_changes_hash
from runner.store.runs import PlanRecord, RunStatus, Trigger
from runner.terraform import workspace_env


@dataclass(frozen=True)
class ApplyCandidate:
    """A saved plan and the project config it belongs to."""

    plan: PlanRecord
    project: ProjectConfig
    summary: PlanSummary


class PullRequestApplier:
    """Applies a PR's plans and reports on the PR."""

    def __init__(self, services: Services, feedback: PullRequestFeedback) -> None:
        self._services = services
        self._feedback = feedback
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
        forge = self._feedback.forge
        if forge.permission(repo, author) not in ("admin", "write"):
            return self._refuse(f"@{author} needs write permission on the repository to apply.")
        if pr.state == "closed":
            return self._refuse("This pull request is closed without merging: nothing to apply.")
        plans = self._selected_plans(repo, pr, command)
        if not plans:
            return self._refuse(
                "There is no plan to apply for this selection. Comment `gitops plan` first."
            )
        checkout = self._services.working_copies.checkout(
            repo.clone_url, worktree_key(pr.number), plans[0].commit_sha
        )
        config = self._config(checkout)
        if config is None:
            return []
        candidates, problems = self._candidates(plans, config, pr)
        context = RequirementContext(forge, self._services.working_copies, repo, pr)
        for candidate in candidates:
            for reason in unmet_requirements(candidate.project.apply_requirements, context):
                problems.append(f"`{candidate.project.name}`: {reason}")
        if problems:
            return self._refuse(
                "Not applied: " + ("; ".join(problems) if len(problems) == 1 else "see below"),
                details="\n".join(problems) if len(problems) > 1 else "",
            )
        return self._apply_and_report(repo, pr, author, checkout, candidates, Trigger.COMMENT)

    def _selected_plans(
        self, repo: RepoRef, pr: PullRequestInfo, command: Command
    ) -> list[PlanRecord]:
        plans = self._services.store.runs.latest_plans(repo.key, pr.number)
        return [
            plan
            for plan in plans
            if (command.project is None or plan.project == command.project)
            and (command.dir is None or plan.dir == command.dir)
            and (command.workspace is None or plan.workspace == command.workspace)
        ]

    def _candidates(
        self, plans: Sequence[PlanRecord], config: RepoConfig, pr: PullRequestInfo
    ) -> tuple[list[ApplyCandidate], list[str]]:
        candidates: list[ApplyCandidate] = []
        problems: list[str] = []
        store = self._services.store
        for plan in plans:
            project = config.project(plan.project)
            if project is None:
                problems.append(f"`{plan.project}`: no such project in the configuration")
            elif pr.state == "open" and plan.commit_sha != pr.head_sha:
                problems.append(
                    f"`{plan.project}`: the plan is stale (made at `{plan.commit_sha[:7]}`, the "
                    f"head is `{pr.head_sha[:7]}`); comment `gitops plan` again"
                )
            elif not plan.file_matches():
                problems.append(
                    f"`{plan.project}`: the saved plan file is missing or was modified; "
                    "comment `gitops plan` again"
                )
            elif not self._holds_lock(plan, pr):
                problems.append(f"`{plan.project}`: this pull request does not hold its lock")
            else:
                run = store.runs.get_run(plan.run_id)
                summary = run.summary if run and run.summary else PlanSummary()
                candidates.append(ApplyCandidate(plan, project, summary))
        return candidates, problems

    def _holds_lock(self, plan: PlanRecord, pr: PullRequestInfo) -> bool:
        lock = self._services.store.locks.get(plan.repo, plan.dir, plan.workspace)
        return lock is not None and lock.owner_pr == pr.number

    # ---- apply on merge -----------------------------------------------------------------

    def apply_on_merge(
        self, repo: RepoRef, pr: PullRequestInfo, merge_sha: str, author: str
    ) -> list[ApplyResult]:
        """Re-plan the merge commit per planned project; apply only what was reviewed."""
        services = self._services
        reviewed = {
            plan.project: plan
            for plan in services.store.runs.latest_plans(repo.key, pr.number)
            if plan.changes and not self._already_applied(repo, pr, plan)
        }
        if not reviewed:
            self._release_all(repo, pr)
            return []
        checkout = services.working_copies.checkout(
            repo.clone_url, worktree_key(pr.number), merge_sha
        )
        config = self._config(checkout)
        if config is None:
            return []
        projects = [
            p for p in config.projects if p.name in reviewed and p.apply in ("on_merge", "both")
        ]
        if not projects:
            return []
        merge_plans = self._plan_merge(repo, pr, checkout, projects, merge_sha, author)
        candidates: list[ApplyCandidate] = []
        attention: list[str] = []
        for project, result in zip(projects, merge_plans, strict=True):
            verdict = self._compare(reviewed[project.name], result)
            if verdict is not None:
                attention.append(f"`{project.name}`: {verdict}")
            elif result.status is PlanStatus.NO_CHANGES:
                services.store.locks.release(repo.key, project.dir, project.workspace, pr.number)
            else:
                plan = services.store.runs.latest_plans(repo.key, pr.number)
                record = next(p for p in plan if p.project == project.name)
                candidates.append(ApplyCandidate(record, project, result.summary))
        if attention:
            self._feedback.comment(
                render_message(
                    "error",
                    message="Needs attention: not applied after merge, because the plan of the "
                    "merge commit differs from the reviewed plan.",
                    details="\n".join(attention),
                )
            )
            self._events.needs_attention(repo, pr, author, attention, merge_sha)
        if not candidates:
            return []
        return self._apply_and_report(repo, pr, author, checkout, candidates, Trigger.MERGE)

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
            guard=lambda project: services.mutex.hold(project_mutex_key(repo, project)),
        )
        targets = [PlanTarget(p, "merged") for p in projects]
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

    @staticmethod
    def _compare(reviewed: PlanRecord, merged: PlanResult) -> str | None:
        """None when the merge plan does what was reviewed; else what differs."""
        if merged.status is PlanStatus.ERROR:
            return f"the merge commit failed to plan: {merged.error.splitlines()[0:1]}"
        if normalized_changes_hash(reviewed.changes) == normalized_changes_hash(merged.changes):
            return None
        before = {(c.address, c.actions) for c in reviewed.changes}
        after = {(c.address, c.actions) for c in merged.changes}
        lines = [f"+ {a} {'/'.join(x)}" for a, x in sorted(after - before)]
        lines += [f"- {a} {'/'.join(x)}" for a, x in sorted(before - after)]
        return "changes differ from the reviewed plan (+ only after merge, - only reviewed): " + (
            "; ".join(lines) or "same resources, different details"
        )

    # ---- shared ---------------------------------------------------------------------------

    def _apply_and_report(
        self,
        repo: RepoRef,
        pr: PullRequestInfo,
        author: str,
        checkout: Path,
        candidates: list[ApplyCandidate],
        trigger: Trigger,
    ) -> list[ApplyResult]:
        commit = candidates[0].plan.commit_sha
        self._feedback.status(commit, APPLY_CONTEXT, CommitState.PENDING, "applying")
        by_name = {c.project.name: c for c in candidates}
        results: list[ApplyResult] = []
        failed: set[str] = set()
        for project in apply_order([c.project for c in candidates]):
            candidate = by_name[project.name]
            blocked = [d for d in project.depends_on if d in failed]
            if blocked:
                result = _failed(candidate, f"not applied: depends on {', '.join(blocked)}")
            else:
                result = self._apply_one(repo, pr, author, checkout, candidate, trigger)
            if result.status is ApplyStatus.FAILED:
                failed.add(project.name)
            results.append(result)
        self._after_apply(repo, pr, candidates, results)
        self._feedback.apply_statuses(commit, results)
        self._feedback.comment(
            render_apply_comment(results, commit=commit, masker=self._feedback.masker),
            kind="apply",
            commit=commit,
        )
        state = CommitState.FAILURE if failed else CommitState.SUCCESS
        self._feedback.status(
            commit, APPLY_CONTEXT, state, f"{len(results) - len(failed)}/{len(results)} applied"
        )
        self._events.applied(repo, pr, author, results, trigger)
        return results

    def _apply_one(
        self,
        repo: RepoRef,
        pr: PullRequestInfo,
        author: str,
        checkout: Path,
        candidate: ApplyCandidate,
        trigger: Trigger,
    ) -> ApplyResult:
        services = self._services
        project = candidate.project
        try:
            with services.mutex.hold(project_mutex_key(repo, project), wait=False):
                run_id = services.store.runs.start(
                    repo=repo.key,
                    project=project.name,
                    dir=project.dir,
                    workspace=project.workspace,
                    command="apply",
                    trigger=trigger,
                    pr_number=pr.number,
                    commit_sha=candidate.plan.commit_sha,
                    author=author,
                )
                terraform = services.terraform_for(project.terraform_version)
                log_path = services.settings.logs_dir / f"apply-{run_id}.log"
                outcome = terraform.apply(
                    checkout / project.dir,
                    Path(candidate.plan.path),
                    log=log_path,
                    env=workspace_env(project.workspace),
                )
        except MutexBusy:
            return _failed(candidate, "already running: another Terraform run holds this state")
        masker = self._feedback.masker
        if outcome.ok:
            services.store.runs.finish(
                run_id, RunStatus.SUCCESS, candidate.summary, log_path=str(log_path)
            )
            return ApplyResult(
                project=project.name,
                dir=project.dir,
                workspace=project.workspace,
                status=ApplyStatus.APPLIED,
                summary=candidate.summary,
                output=masker.mask(outcome.stdout),
                commit=candidate.plan.commit_sha,
                log_path=str(log_path),
                duration_s=outcome.duration_s,
                run_id=run_id,
            )
        error = masker.mask(outcome.stderr_tail()) or f"exit code {outcome.exit_code}"
        services.store.runs.finish(run_id, RunStatus.FAILED, error=error, log_path=str(log_path))
        failed = _failed(candidate, error, output=masker.mask(outcome.stdout))
        return replace(failed, run_id=run_id)

    def _after_apply(
        self,
        repo: RepoRef,
        pr: PullRequestInfo,
        candidates: list[ApplyCandidate],
        results: list[ApplyResult],
    ) -> None:
        """An applied plan is spent; a merged PR's applied projects also give up their locks."""
        applied = {r.project for r in results if r.status is ApplyStatus.APPLIED}
        for candidate in candidates:
            if candidate.project.name in applied:
                self._services.store.runs.discard_plan(candidate.plan.id)
        if pr.state != "merged":
            return
        for candidate in candidates:
            if candidate.project.name in applied:
                project = candidate.project
                self._services.store.locks.release(
                    repo.key, project.dir, project.workspace, pr.number
                )

    def _release_all(self, repo: RepoRef, pr: PullRequestInfo) -> None:
        self._services.store.locks.release_all(repo.key, pr.number)

    def _config(self, checkout: Path) -> RepoConfig | None:
        try:
            return load_repo_config(checkout)
        except ConfigError as error:
            self._refuse(f"The repository configuration is invalid: {error}")
            return None

    def _refuse(self, message: str, details: str = "") -> list[ApplyResult]:
        self._feedback.comment(render_message("error", message=message, details=details))
        return []


def _failed(candidate: ApplyCandidate, error: str, output: str = "") -> ApplyResult:
    project = candidate.project
    return ApplyResult(
        project=project.name,
        dir=project.dir,
        workspace=project.workspace,
        status=ApplyStatus.FAILED,
        summary=candidate.summary,
        output=output,
        error=error,
        commit=candidate.plan.commit_sha,
    )
