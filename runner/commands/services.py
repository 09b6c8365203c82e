"""The object graph of the pull-request flow, built once per process from settings.

Everything the flow needs is here and nothing else: the store, a forge per name,
working copies, the planner and the per-state mutex. The flow itself never reads
settings or the environment on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

from runner.engine.apply import ApplyExecutor
from runner.engine.planner import Planner, build_planner, build_terraform_factory
from runner.engine.project_mutex import ProjectMutex, build_mutex
from runner.forge.base import Forge
from runner.forge.factory import build_forge
from runner.notify.base import Notifier, NullNotifier
from runner.notify.slack import build_notifier
from runner.results.limits import OutputLimits
from runner.results.masking import Masker
from runner.settings import Settings
from runner.store.store import Store
from runner.terraform import Terraform
from runner.workspace.working_copy import WorkingCopies

if TYPE_CHECKING:
    from runner.drift.scheduler import DriftScheduler
    from runner.drift.triggers import DriftScans
    from runner.web.app import WebServices

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    """What the PR flow runs on; two forges, queues or databases look the same from here."""

    settings: Settings
    store: Store
    forge_for: Callable[[str], Forge]
    working_copies: WorkingCopies
    planner: Planner
    terraform_for: Callable[[str | None], Terraform]
    mutex: ProjectMutex
    # The one guarded path every apply takes (PR comment, merge, reconcile).
    executor: ApplyExecutor
    secret_values: tuple[str, ...] = field(default=())
    # Chat messages about applies (runner/notify/events.py); silent unless Slack is set up.
    notifier: Notifier = field(default_factory=NullNotifier)


def build_services(settings: Settings, store: Store | None = None) -> Services:
    """Wire the PR flow for one process (each gunicorn worker or RQ worker builds its own)."""
    store = store or Store.open(settings.resolved_database_url)
    terraform_for = build_terraform_factory(settings)

    @cache
    def forge_for(name: str) -> Forge:
        return build_forge(settings, name)  # type: ignore[arg-type]

    mutex = build_mutex(settings, store)
    secret_values = settings.secret_values()
    executor = ApplyExecutor(
        store,
        terraform_for,
        mutex,
        settings.logs_dir,
        Masker.from_secrets(secret_values),
        OutputLimits.from_settings(settings),
    )
    return Services(
        settings=settings,
        store=store,
        forge_for=forge_for,
        working_copies=WorkingCopies(settings.repos_dir, token_for=_token_for(settings)),
        planner=build_planner(settings, terraform_for=terraform_for),
        terraform_for=terraform_for,
        mutex=mutex,
        executor=executor,
        secret_values=secret_values,
        notifier=build_notifier(settings),
    )


def _token_for(settings: Settings) -> Callable[[str], str | None]:
    """HTTPS clone token by exact host: GitHub's token for GitHub's hosts, GitLab's for GitLab's.

    Exact, because a suffix match hands the token to `evilgithub.com`. The clone host
    of GitHub Enterprise is its API URL's host (`https://ghe.example.com/api/v3`); an
    API at a host's root named `api.<host>` (`api.github.com`, GHE.com's
    `api.<name>.ghe.com`) clones from `<host>`. A token only travels over https, or
    over the scheme its forge's URL is configured with (a test or air-gapped forge).
    """
    from urllib.parse import urlsplit

    api = urlsplit(settings.github_api_url)
    api_host = (api.hostname or "").lower()
    github_hosts = {"github.com": "https", api_host: api.scheme}
    if api.path.strip("/") == "" and api_host.startswith("api."):
        github_hosts[api_host.removeprefix("api.")] = api.scheme
    gitlab = urlsplit(settings.gitlab_url)
    by_host = {
        host: (scheme, settings.github_token) for host, scheme in github_hosts.items() if host
    }
    if gitlab.hostname:
        by_host[gitlab.hostname.lower()] = (gitlab.scheme, settings.gitlab_token)

    def token_for(url: str) -> str | None:
        parts = urlsplit(url)
        scheme, token = by_host.get((parts.hostname or "").lower(), ("", None))
        if token is None or parts.scheme.lower() not in {"https", scheme.lower()}:
            return None
        return token.get_secret_value() or None

    return token_for


@dataclass(frozen=True)
class DriftWiring:
    """Drift in a web process: scans on request, and the scheduler when drift is scheduled."""

    scans: DriftScans
    scheduler: DriftScheduler | None

    def start(self) -> None:
        if self.scheduler is not None:
            self.scheduler.start()

    def stop(self) -> None:
        """Stop ticking (and give the lease up), then stop the scans this process runs."""
        if self.scheduler is not None:
            _quietly(self.scheduler.stop, "drift scheduler")
        _quietly(lambda: self.scans.stop(timeout=5), "drift scans")


def drift_scheduled(settings: Settings) -> bool:
    """Whether this deployment has anything to scan on a schedule.

    Project schedules live in the repositories' own config (`drift:`), read at every
    tick, so any configured repository may have some; without repositories a server
    default (GITOPS_DRIFT_SCHEDULE) has nothing to apply to.
    """
    if settings.drift_schedule and not settings.repos:
        log.warning("GITOPS_DRIFT_SCHEDULE is set but no repos are configured: nothing to scan")
    return bool(settings.repos)


def build_drift(settings: Settings, services: Services) -> DriftWiring:
    """The drift service on this process's store, planner, working copies and notifier.

    Every web process gets a scheduler when drift is scheduled; the scheduler's lease
    in the store makes exactly one of them scan (see runner/drift/scheduler.py).
    """
    from runner.drift.scheduler import DriftScheduler
    from runner.drift.service import DriftService
    from runner.drift.triggers import DriftScans

    service = DriftService(
        settings,
        services.store,
        notifier=services.notifier,
        planner=services.planner,
        working_copies=services.working_copies,
        secret_values=services.secret_values,
        mutex=services.mutex,
        executor=services.executor,
    )
    scheduler = DriftScheduler(service) if drift_scheduled(settings) else None
    return DriftWiring(DriftScans(service), scheduler)


def _quietly(stop: Callable[[], object], what: str) -> None:
    # Shutdown goes on whatever one part does: the job workers must still be stopped.
    try:
        stop()
    except Exception:
        log.exception("stopping the %s failed", what)


def build_web_services(settings: Settings) -> WebServices:
    """What one web process needs: the store, the queue's submit, drift, and worker hooks.

    Called once per gunicorn worker process, after the fork, so no connection is
    shared between processes. The in-process queue's threads and the drift scheduler
    start with the worker (`start_workers`) and stop when it exits.
    """
    from runner.commands.pr_flow import build_handler
    from runner.jobs.queue import build_queue
    from runner.reconcile.reconciler import Reconciler
    from runner.web.app import WebServices

    services = build_services(settings)
    queue = build_queue(settings, services.store, build_handler(services))
    drift = build_drift(settings, services)
    # Pull mode: repositories in `repos:` with a `poll_interval` follow their default branch.
    polled = any(repo.poll_interval is not None for repo in settings.repos)
    reconciler = Reconciler(services) if polled else None

    def start_workers() -> None:
        queue.start()
        drift.start()
        if reconciler is not None:
            reconciler.start()

    def stop_workers() -> None:
        if reconciler is not None:
            reconciler.stop()
        drift.stop()
        # Within gunicorn's graceful timeout: 20 s to finish, then running jobs are cancelled.
        queue.stop(timeout=20)

    return WebServices(
        store=services.store,
        submit=queue.submit,
        drift_trigger=drift.scans.submit,
        drift_report=drift.scans.latest,
        start_workers=start_workers,
        stop_workers=stop_workers,
    )
