"""Pull-mode reconcile: the default branch is fetched on an interval and applied.

No webhooks: a new commit on the default branch plans the projects it changed since
the last reconciled commit (every project on the first run) and applies exactly the
plans just made, in dependency order, with the PR flow's safeguards:

    fetch, resolve the head        → nothing new and nothing to retry: done
    check out (tree "reconcile")   → repo config → projects changed since the bookmark
    project locks (no PR owner)    → a project locked by an open PR is "busy"
    plan under the per-state mutex → run records (trigger "reconcile")
    apply the plan file (checksum) → in apply_order; dependents of a failure blocked
    release locks, save bookmark   → Slack message, `gitops/apply` commit status

The bookmark (`runner/store/reconcile.py`) is what keeps a restart from applying the
same commit again. Busy projects are retried on the next poll; failed ones wait for
a new commit (a broken apply is not retried every minute). Several server processes
may each run a `Reconciler`: only the holder of the `reconciler` lease polls.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from filelock import FileLock

from runner.config.errors import ConfigError
from runner.config.loader import load_repo_config
from runner.config.model import ProjectConfig, RepoConfig
from runner.config.server_config import server_rules
from runner.drift.scan import (
    DEFAULT_BRANCHES,
    DriftRepo,
    ForgeFor,
    no_default_branch,
    repo_forge,
)
from runner.engine.apply import ApplyItem, ApplyRequest, LockHolder, not_applied
from runner.engine.planner import PlanOptions, PlanTarget
from runner.engine.policy_gate import PolicyGate
from runner.engine.progress import Phase, ProgressEvent
from runner.engine.project_mutex import state_key
from runner.engine.recording import record_plan_result
from runner.engine.services import Services
from runner.forge.base import APPLY_CONTEXT, CommitState
from runner.notify.base import Delivery, Notifier
from runner.notify.events import RunLinks
from runner.policies.input import RunContext
from runner.projects.detection import affected_projects
from runner.reconcile.model import (
    FAILURES,
    PollTarget,
    ProjectOutcome,
    ProjectStatus,
    ReconcileReport,
)
from runner.reconcile.reports import describe, needs_message, reconcile_message
from runner.reconcile.targets import configured_targets, target_for
from runner.results.masking import Masker
from runner.results.model import ApplyResult, ApplyStatus, PlanResult, PlanStatus, PlanSummary
from runner.results.policy import PolicyKind
from runner.store.leases import LeaseStore
from runner.store.locks import LockInfo, LockOwner
from runner.store.models import utcnow
from runner.store.reconcile import ReconcileState, ReconcileStateStore
from runner.store.runs import RunStatus, Trigger
from runner.terraform.modules import ModuleGraph
from runner.workspace.snapshot import snapshot_directory
from runner.workspace.working_copy import WorkingCopyError

log = logging.getLogger(__name__)


LEASE_NAME = "reconciler"
TREE_KEY = "reconcile"
RECONCILE_USER = "gitops-runner reconcile"
DEFAULT_LEASE_TTL = timedelta(minutes=10)
_REPO_LOCK = "reconcile.lock"
_MIN_SLEEP_S = 1.0


@dataclass(frozen=True)
class _Pass:
    """One pass over one head: what to do, and the bookmark it started from."""

    target: PollTarget
    branch: str
    head: str
    state: ReconcileState | None
    retry: bool  # same head as last time: only the projects that were busy

    @property
    def repo(self) -> DriftRepo:
        return self.target.repo

    @property
    def base(self) -> str | None:
        return self.state.reconciled_sha if self.state else None


class Reconciler:
    """Polls repositories and applies what changed on their default branch."""

    def __init__(
        self,
        services: Services,
        *,
        targets: Sequence[PollTarget] | None = None,
        notifier: Notifier | None = None,
        forge_for: ForgeFor | None = None,
        owner: str | None = None,
        lease_ttl: timedelta = DEFAULT_LEASE_TTL,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """`targets` replaces the settings' `repos:` (the CLI's `--repo`)."""
        self.services = services
        self.settings = services.settings
        self.states = ReconcileStateStore(services.store)
        self.notifier = notifier or services.notifier
        self.owner = owner or f"reconciler-{uuid.uuid4().hex[:12]}"
        self.last_delivery: Delivery | None = None
        self._targets = list(targets) if targets is not None else None
        self._forge_for = forge_for or repo_forge(services.forge_for)
        self._leases = LeaseStore(services.store)
        self._ttl = lease_ttl
        self._clock = clock
        self._due: dict[str, datetime] = {}
        self._last_error: dict[str, str] = {}
        self._masker = Masker.from_secrets(services.secret_values)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the API the CLI and the server call ------------------------------------------

    def targets(self) -> list[PollTarget]:
        """What is polled: the given targets, else the server config's `repos:`."""
        if self._targets is not None:
            return list(self._targets)
        return configured_targets(self.settings)

    def resolve(self, repo: str | DriftRepo | PollTarget) -> PollTarget:
        if isinstance(repo, PollTarget):
            return repo
        if isinstance(repo, DriftRepo):
            return PollTarget(repo)
        return target_for(repo, self.settings)

    def reconcile_once(self, repo: str | DriftRepo | PollTarget) -> ReconcileReport:
        """Poll one repository now; apply what changed; report (Slack, commit status)."""
        target = self.resolve(repo)
        started = self._clock()
        notes: list[str] = []
        try:
            if target.snapshot_of is not None:
                snapshot = snapshot_directory(target.snapshot_of, self.settings.data_dir)
                notes.append(snapshot.describe())
            report = self._reconcile(target, started)
        except Exception as error:  # one broken repository must not stop the loop
            log.exception("reconcile of %s failed", target.name)
            report = ReconcileReport(
                repo=target.repo.key,
                name=target.name,
                started_at=started,
                finished_at=self._clock(),
                branch=target.repo.branch,
                error=_one_line(error),
            )
        report = replace(report, notes=(*notes, *report.notes))
        self._announce(target, report)
        return report

    def tick(self, now: datetime | None = None) -> list[ReconcileReport]:
        """Poll every repository that is due, if this process holds the lease."""
        now = now or self._clock()
        if not self._leases.acquire(LEASE_NAME, self.owner, self._ttl, now):
            return []
        reports = []
        for target in self.targets():
            key = target.repo.url
            if self._due.get(key, now) > now:
                continue
            self._due[key] = now + timedelta(seconds=target.interval_s)
            reports.append(self.reconcile_once(target))
            # A long pass must not let the lease lapse before the next repository.
            self._leases.acquire(LEASE_NAME, self.owner, self._ttl)
        return reports

    def run_forever(
        self,
        stop_event: threading.Event,
        *,
        on_report: Callable[[ReconcileReport], None] | None = None,
    ) -> None:
        """Tick until `stop_event` is set; gives the lease up on the way out."""
        try:
            while not stop_event.is_set():
                try:
                    reports = self.tick()
                except Exception:  # the store being away for a moment must not end the loop
                    log.exception("reconcile tick failed")
                    reports = []
                for report in reports:
                    if on_report is not None:
                        on_report(report)
                stop_event.wait(self._sleep_s())
        finally:
            self._leases.release(LEASE_NAME, self.owner)

    def start(self) -> None:
        """`run_forever` in a daemon thread, for a server process; `stop()` ends it."""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run_forever, args=(self._stop,), name="reconciler", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling after the current pass (bounded wait) and give the lease up."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    # --- one pass -------------------------------------------------------------------------

    def _reconcile(self, target: PollTarget, started: datetime) -> ReconcileReport:
        repo = target.repo
        with self._repo_lock(repo):
            branch, head = self._head(repo)
            state = self.states.get(repo.key, branch)
            current = _Pass(target, branch, head, state, retry=_same_head(state, head))
            if current.retry and state is not None and not state.retry:
                return self._report(current, started, up_to_date=True)
            tree = self.services.working_copies.checkout(repo.url, TREE_KEY, head)
            graph = ModuleGraph.build(tree, self.settings.data_dir / "module-cache")
            try:
                # The server's repo config (GITOPS_REPO_CONFIG) governs workflows here too.
                rules = server_rules(self.settings.repo_config, repo.key)
                config = load_repo_config(tree, graph=graph, rules=rules)
            except ConfigError as error:
                message = f"invalid repository configuration: {error}"
                self._save(current, [], failed_detail=message)
                report = self._report(current, started, error=message)
                return replace(report, config_invalid=True)
            chosen, notes = self._choose(current, config, graph)
            if chosen and not current.retry:  # a retry every poll must not post every poll
                self._status(current, CommitState.PENDING, f"applying {len(chosen)} project(s)")
            outcomes = self._run(current, tree, chosen)
            self._save(current, outcomes)
            return self._report(current, started, outcomes, notes=notes)

    def _head(self, repo: DriftRepo) -> tuple[str, str]:
        """(branch, sha) of the default branch head, fetched now."""
        errors: list[str] = []
        for branch in (repo.branch,) if repo.branch else DEFAULT_BRANCHES:
            try:
                return branch, self.services.working_copies.resolve(repo.url, branch)
            except WorkingCopyError as error:  # the next candidate may exist
                errors.append(str(error))
        raise LookupError(no_default_branch(repo, errors))

    @contextmanager
    def _repo_lock(self, repo: DriftRepo) -> Iterator[None]:
        """Passes over one repository queue here (the loop and a `--once` on one host)."""
        directory = self.services.working_copies.repo_dir(repo.url)
        directory.mkdir(parents=True, exist_ok=True)
        with FileLock(str(directory / _REPO_LOCK)):
            yield

    def _choose(
        self, current: _Pass, config: RepoConfig, graph: ModuleGraph
    ) -> tuple[list[PlanTarget], list[str]]:
        """The projects of this pass: busy ones again, the changed ones, or all of them."""
        if current.retry and current.state is not None:
            wanted = set(current.state.retry)
            return [
                PlanTarget(p, "retry: was busy") for p in config.projects if p.name in wanted
            ], []
        if current.base is None:
            return [PlanTarget(p, "first reconcile") for p in config.projects], []
        try:
            changed = self.services.working_copies.changed_files(
                current.repo.url, current.base, current.head
            )
        except WorkingCopyError as error:
            note = f"change detection failed, reconciling every project: {error}"
            return [PlanTarget(p, "change detection failed") for p in config.projects], [note]
        by_name = {p.name: p for p in config.projects}
        affected = affected_projects(_every_project_autoplanned(config), changed, graph)
        return [PlanTarget(by_name[a.project.name], a.reason) for a in affected], []

    def _run(self, current: _Pass, tree: Path, chosen: list[PlanTarget]) -> list[ProjectOutcome]:
        """Lock, plan, apply, unlock; one outcome per chosen project, in the same order."""
        outcomes: dict[str, ProjectOutcome] = {}
        held: list[tuple[PlanTarget, int]] = []
        try:
            for target in chosen:
                if target.project.apply == "comment":
                    outcomes[target.project.name] = _outcome(
                        target, ProjectStatus.SKIPPED, "apply: comment (applied from a PR only)"
                    )
                    continue
                busy, run_id = self._lock(current, target.project)
                if busy:
                    outcomes[target.project.name] = _outcome(target, ProjectStatus.BUSY, busy)
                else:
                    assert run_id is not None
                    held.append((target, run_id))
            plans = self._plan(current, tree, held)
            outcomes |= self._apply_all(current, tree, held, plans, outcomes)
        finally:
            for target, run_id in held:
                self._unlock(current, target.project, run_id)
        return [outcomes[t.project.name] for t in chosen]

    def _lock(self, current: _Pass, project: ProjectConfig) -> tuple[str, int | None]:
        """Take the project lock for a new plan run: ("", run id), or (why busy, None)."""
        store, key = self.services.store, current.repo.key
        holder = store.locks.get(key, project.dir, project.workspace)
        if holder is not None:
            return _busy_reason(holder), None
        run_id = store.runs.start(
            repo=key,
            project=project.name,
            dir=project.dir,
            workspace=project.workspace,
            command="plan",
            trigger=Trigger.RECONCILE,
            commit_sha=current.head,
            author=RECONCILE_USER,
        )
        owner = LockOwner(pr_number=None, user=RECONCILE_USER, run_id=run_id)
        taken = store.locks.acquire(key, project.dir, project.workspace, owner)
        if not taken.acquired:
            why = _busy_reason(taken.lock)
            store.runs.finish(run_id, RunStatus.CANCELLED, error=why)
            return why, None
        return "", run_id

    def _unlock(self, current: _Pass, project: ProjectConfig, run_id: int) -> None:
        """Release the lock only if it is still ours (someone may have force-unlocked it)."""
        locks = self.services.store.locks
        holder = locks.get(current.repo.key, project.dir, project.workspace)
        if holder is not None and holder.owner_pr is None and holder.run_id == run_id:
            locks.release(current.repo.key, project.dir, project.workspace)

    def _plan(
        self, current: _Pass, tree: Path, held: list[tuple[PlanTarget, int]]
    ) -> dict[str, PlanResult]:
        services = self.services
        run_ids = {target.project.name: run_id for target, run_id in held}
        options = PlanOptions(
            secret_values=services.secret_values,
            progress=services.progress,
            guard=lambda project: self._plan_guard(current, tree, project),
            # The runs exist already: point them at their logs (followed on the dashboard).
            log_opened=lambda project, log: services.store.runs.set_log_path(
                run_ids[project.name], log
            ),
        )
        targets = [target for target, _ in held]
        results = services.planner.plan_all(tree, targets, current.head, options)
        for (_, run_id), result in zip(held, results, strict=True):
            record_plan_result(
                services.store,
                result,
                repo=current.repo.key,
                trigger=Trigger.RECONCILE,
                author=RECONCILE_USER,
                run_id=run_id,
            )
        return {result.project: result for result in results}

    @contextmanager
    def _plan_guard(self, current: _Pass, tree: Path, project: ProjectConfig) -> Iterator[None]:
        """The per-state mutex (workspaces of one directory take turns in the planner)."""
        key = state_key(current.repo.key, project.dir, project.workspace)
        with self.services.mutex.hold(key):
            yield

    def _apply_all(
        self,
        current: _Pass,
        tree: Path,
        held: list[tuple[PlanTarget, int]],
        plans: dict[str, PlanResult],
        outcomes: dict[str, ProjectOutcome],
    ) -> dict[str, ProjectOutcome]:
        """Apply the plans with changes through the one apply path (engine/apply.py)."""
        done: dict[str, ProjectOutcome] = {}
        settled = {name: _SETTLED[o.status] for name, o in outcomes.items() if o.status in _SETTLED}
        items: list[ApplyItem] = []
        by_name: dict[str, tuple[PlanTarget, int]] = {}
        for target, run_id in held:
            name, plan = target.project.name, plans[target.project.name]
            if plan.status is PlanStatus.ERROR:
                detail = f"plan failed: {plan.error or 'see the log'}"
                done[name] = _outcome(target, ProjectStatus.FAILED, detail, plan, run_id)
                settled[name] = ApplyStatus.FAILED
            elif plan.status is PlanStatus.NO_CHANGES:
                done[name] = _outcome(target, ProjectStatus.NO_CHANGES, "", plan, run_id)
            else:
                items.append(_item(current, target, plan, run_id))
                by_name[name] = (target, run_id)
        request = ApplyRequest(
            repo_key=current.repo.key,
            tree=tree,
            items=tuple(items),
            trigger=Trigger.RECONCILE,
            author=RECONCILE_USER,
            wait_for_state=True,
            settled=settled,
        )
        gate = self._policy_gate(current)
        for item in items:
            self._tell(ProgressEvent(item.project.name, item.project.workspace, Phase.APPLY))
        for result in self._policy_refused(request, gate) + list(
            self.services.executor.run(self._policy_passed(request, gate), [gate]).results
        ):
            target, run_id = by_name[result.project]
            outcome = _applied_outcome(target, plans[result.project], run_id, result)
            done[result.project] = outcome
            failed = outcome.status in FAILURES
            self._tell(
                ProgressEvent(
                    outcome.project, outcome.workspace, Phase.DONE, describe(outcome), failed
                )
            )
        return done

    def _policy_gate(self, current: _Pass) -> PolicyGate:
        """Policies of kind `reconcile`; the branch's own config is the trusted one."""
        context = RunContext(
            kind=PolicyKind.RECONCILE,
            repository=current.repo.key,
            trigger=str(Trigger.RECONCILE),
            author=RECONCILE_USER,
            commit=current.head,
            branch=current.branch,
            default_branch=current.branch,
        )
        return PolicyGate(self.services.policies, self.services.plan_documents, context)

    @staticmethod
    def _policy_passed(request: ApplyRequest, gate: PolicyGate) -> ApplyRequest:
        passed = tuple(i for i in request.items if gate.refusal(i, request) is None)
        refused = {i.project.name: ApplyStatus.FAILED for i in request.items if i not in passed}
        return replace(request, items=passed, settled={**request.settled, **refused})

    @staticmethod
    def _policy_refused(request: ApplyRequest, gate: PolicyGate) -> list[ApplyResult]:
        """A project its policies refuse fails alone; its dependents are then blocked."""
        return [
            not_applied(item, ApplyStatus.FAILED, why)
            for item in request.items
            if (why := gate.refusal(item, request)) is not None
        ]

    def _tell(self, event: ProgressEvent) -> None:
        if self.services.progress is not None:
            self.services.progress(event)

    # --- bookkeeping and reports ----------------------------------------------------------

    def _save(
        self, current: _Pass, outcomes: Sequence[ProjectOutcome], failed_detail: str = ""
    ) -> None:
        """Move the bookmark: to head when everything is done, else remember what is owed."""
        failed = {o.project for o in outcomes if o.status in FAILURES}
        busy = {o.project for o in outcomes if o.status is ProjectStatus.BUSY}
        if current.retry and current.state is not None:
            failed |= set(current.state.failed)
        done = not failed and not busy and not failed_detail
        status = "failed" if failed or failed_detail else "partial" if busy else "reconciled"
        self.states.save(
            ReconcileState(
                repo=current.repo.key,
                branch=current.branch,
                reconciled_sha=current.head if done else current.base,
                head_sha=current.head,
                status=status,
                retry=tuple(sorted(busy)),
                failed=tuple(sorted(failed)),
                detail=failed_detail,
            )
        )

    def _report(
        self,
        current: _Pass,
        started: datetime,
        outcomes: Sequence[ProjectOutcome] = (),
        *,
        up_to_date: bool = False,
        error: str = "",
        notes: Sequence[str] = (),
    ) -> ReconcileReport:
        return ReconcileReport(
            repo=current.repo.key,
            name=current.target.name,
            started_at=started,
            finished_at=self._clock(),
            branch=current.branch,
            head=current.head,
            base=current.base,
            projects=tuple(outcomes),
            up_to_date=up_to_date,
            retry=current.retry,
            error=error,
            notes=tuple(notes),
        )

    def _announce(self, target: PollTarget, report: ReconcileReport) -> None:
        """Commit status and Slack; both best effort, neither ever fails the pass."""
        if report.up_to_date:
            self._last_error.pop(target.repo.url, None)
            return
        if report.head is None:  # the pass failed before it knew the head
            if self._last_error.get(target.repo.url) == report.error:
                return  # the same outage as on the last poll: said already
            self._last_error[target.repo.url] = report.error
        else:
            self._last_error.pop(target.repo.url, None)
            if not report.retry or report.applied or not report.ok:
                self._final_status(target, report)
        if needs_message(report):
            message = reconcile_message(report, RunLinks(self.settings.public_url))
            self.last_delivery = self.notifier.send(message)

    def _final_status(self, target: PollTarget, report: ReconcileReport) -> None:
        applied = len(report.applied)
        busy = len(report.with_status(ProjectStatus.BUSY))
        if not report.ok:
            failed = len(report.with_status(*FAILURES))
            what = report.error or f"{failed} failed, {applied} applied"
            state, description = CommitState.FAILURE, what
        elif busy:
            state, description = CommitState.PENDING, f"{applied} applied, {busy} busy (locked)"
        elif not report.projects:
            state, description = CommitState.SUCCESS, "no Terraform project changed"
        else:
            state, description = CommitState.SUCCESS, f"{applied}/{len(report.projects)} applied"
        self._set_status(target.repo, report.head or "", state, description)

    def _status(self, current: _Pass, state: CommitState, description: str) -> None:
        self._set_status(current.repo, current.head, state, description)

    def _set_status(self, repo: DriftRepo, sha: str, state: CommitState, description: str) -> None:
        ref = repo.forge_ref()
        if ref is None:
            return
        forge = self._forge_for(repo)
        if forge is None:
            return  # no token for this forge: statuses are skipped quietly
        try:
            forge.set_status(ref, sha, APPLY_CONTEXT, state, description[:140])
        except Exception as error:  # a forge outage must not fail the apply
            log.warning("reconcile: commit status for %s failed: %s", repo.name, error)

    def _sleep_s(self) -> float:
        """Until the next repository is due, but often enough to keep (or take) the lease."""
        now = self._clock()
        bound = self._ttl.total_seconds() / 3
        due = [(when - now).total_seconds() for when in self._due.values()]
        intervals = [target.interval_s for target in self.targets()]
        wait = min([bound, *due, *intervals]) if due else min([bound, *intervals])
        return max(_MIN_SLEEP_S, wait)


def _same_head(state: ReconcileState | None, head: str) -> bool:
    return state is not None and state.head_sha == head


def _every_project_autoplanned(config: RepoConfig) -> RepoConfig:
    """The config with autoplan on everywhere: pull mode applies whatever main changed.

    `autoplan.enabled: false` is about pull requests; the `when_modified` globs still
    decide which files belong to a project.
    """
    projects = tuple(
        p.model_copy(update={"autoplan": p.autoplan.model_copy(update={"enabled": True})})
        for p in config.projects
    )
    return config.model_copy(update={"projects": projects})


def _busy_reason(holder: LockInfo) -> str:
    if holder.owner_pr is not None:
        return f"locked by PR #{holder.owner_pr}"
    return f"locked by another run ({holder.owner_user or 'unknown'})"


def _outcome(
    target: PlanTarget,
    status: ProjectStatus,
    detail: str = "",
    plan: PlanResult | None = None,
    plan_run_id: int | None = None,
) -> ProjectOutcome:
    project = target.project
    return ProjectOutcome(
        project=project.name,
        dir=project.dir,
        workspace=project.workspace,
        status=status,
        reason=target.reason,
        detail=detail,
        summary=plan.summary if plan is not None else PlanSummary(),
        plan_run_id=plan_run_id,
        log_path=plan.log_path if plan is not None else None,
    )


_SETTLED = {
    ProjectStatus.FAILED: ApplyStatus.FAILED,
    ProjectStatus.BLOCKED: ApplyStatus.BLOCKED,
    ProjectStatus.BUSY: ApplyStatus.BUSY,
}
_OUTCOME = {
    ApplyStatus.APPLIED: ProjectStatus.APPLIED,
    ApplyStatus.FAILED: ProjectStatus.FAILED,
    ApplyStatus.BLOCKED: ProjectStatus.BLOCKED,
    ApplyStatus.BUSY: ProjectStatus.BUSY,
}


def _item(current: _Pass, target: PlanTarget, plan: PlanResult, run_id: int) -> ApplyItem:
    """The plan just made, held by this pass's lock (owned by the plan run)."""
    return ApplyItem(
        project=target.project,
        plan_path=Path(plan.plan_path or ""),
        plan_checksum=plan.plan_checksum or "",
        commit=current.head,
        summary=plan.summary,
        holder=LockHolder(run_id=run_id),
    )


def _applied_outcome(
    target: PlanTarget, plan: PlanResult, plan_run_id: int, result: ApplyResult
) -> ProjectOutcome:
    status = _OUTCOME[result.status]
    detail = result.error
    if status is ProjectStatus.FAILED and result.run_id is not None:
        detail = f"apply failed: {result.error}"
    outcome = _outcome(target, status, detail, plan, plan_run_id)
    return replace(outcome, apply_run_id=result.run_id, log_path=result.log_path)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
