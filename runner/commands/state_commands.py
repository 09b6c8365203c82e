"""`gitops import ADDRESS ID` and `gitops state rm ADDRESS...` on a pull request.

Both change a project's state outside a reviewed plan, so they are off unless the
server enables them (`GITOPS_ENABLE_STATE_COMMANDS`), need write permission (checked
by `authorization.py` before this runs), meet the server's `import_requirements`
(GITOPS_REPO_CONFIG), name exactly one project, take the project's lock for this PR
and the state's mutex, and run the project's workflow stage (`import` / `state_rm`,
default: init then the command) at the PR's head. The PR's plan of that project was
made against the old state: it is discarded, and the reply asks for a new plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from runner.commands.apply_requirements import RequirementContext, unmet_requirements
from runner.commands.feedback import PullRequestFeedback
from runner.commands.planning import change_context, worktree_key
from runner.commands.workflow_hooks import run_workflow_hooks
from runner.config.errors import ConfigError
from runner.config.loader import load_repo_config
from runner.config.model import ProjectConfig
from runner.config.server_config import RepoRules, server_rules
from runner.config.workflows import StageName, Step, Workflow
from runner.engine.planner import plan_file_path
from runner.engine.project_mutex import MutexBusy, state_key
from runner.engine.services import Services
from runner.engine.workflow_steps import StageRunner, StepContext, workspace_var_file_args
from runner.events.commands import Command
from runner.events.model import RepoRef
from runner.forge.base import PullRequestInfo
from runner.projects.detection import ProjectSelectionError, select_projects
from runner.results.limits import cap_output
from runner.results.render import render_message, render_state_command
from runner.store.locks import LockOwner
from runner.store.runs import RunStatus, Trigger
from runner.terraform import workspace_env
from runner.terraform.result import CommandOutcome

# Runs the default stage: init, then the command (never a shell step).
_DEFAULT_WORKFLOW = Workflow(name="default", source="server", shell_allowed=False)


class _Refused(Exception):
    """Nothing was run; the message tells the PR why."""


class _HookFailed(Exception):
    """A pre_workflow_hook failed; its comment was posted already."""


@dataclass(frozen=True)
class StateCommandResult:
    """What an import or state rm did to one project, for the reply."""

    project: ProjectConfig
    command: str  # "import" / "state rm"
    ok: bool
    output: str
    plans_discarded: int


class StateCommands:
    """Runs `gitops import` and `gitops state rm` for one PR and replies on it."""

    def __init__(self, services: Services, feedback: PullRequestFeedback) -> None:
        self._services = services
        self._feedback = feedback

    def run(self, repo: RepoRef, pr: PullRequestInfo, author: str, command: Command) -> bool:
        """Run the command; True when Terraform succeeded. Every refusal is a comment."""
        try:
            result = self._run(repo, pr, author, command)
        except _Refused as refused:
            self._feedback.comment(render_message("error", message=str(refused)))
            return False
        except _HookFailed:
            return False
        project = result.project
        self._feedback.comment(
            render_state_command(
                command=result.command,
                project=project.name,
                dir=project.dir,
                workspace=project.workspace,
                ok=result.ok,
                output=result.output,
                plans_discarded=result.plans_discarded,
                masker=self._feedback.masker,
            )
        )
        return result.ok

    def _run(
        self, repo: RepoRef, pr: PullRequestInfo, author: str, command: Command
    ) -> StateCommandResult:
        services = self._services
        shown = "state rm" if command.name == "state_rm" else command.name
        if not services.settings.enable_state_commands:
            raise _Refused(
                f"`gitops {shown}` is off on this server (GITOPS_ENABLE_STATE_COMMANDS)."
            )
        if pr.state != "open":
            raise _Refused("The pull request is closed.")
        rules = self._rules(repo)
        unmet = unmet_requirements(
            rules.import_requirements,
            RequirementContext(self._feedback.forge, services.working_copies, repo, pr),
        )
        if unmet:
            raise _Refused(f"Not run: {'; '.join(unmet)} (import_requirements).")
        checkout = services.working_copies.checkout(
            repo.clone_url, worktree_key(pr.number), pr.head_sha
        )
        context = change_context(repo, pr, author)
        if not self._hooks("pre", rules.pre_workflow_hooks, checkout, context, command):
            raise _HookFailed()
        try:
            config = load_repo_config(checkout, rules=rules)
            chosen = select_projects(config, command.project, command.dir, command.workspace)
        except (ConfigError, ProjectSelectionError) as error:
            raise _Refused(f"Not run: {error}") from error
        if len(chosen) != 1:
            names = ", ".join(f"`{p.name}`" for p in chosen)
            raise _Refused(f"`gitops {shown}` needs exactly one project (-p NAME); found {names}.")
        project = chosen[0]
        self._lock(repo, pr, project)
        outcome = self._terraform(repo, pr, author, command, project, checkout, context)
        self._hooks("post", rules.post_workflow_hooks, checkout, context, command)
        discarded = self._discard_plans(repo, pr, project)
        output = cap_output(
            outcome.stdout + ("\n" + outcome.stderr if not outcome.ok else ""),
            services.settings.max_output_bytes,
            "",
        )
        return StateCommandResult(project, shown, outcome.ok, output, discarded)

    def _rules(self, repo: RepoRef) -> RepoRules:
        try:
            return server_rules(self._services.settings.repo_config, repo.key)
        except ConfigError as error:
            raise _Refused(f"Not run: the server's repo config is invalid: {error}") from error

    def _lock(self, repo: RepoRef, pr: PullRequestInfo, project: ProjectConfig) -> None:
        owner = LockOwner(pr_number=pr.number, pr_url=pr.html_url, user=pr.author)
        lock = self._services.store.locks.acquire(repo.key, project.dir, project.workspace, owner)
        if not lock.acquired:
            holder = f"#{lock.lock.owner_pr}" if lock.lock.owner_pr else "another run"
            raise _Refused(f"Not run: `{project.name}` is locked by {holder}.")

    def _terraform(
        self,
        repo: RepoRef,
        pr: PullRequestInfo,
        author: str,
        command: Command,
        project: ProjectConfig,
        checkout: Path,
        context: StepContext,
    ) -> CommandOutcome:
        """The workflow stage under the state's mutex, recorded as a run."""
        services = self._services
        runs = services.store.runs
        stage: StageName = "import" if command.name == "import" else "state_rm"
        run_id = runs.start(
            repo=repo.key,
            project=project.name,
            dir=project.dir,
            workspace=project.workspace,
            command=stage,
            trigger=Trigger.COMMENT,
            pr_number=pr.number,
            commit_sha=pr.head_sha,
            author=author,
        )
        log_path = services.settings.logs_dir / f"{stage}-{run_id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with services.mutex.hold(
                state_key(repo.key, project.dir, project.workspace), wait=False
            ):
                outcome = self._stage(command, project, checkout, context, stage, log_path)
        except MutexBusy:
            runs.finish(run_id, RunStatus.FAILED, error="busy", log_path=str(log_path))
            raise _Refused(
                f"Not run: another Terraform run holds `{project.name}`'s state; try again."
            ) from None
        status = RunStatus.SUCCESS if outcome.ok else RunStatus.FAILED
        error = None if outcome.ok else (outcome.stderr_tail() or f"exit {outcome.exit_code}")
        runs.finish(run_id, status, error=error, log_path=str(log_path))
        return outcome

    def _stage(
        self,
        command: Command,
        project: ProjectConfig,
        checkout: Path,
        context: StepContext,
        stage: StageName,
        log_path: Path,
    ) -> CommandOutcome:
        workdir = checkout / project.dir
        terraform = self._services.terraform_for(project.terraform_version)
        plan_path = plan_file_path(checkout, project)
        runner = StageRunner(terraform, workdir, project, plan_path, context, log_path)
        env = workspace_env(project.workspace)

        def main(step: Step, stage_env: Mapping[str, str]) -> CommandOutcome:
            if command.name == "import":
                address, resource_id = command.args
                return terraform.import_resource(
                    workdir,
                    address,
                    resource_id,
                    runner.log,
                    extra_args=(
                        *workspace_var_file_args(workdir, project.workspace),
                        *step.extra_args,
                    ),
                    env=env | dict(stage_env),
                )
            return terraform.state_rm(
                workdir,
                command.args,
                runner.log,
                extra_args=step.extra_args,
                env=env | dict(stage_env),
            )

        staged = runner.outcome(project.resolved_workflow or _DEFAULT_WORKFLOW, stage, main)
        if isinstance(staged, str):
            return CommandOutcome((stage,), 1, "", staged, 0.0)
        return staged

    def _hooks(
        self,
        when: Literal["pre", "post"],
        hooks: Sequence[Step],
        checkout: Path,
        context: StepContext,
        command: Command,
    ) -> bool:
        feedback = self._feedback
        return run_workflow_hooks(
            self._services, feedback, when, hooks, checkout, context, command.name
        )

    def _discard_plans(self, repo: RepoRef, pr: PullRequestInfo, project: ProjectConfig) -> int:
        """The PR's plans of this project were made against the state before: void."""
        runs = self._services.store.runs
        return sum(
            runs.discard_plan(plan.id)
            for plan in runs.latest_plans(repo.key, pr.number)
            if (plan.dir, plan.workspace) == project.key
        )
