"""The one guarded path to `terraform apply`, whatever asked for it.

A comment, a merge, a reconcile pass and a drift auto-correction choose what to apply
in their own ways (`commands/applying.py`, `reconcile/reconciler.py`,
`drift/service.py`); from here on they are one path:

    every gate, for every project   → any refusal: nothing is applied, each reason named
    dependency order (apply_order)  → a project whose dependency failed is blocked
    the state's mutex               → another Terraform run on the state: busy
    the project lock                → still held by whoever planned
    the saved plan                  → not applied before, the file's checksum unchanged
    a run record, then Terraform    → recorded as running, with this process as owner
    masked output, finished record  → the plan is spent: applied at most once

A condition that may refuse an apply (requirements, apply mode, who planned, later
policies) is one `Gate` passed in by the trigger, not a fourth copy of this file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from runner.config.model import ProjectConfig
from runner.engine.execution_order import apply_order
from runner.engine.planner import plan_file_path
from runner.engine.project_mutex import MutexBusy, ProjectMutex, state_key
from runner.engine.workflow_steps import StageRunner, apply_with_workflow, context_of_request
from runner.observability.log_context import log_context
from runner.results.limits import OutputLimits, cap_output
from runner.results.masking import Masker
from runner.results.model import ApplyResult, ApplyStatus, PlanSummary
from runner.store.locks import LockInfo
from runner.store.owners import process_owner_prefix
from runner.store.plan_files import (
    LocalPlanStore,
    PlanFileMismatch,
    PlanNotStored,
    PlanStore,
    PlanStoreError,
)
from runner.store.runs import RunStatus, Trigger
from runner.store.store import Store
from runner.terraform import Terraform, workspace_env
from runner.terraform.planfile import plan_checksum
from runner.terraform.result import CommandOutcome

log = logging.getLogger(__name__)

_PLAN_FILE_GONE = "the saved plan file is missing or was modified since it was made; plan again"

TerraformFor = Callable[[str | None], Terraform]


@dataclass(frozen=True)
class LockHolder:
    """Who must still hold the project lock when the apply starts: a PR or a run."""

    pr_number: int | None = None
    run_id: int | None = None

    def holds(self, lock: LockInfo | None) -> bool:
        if lock is None:
            return False
        if self.pr_number is not None:
            return lock.owner_pr == self.pr_number
        return lock.owner_pr is None and lock.run_id == self.run_id

    def describe(self) -> str:
        return f"pull request #{self.pr_number}" if self.pr_number else f"run {self.run_id}"


@dataclass(frozen=True)
class ApplyItem:
    """One project's saved plan, on its way through the gates."""

    project: ProjectConfig
    plan_path: Path
    plan_checksum: str
    commit: str
    summary: PlanSummary
    holder: LockHolder
    plan_id: int | None = None  # the stored plan, spent once applied
    trusted: bool = True  # False: planned at the request of someone without write permission


@dataclass(frozen=True)
class ApplyRequest:
    """A batch of applies: one repository, one checkout, one trigger, one person."""

    repo_key: str
    tree: Path
    items: tuple[ApplyItem, ...]
    trigger: Trigger
    author: str
    pr_number: int | None = None
    # Wait for another run of the state to end (reconcile), or answer "busy" at once.
    wait_for_state: bool = False
    # What became of projects outside this batch (failed, busy): their dependents wait.
    settled: Mapping[str, ApplyStatus] = field(default_factory=dict)
    # Told each project whose Terraform is about to apply (every check passed): a GitHub
    # check run goes `in_progress` then, not when the batch was merely asked for.
    started: Callable[[ApplyItem], None] | None = field(default=None, compare=False)


class Gate(Protocol):
    """One condition an apply must meet, checked for every project before any applies."""

    def refusal(self, item: ApplyItem, request: ApplyRequest) -> str | None:
        """Why this project must not be applied now; None when it may."""
        ...


@dataclass(frozen=True)
class Refusal:
    project: str
    reason: str

    def __str__(self) -> str:
        return f"`{self.project}`: {self.reason}"


@dataclass(frozen=True)
class ApplyBatch:
    """What became of a request: refused as a whole, or one result per project."""

    results: tuple[ApplyResult, ...] = ()
    refusals: tuple[Refusal, ...] = ()

    @property
    def refused(self) -> bool:
        return bool(self.refusals)


class ApplyExecutor:
    """Applies saved plans with every guard, for every trigger (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        terraform_for: TerraformFor,
        mutex: ProjectMutex,
        logs_dir: Path,
        masker: Masker,
        limits: OutputLimits | None = None,
        plan_store: PlanStore | None = None,
    ) -> None:
        self._store = store
        # Plans made on another worker are fetched from here (store/plan_files.py).
        self._plan_store = plan_store or LocalPlanStore()
        self._terraform_for = terraform_for
        self._mutex = mutex
        self._logs_dir = logs_dir
        self._masker = masker
        self._limits = limits or OutputLimits()

    def run(self, request: ApplyRequest, gates: Sequence[Gate] = ()) -> ApplyBatch:
        """Check every gate for every project; apply all in order only if none refuses."""
        refusals = self.refusals(request, gates)
        if refusals:
            return ApplyBatch(refusals=tuple(refusals))
        return ApplyBatch(results=tuple(self._apply_in_order(request)))

    @staticmethod
    def refusals(request: ApplyRequest, gates: Sequence[Gate]) -> list[Refusal]:
        return [
            Refusal(item.project.name, reason)
            for item in request.items
            for gate in gates
            if (reason := gate.refusal(item, request))
        ]

    def _apply_in_order(self, request: ApplyRequest) -> list[ApplyResult]:
        settled = dict(request.settled)
        by_name = {item.project.name: item for item in request.items}
        results: list[ApplyResult] = []
        for project in apply_order([item.project for item in request.items]):
            result = self._apply_after_dependencies(request, by_name[project.name], settled)
            settled[project.name] = result.status
            results.append(result)
        return results

    def _apply_after_dependencies(
        self, request: ApplyRequest, item: ApplyItem, settled: Mapping[str, ApplyStatus]
    ) -> ApplyResult:
        depends_on = item.project.depends_on
        unsettled = (ApplyStatus.FAILED, ApplyStatus.BLOCKED)
        if failed := [name for name in depends_on if settled.get(name) in unsettled]:
            why = f"not applied: depends on {', '.join(failed)}, which failed"
            return not_applied(item, ApplyStatus.BLOCKED, why)
        if busy := [name for name in depends_on if settled.get(name) is ApplyStatus.BUSY]:
            why = f"not applied yet: depends on {', '.join(busy)}, which is busy"
            return not_applied(item, ApplyStatus.BUSY, why)
        return self._apply_one(request, item)

    def _apply_one(self, request: ApplyRequest, item: ApplyItem) -> ApplyResult:
        project = item.project
        key = state_key(request.repo_key, project.dir, project.workspace)
        try:
            with self._mutex.hold(key, wait=request.wait_for_state):
                return self._apply_holding_state(request, item)
        except MutexBusy:
            why = "already running: another Terraform run holds this state"
            return not_applied(item, ApplyStatus.BUSY, why)

    def _apply_holding_state(self, request: ApplyRequest, item: ApplyItem) -> ApplyResult:
        problem = self._stale(request, item)
        if not problem:
            item, problem = self._with_plan_file(request, item)
        if problem:
            return not_applied(item, ApplyStatus.FAILED, problem)
        project = item.project
        run_id = self._store.runs.start(
            repo=request.repo_key,
            project=project.name,
            dir=project.dir,
            workspace=project.workspace,
            command="apply",
            trigger=request.trigger,
            pr_number=request.pr_number,
            commit_sha=item.commit,
            author=request.author,
            owner=process_owner_prefix(),
        )
        self._logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._logs_dir / f"apply-{run_id}.log"
        # Recorded before Terraform starts: the dashboard follows the apply as it runs.
        self._store.runs.set_log_path(run_id, str(log_path))
        # Every line logged during the apply names the run (JSON logs: a field).
        with log_context(run=run_id, project=project.name, pr=request.pr_number):
            try:
                if request.started is not None:
                    request.started(item)
                outcome = self._terraform_apply(request, item, log_path)
            except BaseException as error:  # the run must not read "running" forever
                detail = self._masker.mask(f"{type(error).__name__}: {error}")
                self._store.runs.finish(
                    run_id, RunStatus.ERRORED, error=detail, log_path=str(log_path)
                )
                raise
            return self._finish(item, run_id, log_path, outcome)

    def _terraform_apply(
        self, request: ApplyRequest, item: ApplyItem, log_path: Path
    ) -> CommandOutcome:
        """`terraform apply PLANFILE`, or the apply stage of the project's custom workflow."""
        project = item.project
        terraform = self._terraform_for(project.terraform_version)
        workdir = request.tree / project.dir
        workflow = project.resolved_workflow
        if workflow is None:
            return terraform.apply(
                workdir, item.plan_path, log=log_path, env=workspace_env(project.workspace)
            )
        context = context_of_request(
            request.repo_key, request.pr_number, request.author, item.commit
        )
        runner = StageRunner(terraform, workdir, project, item.plan_path, context, log_path)
        return apply_with_workflow(runner, workflow)

    def _stale(self, request: ApplyRequest, item: ApplyItem) -> str:
        """Checked under the state's mutex, so nothing can change between check and apply."""
        project = item.project
        lock = self._store.locks.get(request.repo_key, project.dir, project.workspace)
        if not item.holder.holds(lock):
            return f"the project lock is no longer held by {item.holder.describe()}"
        if item.plan_id is not None:
            stored = self._store.runs.get_plan(item.plan_id)
            if stored is None or stored.discarded_at is not None:
                return "this plan was already applied or discarded; plan again"
        return ""

    def _with_plan_file(self, request: ApplyRequest, item: ApplyItem) -> tuple[ApplyItem, str]:
        """The item with the reviewed plan file byte for byte, and "" or why there is none.

        The file where it was made, if that is on this machine and unchanged; otherwise
        fetched from the plan store into this checkout, verified against the checksum
        recorded at plan time before Terraform can read it, and the checkout initialised.
        """
        path = item.plan_path
        if path.is_file() and plan_checksum(path) == item.plan_checksum:
            return item, ""
        destination = plan_file_path(request.tree, item.project)
        try:
            self._plan_store.fetch_plan(item.plan_checksum, destination)
        except PlanFileMismatch:
            return item, (
                "the plan file in the plan store does not match the checksum recorded when "
                "it was planned (modified or corrupted); refused: plan again"
            )
        except PlanNotStored:
            return item, _PLAN_FILE_GONE
        except PlanStoreError as error:
            return item, f"the plan store cannot be read ({error}); try again"
        # This checkout never planned: providers and modules are installed first.
        init = self._terraform_for(item.project.terraform_version).init(
            request.tree / item.project.dir
        )
        if not init.ok:
            why = self._masker.mask(init.stderr_tail()) or f"exit code {init.exit_code}"
            return item, f"terraform init before applying the fetched plan failed: {why}"
        return replace(item, plan_path=destination), ""

    def _finish(
        self, item: ApplyItem, run_id: int, log_path: Path, outcome: CommandOutcome
    ) -> ApplyResult:
        runs = self._store.runs
        limits = self._limits
        self._plan_store.keep_log(log_path)  # the API serves it from any machine
        output = cap_output(
            self._masker.mask(outcome.stdout),
            limits.max_output_bytes,
            limits.log_location(run_id),
        )
        if outcome.ok:
            runs.finish(run_id, RunStatus.SUCCESS, item.summary, log_path=str(log_path))
            if item.plan_id is not None:
                runs.discard_plan(item.plan_id)  # a saved plan is applied at most once
            status, error = ApplyStatus.APPLIED, ""
        else:
            error = self._masker.mask(outcome.stderr_tail()) or f"exit code {outcome.exit_code}"
            runs.finish(run_id, RunStatus.FAILED, error=error, log_path=str(log_path))
            status = ApplyStatus.FAILED
        return _result(
            item,
            status,
            error=error,
            output=output,
            log_path=str(log_path),
            duration_s=outcome.duration_s,
            run_id=run_id,
        )


def not_applied(item: ApplyItem, status: ApplyStatus, why: str) -> ApplyResult:
    """The result of a project that never reached Terraform."""
    return _result(item, status, error=why)


def _result(item: ApplyItem, status: ApplyStatus, **fields: Any) -> ApplyResult:
    project = item.project
    return ApplyResult(
        project=project.name,
        dir=project.dir,
        workspace=project.workspace,
        status=status,
        summary=item.summary,
        commit=item.commit,
        **fields,
    )
