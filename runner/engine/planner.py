"""Plan a set of projects in one checkout, in parallel, and turn each into a PlanResult.

This is where one project's plan is put together: init, workspace, plan, and
(when there are changes) `show -json` for counts and sensitive values. The CLI,
the pull-request flow and drift detection all plan through here, so a plan looks
the same wherever it was made.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from runner.config.model import ProjectConfig
from runner.config.workflows import Step
from runner.engine.progress import Phase, ProgressEvent, ProgressObserver, planned_event
from runner.engine.scheduling import PlanAdmission
from runner.engine.workflow_steps import StageRunner, StepContext, workspace_var_file_args
from runner.observability.log_context import carry_context, log_context
from runner.policies.plans import PlanDocuments
from runner.results.limits import OutputLimits, cap_output
from runner.results.masking import Masker
from runner.results.model import PlanResult, PlanStatus, PlanSummary
from runner.results.summary import summarize_plan, summary_from_output
from runner.settings import Settings
from runner.store.plan_files import LocalPlanStore, PlanStore, PlanStoreError
from runner.terraform import (
    InitCache,
    StepTimeouts,
    Terraform,
    TerraformError,
    locate_terraform,
    workspace_env,
)
from runner.terraform.environment import cpu_share, go_runtime_env
from runner.terraform.planfile import plan_checksum
from runner.terraform.result import CommandOutcome

_log = logging.getLogger(__name__)

# Terraform's -detailed-exitcode: 0 = no changes, 2 = changes, anything else = error.
EXIT_NO_CHANGES = 0
EXIT_CHANGES = 2


@dataclass(frozen=True)
class PlanTarget:
    """One project to plan, with why it was chosen and any user-supplied plan flags."""

    project: ProjectConfig
    reason: str = ""
    extra_args: tuple[str, ...] = ()
    # What a custom workflow's `run` steps are told about the change (workflow_steps.py).
    context: StepContext = field(default_factory=StepContext)


@dataclass(frozen=True)
class PlanOptions:
    """How plans are made; drift scans plan with `lock=False`."""

    lock: bool = True
    secret_values: tuple[str, ...] = ()
    cancel: threading.Event = field(default_factory=threading.Event, compare=False)
    # Held around each project's Terraform steps: one process per state at a time.
    guard: Callable[[ProjectConfig], AbstractContextManager[object]] | None = None
    # Told when each project is queued, starts init and plan, and is planned (the CLI).
    progress: ProgressObserver | None = field(default=None, compare=False)
    # Told each project's log file before its Terraform starts, so a run record can
    # point at it while it is written (the dashboard streams it live).
    log_opened: Callable[[ProjectConfig, str], None] | None = field(default=None, compare=False)
    # Leave `show -json` to `Planner.read_plans` when Terraform's printed counts can be
    # read: the PR flow comments first and reads the JSON plans after (docs/terraform.md).
    read_plan_later: bool = False

    def tell(self, project: ProjectConfig, phase: Phase) -> None:
        """Report a project entering `phase` to the observer, if there is one."""
        if self.progress is not None:
            self.progress(ProgressEvent(project.name, project.workspace, phase))


def plan_file_path(checkout: Path, project: ProjectConfig) -> Path:
    """Where the plan of a project lives: in its own directory, beside `.terraform`."""
    return checkout / project.dir / f"gitops-{project.workspace}.tfplan"


class Planner:
    """Plans projects with a bounded pool; Terraform is chosen per project version."""

    def __init__(
        self,
        terraform_for: Callable[[str | None], Terraform],
        log_dir: Path,
        parallelism: int,
        limits: OutputLimits | None = None,
        documents: PlanDocuments | None = None,
        plan_store: PlanStore | None = None,
    ) -> None:
        self._terraform_for = terraform_for
        # Where plans with changes and plan logs go for other workers (store/plan_files.py).
        self._plan_store = plan_store or LocalPlanStore()
        self._log_dir = log_dir
        self._parallelism = max(1, parallelism)
        # One plan per core while they compute, up to `parallelism` while they wait.
        self._admission = PlanAdmission(self._parallelism)
        self._limits = limits or OutputLimits()
        # Where JSON plans are kept for policy checks (by plan checksum); None: not kept.
        self._documents = documents

    def plan_all(
        self,
        checkout: Path,
        targets: Sequence[PlanTarget],
        commit: str | None = None,
        options: PlanOptions | None = None,
    ) -> list[PlanResult]:
        """Plan every target; results come back in the order of `targets`.

        Workspaces of one directory share its `.terraform`, so they take turns; different
        directories plan in parallel.
        """
        options = options or PlanOptions()
        by_dir: dict[str, list[tuple[int, PlanTarget]]] = {}
        for index, target in enumerate(targets):
            by_dir.setdefault(target.project.dir, []).append((index, target))
            options.tell(target.project, Phase.QUEUED)

        def plan_dir(group: list[tuple[int, PlanTarget]]) -> list[tuple[int, PlanResult]]:
            return [
                (index, self.plan(checkout, target, commit, options)) for index, target in group
            ]

        workers = min(self._parallelism, len(by_dir)) or 1
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="plan")
        with self._cpu_share(workers), pool:
            # The pool's threads log with the ids of the job that asked for the plans.
            planned = pool.map(carry_context(plan_dir), by_dir.values())
            results = dict(pair for pairs in planned for pair in pairs)
        return [results[index] for index in range(len(targets))]

    def plan(
        self,
        checkout: Path,
        target: PlanTarget,
        commit: str | None = None,
        options: PlanOptions | None = None,
    ) -> PlanResult:
        """Plan one project. Terraform failures become ERROR results, never exceptions."""
        options = options or PlanOptions()
        guard = options.guard(target.project) if options.guard else nullcontext()
        started = time.monotonic()
        # The state mutex first: a plan waiting for another's state takes no CPU slot.
        with log_context(project=target.project.name), guard, self._admission.slot():
            result = self._plan_unguarded(checkout, target, commit, options)
        result = self._keep(result)
        if options.progress is not None:
            options.progress(planned_event(result))
        # The whole project (init, workspace, plan, show), as run records report it.
        return replace(result, duration_s=time.monotonic() - started)

    def _plan_unguarded(
        self, checkout: Path, target: PlanTarget, commit: str | None, options: PlanOptions
    ) -> PlanResult:
        project = target.project
        workdir = checkout / project.dir
        terraform = self._terraform_for(project.terraform_version)
        log_path = self._log_path(project, commit)
        if options.log_opened is not None:
            options.log_opened(project, str(log_path))
        base = _ResultBase(target, commit, str(log_path), self._limits)

        if not workdir.is_dir():
            return base.error(f"project directory {project.dir!r} does not exist at this commit")
        options.tell(project, Phase.INIT)
        plan_path = plan_file_path(checkout, project)
        if project.resolved_workflow is not None:
            staged = self._plan_stage(terraform, workdir, target, plan_path, log_path, options)
            if isinstance(staged, str):
                return base.error(staged)
            outcome = staged
        else:
            for step in (
                lambda: terraform.init(workdir, log=log_path, cancel=options.cancel),
                lambda: terraform.select_workspace(
                    workdir, project.workspace, log=log_path, cancel=options.cancel
                ),
            ):
                step_outcome = step()
                if step_outcome is not None and not step_outcome.ok:
                    return base.failed(step_outcome, Masker.from_secrets(options.secret_values))

            outcome = _terraform_plan(terraform, workdir, target, plan_path, log_path, options)
        if outcome.exit_code == EXIT_NO_CHANGES and outcome.ok:
            masker = Masker.from_secrets(options.secret_values)
            return base.planned(PlanStatus.NO_CHANGES, outcome, masker, plan_path)
        if outcome.exit_code != EXIT_CHANGES or outcome.timed_out or outcome.cancelled:
            return base.failed(outcome, Masker.from_secrets(options.secret_values))

        masker = Masker.from_secrets(options.secret_values)
        # A custom workflow's `run` steps print whatever the PR's scripts print: its
        # counts come from the JSON plan, before the comment.
        later = options.read_plan_later and project.resolved_workflow is None
        printed = summary_from_output(outcome.stdout) if later else None
        if printed is not None:
            planned = base.planned(PlanStatus.CHANGES, outcome, masker, plan_path, printed)
            return replace(planned, changes_pending=True)
        try:
            plan_json = terraform.show_json(workdir, plan_path, cancel=options.cancel)
        except TerraformError as error:
            return base.failed(error.outcome, masker)
        masker = Masker.from_plan(plan_json, options.secret_values)
        planned = base.planned(PlanStatus.CHANGES, outcome, masker, plan_path)
        return self._with_plan_json(planned, plan_json, target)

    def read_plans(
        self,
        targets: Sequence[PlanTarget],
        results: Sequence[PlanResult],
        options: PlanOptions | None = None,
    ) -> list[PlanResult]:
        """Read the JSON plan of each result still `changes_pending` (the others come back
        as they are), in parallel like plans; `targets[i]` is what `results[i]` planned."""
        options = options or PlanOptions()

        def read(pair: tuple[PlanTarget, PlanResult]) -> PlanResult:
            target, result = pair
            if not result.changes_pending or options.cancel.is_set():
                return result
            with log_context(project=target.project.name), self._admission.slot():
                return self._read_later(target, result, options)

        pending = sum(1 for result in results if result.changes_pending)
        workers = min(self._parallelism, pending) or 1
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="plan-json")
        with self._cpu_share(workers), pool:
            return list(pool.map(carry_context(read), zip(targets, results, strict=True)))

    def _cpu_share(self, workers: int) -> AbstractContextManager[None]:
        """Each Terraform of a batch gets the cores it would get from the admission: one
        each while as many plans as cores compute; all of them for a plan alone."""
        return cpu_share(min(workers, self._admission.floor), self._admission.cores)

    def _read_later(
        self, target: PlanTarget, result: PlanResult, options: PlanOptions
    ) -> PlanResult:
        terraform = self._terraform_for(target.project.terraform_version)
        plan_path = Path(result.plan_path or "")
        try:
            plan_json = terraform.show_json(plan_path.parent, plan_path, cancel=options.cancel)
        except TerraformError as error:
            why = error.outcome.stderr_tail() or f"exit code {error.outcome.exit_code}"
            return _unappliable(result, f"its JSON form could not be read: {why}")
        masked = Masker.from_plan(plan_json, options.secret_values).mask(result.output)
        if masked != result.output:
            # Terraform prints `(sensitive value)` itself; this is the second line of defence
            # the comment posted before did not have.
            _log.error(
                "the plan output of %s held a value its JSON plan marks as sensitive; "
                "it is masked from here on, but the comment already posted shows it",
                target.project.name,
            )
        return self._with_plan_json(replace(result, output=masked), plan_json, target)

    def _with_plan_json(
        self, result: PlanResult, plan_json: Mapping[str, Any], target: PlanTarget
    ) -> PlanResult:
        """The result completed from its JSON plan: counts, changes, drift; kept for
        policy checks when policy sets are configured."""
        digest = summarize_plan(plan_json)
        if self._documents is not None and result.plan_checksum:
            self._documents.save(result.plan_checksum, plan_json, target.extra_args)
        return replace(
            result,
            summary=digest.summary,
            changes=digest.changes,
            drift=digest.drift,
            changes_pending=False,
        )

    def _plan_stage(
        self,
        terraform: Terraform,
        workdir: Path,
        target: PlanTarget,
        plan_path: Path,
        log_path: Path,
        options: PlanOptions,
    ) -> CommandOutcome | str:
        """The plan stage of the project's custom workflow; a str: why it was refused."""
        project = target.project
        assert project.resolved_workflow is not None
        runner = StageRunner(
            terraform, workdir, project, plan_path, target.context, log_path, options.cancel
        )

        def plan(step: Step, env: Mapping[str, str]) -> CommandOutcome:
            return _terraform_plan(
                terraform, workdir, target, plan_path, log_path, options, step.extra_args, env
            )

        return runner.outcome(project.resolved_workflow, "plan", plan)

    def _keep(self, result: PlanResult) -> PlanResult:
        """Hand a plan with changes, and the log, to the plan store, so another worker can
        apply it; a plan that cannot be stored is an error, never a plan nobody can apply."""
        if result.log_path:
            self._plan_store.keep_log(Path(result.log_path))
        if result.status is not PlanStatus.CHANGES or not result.plan_checksum:
            return result
        try:
            self._plan_store.keep_plan(Path(result.plan_path or ""), result.plan_checksum)
        except (PlanStoreError, OSError) as error:
            return _unappliable(result, f"could not be kept in the plan store: {error}")
        return result

    def _log_path(self, project: ProjectConfig, commit: str | None) -> Path:
        safe_dir = project.dir.strip("/").replace("/", "__") or "root"
        name = f"{safe_dir}--{project.workspace}--{(commit or 'worktree')[:12]}.log"
        self._log_dir.mkdir(parents=True, exist_ok=True)
        return self._log_dir / name


@dataclass(frozen=True)
class _ResultBase:
    """The fields every PlanResult of one target shares, whatever the outcome."""

    target: PlanTarget
    commit: str | None
    log_path: str
    limits: OutputLimits

    def _output(self, outcome: CommandOutcome, masker: Masker) -> str:
        """Terraform's output, masked, capped; the full masked text stays in the log."""
        where = self.limits.log_location()
        return cap_output(masker.mask(outcome.stdout), self.limits.max_output_bytes, where)

    def _result(self, status: PlanStatus, **fields: object) -> PlanResult:
        project = self.target.project
        return PlanResult(
            project=project.name,
            dir=project.dir,
            workspace=project.workspace,
            status=status,
            reason=self.target.reason,
            commit=self.commit,
            log_path=self.log_path,
            **fields,  # type: ignore[arg-type]
        )

    def error(self, message: str) -> PlanResult:
        return self._result(PlanStatus.ERROR, error=message)

    def failed(self, outcome: CommandOutcome, masker: Masker) -> PlanResult:
        if outcome.timed_out:
            headline = f"`terraform {_subcommand(outcome.argv)}` timed out"
        elif outcome.cancelled:
            headline = "cancelled"
        else:
            headline = f"Terraform exited with code {outcome.exit_code}"
        return self._result(
            PlanStatus.ERROR,
            output=self._output(outcome, masker),
            error=masker.mask(f"{headline}\n{outcome.stderr_tail()}".strip()),
            duration_s=outcome.duration_s,
        )

    def planned(
        self,
        status: PlanStatus,
        outcome: CommandOutcome,
        masker: Masker,
        plan_path: Path,
        summary: PlanSummary | None = None,
    ) -> PlanResult:
        fields: dict[str, object] = {
            "output": self._output(outcome, masker),
            "plan_path": str(plan_path),
            "plan_checksum": plan_checksum(plan_path),
            "duration_s": outcome.duration_s,
        }
        if summary is not None:
            fields["summary"] = summary
        return self._result(status, **fields)


def _unappliable(result: PlanResult, why: str) -> PlanResult:
    """A plan that was made but must never be applied: an error naming `why`."""
    return replace(
        result,
        status=PlanStatus.ERROR,
        error=f"the plan was made but {why}",
        plan_path=None,
        plan_checksum=None,
        changes_pending=False,
    )


_SUBCOMMANDS = frozenset({"init", "workspace", "plan", "show", "apply"})


def _subcommand(argv: Sequence[str]) -> str:
    """The Terraform step in an argv whose prefix may be a binary or `python -m ...`."""
    return next((arg for arg in argv if arg in _SUBCOMMANDS), "terraform")


def _terraform_plan(
    terraform: Terraform,
    workdir: Path,
    target: PlanTarget,
    plan_path: Path,
    log_path: Path,
    options: PlanOptions,
    step_args: Sequence[str] = (),
    step_env: Mapping[str, str] | None = None,
) -> CommandOutcome:
    """`terraform plan -out` of one project: the workspace's var file, a workflow step's
    extra args and env (none outside a custom workflow), then the command's own args."""
    project = target.project
    options.tell(project, Phase.PLAN)
    return terraform.plan(
        workdir,
        out=plan_path,
        extra_args=(
            *workspace_var_file_args(workdir, project.workspace),
            *step_args,
            *target.extra_args,
        ),
        lock=options.lock,
        log=log_path,
        env=workspace_env(project.workspace) | dict(step_env or {}),
        cancel=options.cancel,
    )


def build_terraform_factory(settings: Settings) -> Callable[[str | None], Terraform]:
    """Terraform per requested `terraform_version`, built once and reused.

    Every Terraform the server runs comes from here: this is where its environment
    allowlist and the masking of its logs are configured.
    """
    terraforms: dict[str | None, Terraform] = {}
    lock = threading.Lock()
    timeouts = StepTimeouts(plan=settings.terraform_timeout, apply=settings.terraform_timeout)
    mask = Masker.from_secrets(settings.secret_values()).mask
    init_cache = build_init_cache(settings)
    # Every plan of a full pool, plus this runner, shares the machine's memory.
    runtime_env = go_runtime_env(settings.terraform_gogc, settings.parallelism + 1)

    def terraform_for(version: str | None) -> Terraform:
        with lock:
            if version not in terraforms:
                terraforms[version] = Terraform(
                    locate_terraform(settings.terraform_bin, version),
                    settings.plugin_cache_dir,
                    settings.data_dir,
                    timeouts=timeouts,
                    env_passthrough=settings.terraform_env_passthrough,
                    mask=mask,
                    init_cache=init_cache,
                    runtime_env=runtime_env,
                )
            return terraforms[version]

    return terraform_for


def build_init_cache(settings: Settings) -> InitCache | None:
    """Initialised `.terraform` directories shared by every worktree; None when turned off."""
    if settings.init_cache_hours <= 0:
        return None
    return InitCache(
        settings.init_cache_dir,
        settings.plugin_cache_dir,
        max_age_s=settings.init_cache_hours * 3600,
    )


def build_planner(
    settings: Settings,
    parallelism: int | None = None,
    terraform_for: Callable[[str | None], Terraform] | None = None,
    plan_store: PlanStore | None = None,
) -> Planner:
    """The Planner for these settings."""
    return Planner(
        terraform_for or build_terraform_factory(settings),
        settings.logs_dir,
        parallelism or settings.parallelism,
        OutputLimits.from_settings(settings),
        # JSON plans are kept for policy checks only: without sets, no write per plan.
        kept_plan_documents(settings) if settings.policy_sets else None,
        plan_store,
    )


def kept_plan_documents(settings: Settings) -> PlanDocuments:
    """The kept JSON plans, pruned after the settings' retention."""
    return PlanDocuments(plan_documents_dir(settings), settings.plan_json_retention_days)


def plan_documents_dir(settings: Settings) -> Path:
    """Where JSON plans are kept for policy checks: the data directory, not the checkout."""
    return settings.data_dir / "plan-json"
