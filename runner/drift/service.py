"""`DriftService`: one scan end to end, for the CLI, the web API and the scheduler.

scan → (safe auto-correction → re-scan) → store → Slack roll-up → forge issues.
Everything after the store is best effort: a Slack or forge outage is noted in the
report and never loses the results.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from runner.config.model import ProjectConfig
from runner.drift.autocorrect import AutoCorrector, CorrectionGate, after_rescan
from runner.drift.history import Tracked, record_results
from runner.drift.issues import DriftIssues, ForgeFor
from runner.drift.model import DriftReport, DriftResult, DriftStatus
from runner.drift.reports import drift_message
from runner.drift.scan import DriftRepo, DriftScanner, ScanSession
from runner.engine.apply import ApplyExecutor
from runner.engine.planner import Planner, build_planner, build_terraform_factory
from runner.engine.project_mutex import ProjectMutex, build_mutex
from runner.forge.base import Forge
from runner.notify.base import Delivery, Notifier
from runner.notify.slack import build_notifier
from runner.reconcile.snapshot import repository_url
from runner.results.masking import Masker
from runner.settings import Settings
from runner.store.drift import DriftStore
from runner.store.models import utcnow
from runner.store.store import Store
from runner.workspace.working_copy import WorkingCopies

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


def _default_forge_for(settings: Settings) -> ForgeFor:
    from runner.forge.factory import ForgeNotConfigured, build_forge

    def forge_for(repo: DriftRepo) -> Forge | None:
        if repo.forge is None:
            return None
        try:
            return build_forge(settings, repo.forge)
        except ForgeNotConfigured:
            return None

    return forge_for


class DriftService:
    """Scans repositories for drift and reports it; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        notifier: Notifier | None = None,
        forge_for: ForgeFor | None = None,
        planner: Planner | None = None,
        working_copies: WorkingCopies | None = None,
        secret_values: tuple[str, ...] = (),
        clock: Callable[[], datetime] = utcnow,
        mutex: ProjectMutex | None = None,
        executor: ApplyExecutor | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.history = DriftStore(store)
        self.notifier = notifier or build_notifier(settings)
        self._clock = clock
        terraform_for = build_terraform_factory(settings)
        mutex = mutex or build_mutex(settings, store)
        self.scanner = DriftScanner(
            planner or build_planner(settings, terraform_for=terraform_for),
            working_copies or WorkingCopies(settings.repos_dir),
            store,
            mutex,
            secret_values=secret_values,
        )
        masker = Masker.from_secrets(secret_values)
        executor = executor or ApplyExecutor(store, terraform_for, mutex, settings.logs_dir, masker)
        self.corrector = AutoCorrector(store, executor)
        self.issues = DriftIssues(forge_for or _default_forge_for(settings), self.history)
        self.last_delivery: Delivery | None = None

    # --- the API the CLI, web app and scheduler call --------------------------------

    def scan(
        self,
        repo: str | DriftRepo | None = None,
        project: str | None = None,
        *,
        projects: Sequence[str] | None = None,
        trigger: str = "schedule",
    ) -> DriftReport:
        """Scan one repository (or every configured one) now; returns and reports the result.

        `project` (one name) or `projects` (several) narrow the scan; by default every
        project of the repository is scanned, opted in to scheduled drift or not.
        """
        started = self._clock()
        names = [project] if project else (list(projects) if projects is not None else None)
        repos = self.resolve_repos(repo)
        results: list[DriftResult] = []
        tracked: list[Tracked] = []
        notes: list[str] = []
        for target in repos:
            try:
                repo_results = self._scan_repo(target, names, trigger)
            except Exception as error:  # one broken repository must not hide the others
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
        # `gitops-runner reconcile --repo DIR` applies (runner/reconcile/snapshot.py).
        return [DriftRepo.from_url(repository_url(repo, self.settings.data_dir))]

    # --- steps ----------------------------------------------------------------------

    def _scan_repo(
        self, repo: DriftRepo, names: Sequence[str] | None, trigger: str
    ) -> list[DriftResult]:
        with self.scanner.session(repo) as session:
            chosen = session.projects(names)
            if names is not None and not chosen:
                raise LookupError(f"no project named {', '.join(names)}")
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
            gate = CorrectionGate(result, head_now, self._clock())
            outcome = self.corrector.apply(session.tree, session.repo.key, project, result, gate)
            decided[result.project] = outcome
            if outcome.correction is None:
                applied.append(project)
        if applied:
            for fresh in self.scanner.scan(session, applied, trigger=trigger):
                decided[fresh.project] = after_rescan(decided[fresh.project], fresh)
        return [decided.get(r.project, r) for r in results]

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
