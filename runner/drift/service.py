"""`DriftService`: one scan end to end, for the CLI, the web API and the scheduler.

scan → (safe auto-correction → re-scan) → store → Slack roll-up → forge issues.
Everything after the store is best effort: a Slack or forge outage is noted in the
report and never loses the results.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from runner.config.errors import ConfigError
from runner.config.model import ProjectConfig
from runner.drift.autocorrect import LOCK_USER, AutoCorrector, CorrectionGate, after_rescan
from runner.drift.history import Tracked, record_results
from runner.drift.issues import DriftIssues
from runner.drift.reports import drift_message
from runner.drift.scan import DriftRepo, DriftScanner, ForgeFor, ScanSession, repo_forge
from runner.engine.policy_gate import PolicyGate
from runner.engine.services import Services
from runner.notify.base import Delivery, Notifier
from runner.policies.input import RunContext
from runner.projects.detection import ProjectSelectionError
from runner.results.drift import DriftReport, DriftResult, DriftStatus
from runner.results.policy import PolicyKind
from runner.settings import Settings
from runner.store.drift import DriftStore
from runner.store.models import utcnow
from runner.store.runs import Trigger
from runner.workspace.snapshot import repository_url

log = logging.getLogger(__name__)


def configured_repos(settings: Settings) -> list[DriftRepo]:
    """The repositories of the server config (`repos:`), as drift scans see them."""
    return [
        DriftRepo.from_url(
            r.url,
            branch=r.branch,
            full_name=r.full_name,
            forge=r.forge,
            forge_hosts=settings.forge_hosts(),
        )
        for r in settings.repos
    ]


class DriftService:
    """Scans repositories for drift and reports it; see the module docstring."""

    def __init__(
        self,
        services: Services,
        *,
        notifier: Notifier | None = None,
        forge_for: ForgeFor | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """Scans run on the process's `Services` (the same working copies, credentials,
        mutex and apply path as the PR flow); `notifier` and `forge_for` replace the
        services' own (tests, the CLI)."""
        self.settings = services.settings
        self.store = services.store
        self.history = DriftStore(services.store)
        self.notifier = notifier or services.notifier
        self._clock = clock
        self.scanner = DriftScanner(
            services.planner,
            services.working_copies,
            services.store,
            services.mutex,
            secret_values=services.secret_values,
            progress=services.progress,
            repo_config=services.settings.repo_config,
        )
        self.corrector = AutoCorrector(services.store, services.executor)
        self._policies = (services.policies, services.plan_documents)
        self.issues = DriftIssues(forge_for or repo_forge(services.forge_for), self.history)
        self.last_delivery: Delivery | None = None

    # --- the API the CLI, web app and scheduler call --------------------------------

    def scan(
        self,
        repo: str | DriftRepo | None = None,
        project: str | None = None,
        *,
        projects: Sequence[str] | None = None,
        trigger: str = "schedule",
        strict: bool = False,
    ) -> DriftReport:
        """Scan one repository (or every configured one) now; returns and reports the result.

        `project` (one name) or `projects` (several) narrow the scan; by default every
        project of the repository is scanned, opted in to scheduled drift or not.
        `strict` (the CLI) raises an invalid repository config (`ConfigError`, with
        file and line) instead of noting it in the report.
        """
        names = [project] if project else (list(projects) if projects is not None else None)
        return self._report(
            self.resolve_repos(repo),
            lambda target: self._scan_repo(target, names, trigger),
            strict=strict,
        )

    def scan_session(
        self, session: ScanSession, names: Sequence[str], *, trigger: str = "schedule"
    ) -> DriftReport:
        """Scan `names` in a checkout the caller already holds, and report it like `scan`.

        The scheduler reads the schedules in the session it then scans in, so a tick
        fetches and checks out each repository once, not once to read and once to scan.
        """
        return self._report([session.repo], lambda _: self._scan_in(session, names, trigger))

    def latest(self, repo: str | None = None) -> list[DriftResult]:
        """The newest stored result of every project (for `GET /api/drift`)."""
        return self.history.latest(repo)

    def resolve_repos(self, repo: str | DriftRepo | None) -> list[DriftRepo]:
        """A DriftRepo as is; a configured repo by URL, key or full name; else a URL or path."""
        if isinstance(repo, DriftRepo):
            return [repo]
        known = configured_repos(self.settings)
        if repo is None:
            return known
        for candidate in known:
            if repo in (candidate.url, candidate.key, candidate.full_name):
                return [candidate]
        # A plain directory (no git) is scanned through its snapshot: the repository
        # `gitops-runner reconcile --repo DIR` applies (runner/workspace/snapshot.py).
        return [DriftRepo.from_url(repository_url(repo, self.settings.data_dir))]

    # --- steps ----------------------------------------------------------------------

    def _report(
        self,
        repos: Sequence[DriftRepo],
        scan_one: Callable[[DriftRepo], list[DriftResult]],
        *,
        strict: bool = False,
    ) -> DriftReport:
        """Scan each repository with `scan_one`, store, open issues, notify: one report."""
        started = self._clock()
        tracked: list[Tracked] = []
        notes: list[str] = []
        for target in repos:
            try:
                repo_results = scan_one(target)
            except ProjectSelectionError:
                raise  # the caller's mistake, not the repository's: said to the caller
            except Exception as error:  # one broken repository must not hide the others
                if strict and isinstance(error, ConfigError):
                    raise
                log.exception("drift scan of %s failed", target.name)
                notes.append(f"{target.name}: scan failed: {error}")
                continue
            repo_tracked = record_results(self.history, repo_results)
            notes += self.issues.sync(target, repo_tracked)
            tracked += repo_tracked
        results = [t.result for t in tracked]
        report = DriftReport(tuple(results), started, self._clock(), tuple(notes))
        self._notify(report, tracked, repos)
        return report

    def _scan_repo(
        self, repo: DriftRepo, names: Sequence[str] | None, trigger: str
    ) -> list[DriftResult]:
        with self.scanner.session(repo) as session:
            return self._scan_in(session, names, trigger)

    def _scan_in(
        self, session: ScanSession, names: Sequence[str] | None, trigger: str
    ) -> list[DriftResult]:
        chosen = session.projects(names)
        if names is not None and not chosen:
            known = ", ".join(p.name for p in session.config.projects) or "none"
            raise ProjectSelectionError(f"no project named {', '.join(names)}; projects: {known}")
        results = self.scanner.scan(session, chosen, trigger=trigger)
        return self._correct(session, results, trigger)

    def _correct(
        self, session: ScanSession, results: list[DriftResult], trigger: str
    ) -> list[DriftResult]:
        """Apply what is safe to apply, then re-scan those projects at the same commit."""
        by_name = {p.name: p for p in session.config.projects}
        wanted = [
            r
            for r in results
            if r.status is DriftStatus.DRIFT and by_name[r.project].drift.auto_correct
        ]
        if not wanted:
            return results
        _, head_now = self.scanner.head(session.repo)
        decided: dict[str, DriftResult] = {}
        applied: list[ProjectConfig] = []
        for result in wanted:
            project = by_name[result.project]
            gates = [CorrectionGate(result, head_now, self._clock()), self._policy_gate(session)]
            outcome = self.corrector.apply(session.tree, session.repo.key, project, result, gates)
            decided[result.project] = outcome
            if outcome.correction is None:
                applied.append(project)
        if applied:
            for fresh in self.scanner.scan(session, applied, trigger=trigger):
                decided[fresh.project] = after_rescan(decided[fresh.project], fresh)
        return [decided.get(r.project, r) for r in results]

    def _policy_gate(self, session: ScanSession) -> PolicyGate:
        """Policies of kind `drift`: an unattended correction needs a clean result."""
        engine, documents = self._policies
        context = RunContext(
            kind=PolicyKind.DRIFT,
            repository=session.repo.key,
            trigger=str(Trigger.SCHEDULE),
            author=LOCK_USER,
            branch=session.repo.branch,
            default_branch=session.repo.branch,
        )
        return PolicyGate(engine, documents, context, require_clean=True)

    def _notify(
        self, report: DriftReport, tracked: list[Tracked], repos: Sequence[DriftRepo]
    ) -> None:
        names = {repo.key: repo.name for repo in repos}
        message = drift_message(report, tracked, names)
        delivery = self.notifier.send(message)
        self.last_delivery = delivery
        if delivery.ok:
            self.history.mark_notified(
                t.result.id
                for t in tracked
                if t.result.status is DriftStatus.DRIFT and t.result.id is not None
            )
