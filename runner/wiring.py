"""The composition root: builds the object graph for `serve`, `worker` and the CLI.

It imports every package and nothing imports it but the entry points (`runner/cli.py`,
`runner/web/server.py`'s gunicorn hooks through `create_app`'s caller). Each process
builds its own graph once: one `Services` (`engine/services.py`) that the PR flow,
drift, reconcile and the job handlers all receive.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pydantic import SecretStr

from runner.config.server_config import check_server_config
from runner.engine.apply import ApplyExecutor
from runner.engine.planner import build_planner, build_terraform_factory
from runner.engine.project_mutex import ProjectMutex, build_mutex
from runner.engine.services import Services
from runner.events.model import RepoRef
from runner.forge.base import Forge
from runner.notify.slack import build_notifier
from runner.policies.engine import build_policy_engine
from runner.results.limits import OutputLimits
from runner.results.masking import Masker
from runner.settings import Settings, load_settings
from runner.store.plan_files import Encryption, PlanStore, build_plan_store
from runner.store.store import Store, open_store
from runner.workspace.credentials import GITLAB_TOKEN_USERNAME, TOKEN_USERNAME, HttpAuth
from runner.workspace.working_copy import CredentialsFor, WorkingCopies

# What only `serve` and `worker` wire (Flask, the PR flow, queues, schedulers) is
# imported where it is built, so the CLI's commands do not pay for it at start-up.
if TYPE_CHECKING:
    import threading

    from flask import Flask

    from runner.drift.scheduler import DriftScheduler
    from runner.drift.service import DriftService
    from runner.drift.triggers import DriftScans
    from runner.jobs.model import JobHandler, JobPayload
    from runner.jobs.queue import JobQueue
    from runner.jobs.registry import JobRegistry
    from runner.jobs.scheduler import JobScheduler, ScheduleSource
    from runner.jobs.wakeup import JobWakeup
    from runner.web.context import WebServices

log = logging.getLogger(__name__)


def build_services(settings: Settings, store: Store | None = None) -> Services:
    """Wire the PR flow for one process (each gunicorn worker or RQ worker builds its own)."""
    check_server_config(settings.repo_config)  # a broken repos.yaml stops start-up
    store = store or open_store(settings)
    terraform_for = build_terraform_factory(settings)

    @cache
    def forge_for(name: str) -> Forge:
        from runner.forge.factory import build_forge  # PyGithub: when a forge is needed

        return build_forge(settings, name)  # type: ignore[arg-type]

    mutex = build_mutex(settings, store)
    secret_values = settings.secret_values()
    plan_store = build_plan_files(settings, store)
    executor = ApplyExecutor(
        store,
        terraform_for,
        mutex,
        settings.logs_dir,
        Masker.from_secrets(secret_values),
        OutputLimits.from_settings(settings),
        plan_store,
    )
    return Services(
        settings=settings,
        store=store,
        forge_for=forge_for,
        working_copies=WorkingCopies(
            settings.repos_dir, credentials_for=_clone_credentials(settings, forge_for)
        ),
        planner=build_planner(settings, terraform_for=terraform_for, plan_store=plan_store),
        plan_store=plan_store,
        terraform_for=terraform_for,
        mutex=mutex,
        executor=executor,
        secret_values=secret_values,
        notifier=build_notifier(settings),
        policies=build_policy_engine(settings),
    )


def _clone_credentials(
    settings: Settings, forge_for: Callable[[str], Forge] | None = None
) -> CredentialsFor:
    """HTTPS clone credentials by exact host: GitHub's token for GitHub's hosts, GitLab's
    (as `oauth2:<token>`) for the host of `GITOPS_GITLAB_URL`.

    Exact, because a suffix match hands the token to `evilgithub.com`. The clone host
    of GitHub Enterprise is its API URL's host (`https://ghe.example.com/api/v3`); an
    API at a host's root named `api.<host>` (`api.github.com`, GHE.com's
    `api.<name>.ghe.com`) clones from `<host>`. A token only travels over https, or
    over the scheme its forge's URL is configured with (a test or air-gapped forge).
    As a GitHub App, the token is the installation token of the repository's
    installation, asked of the forge (`forge_for("github")`) at each clone or fetch.
    """
    api = urlsplit(settings.github_api_url)
    api_host = (api.hostname or "").lower()
    github_hosts = {"github.com": "https", api_host: api.scheme}
    if api.path.strip("/") == "" and api_host.startswith("api."):
        github_hosts[api_host.removeprefix("api.")] = api.scheme
    github_token = _github_clone_token(settings, forge_for)
    by_host = {
        host: _HostCredentials(scheme, github_token, TOKEN_USERNAME)
        for host, scheme in github_hosts.items()
        if host
    }
    gitlab = urlsplit(settings.gitlab_url)
    if gitlab.hostname:
        by_host[gitlab.hostname.lower()] = _HostCredentials(
            gitlab.scheme, _fixed_token(settings.gitlab_token), GITLAB_TOKEN_USERNAME
        )

    def credentials_for(url: str) -> HttpAuth | None:
        parts = urlsplit(url)
        host = by_host.get((parts.hostname or "").lower())
        if host is None or parts.scheme.lower() not in {"https", host.scheme.lower()}:
            return None
        token = host.token(url)
        return HttpAuth(token=token, username=host.username) if token else None

    return credentials_for


def _fixed_token(secret: SecretStr | None) -> Callable[[str], str]:
    value = secret.get_secret_value() if secret is not None else ""
    return lambda _url: value


def _github_clone_token(
    settings: Settings, forge_for: Callable[[str], Forge] | None
) -> Callable[[str], str]:
    """The PAT; as an App, the installation token of the repository the URL names."""
    if settings.github_app_id is None or forge_for is None:
        return _fixed_token(settings.github_token)

    def installation_token(url: str) -> str:
        from runner.forge.github import GitHubForge  # PyGithub: only when cloning

        full_name = urlsplit(url).path.strip("/").removesuffix(".git")
        forge = forge_for("github")
        if not isinstance(forge, GitHubForge) or full_name.count("/") != 1:
            return ""
        repo = RepoRef("github", full_name, clone_url=url, html_url=url, default_branch="")
        return forge.clone_token(repo)

    return installation_token


def build_plan_files(settings: Settings, store: Store) -> PlanStore:
    """Plan files and run logs: the data dir, or the bucket of GITOPS_PLAN_STORE; plans
    still appliable (`store.runs.live_plan_checksums`) outlive the retention."""
    return build_plan_store(
        settings.plan_store,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        encryption=Encryption(settings.s3_sse, settings.s3_kms_key_id),
        retention_days=settings.plan_store_retention_days,
        liveness=store.runs.live_plan_checksums,
    )


@dataclass(frozen=True)
class _HostCredentials:
    """What a forge host gets: its token (per clone URL), the scheme it may travel over,
    the user name."""

    scheme: str
    token: Callable[[str], str]
    username: str


@dataclass(frozen=True)
class DriftParts:
    """One process's drift service and scheduler, shared by the job handlers (scans,
    ticks) and the web side (scans on request, the scheduler as a schedule source)."""

    service: DriftService
    scheduler: DriftScheduler


def build_drift_parts(services: Services) -> DriftParts:
    from runner.drift.scheduler import DriftScheduler
    from runner.drift.service import DriftService

    service = DriftService(services)
    return DriftParts(service, DriftScheduler(service))


@dataclass(frozen=True)
class DriftWiring:
    """Drift in a web process: scans on request, and the scheduler when drift is scheduled.

    The scheduler is a source of the process's `JobScheduler` (`build_scheduler`), which
    ticks it and gives its lease up; scans on request are jobs when a queue is given.
    """

    scans: DriftScans
    scheduler: DriftScheduler | None

    def stop(self) -> None:
        """Stop the scans this process runs on its own threads (none with a queue)."""
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


def build_drift(
    settings: Settings,
    services: Services,
    submit_job: Callable[[JobPayload], int] | None = None,
    parts: DriftParts | None = None,
) -> DriftWiring:
    """The drift service on this process's store, planner, working copies and notifier
    (`parts`, when the job handlers were given them already).

    Every web process gets a scheduler when drift is scheduled; the scheduler's lease
    in the store makes exactly one of them scan (see runner/drift/scheduler.py).
    """
    from runner.drift.triggers import DriftScans

    parts = parts or build_drift_parts(services)
    scheduler = parts.scheduler if drift_scheduled(settings) else None
    return DriftWiring(DriftScans(parts.service, submit_job=submit_job), scheduler)


def _quietly(stop: Callable[[], object], what: str) -> None:
    # Shutdown goes on whatever one part does: the job workers must still be stopped.
    try:
        stop()
    except Exception:
        log.exception("stopping the %s failed", what)


def build_web_services(
    settings: Settings, *, run_jobs: bool = True, wakeup: JobWakeup | None = None
) -> WebServices:
    """What one web process needs: the store, the queue's submit, drift, and worker hooks.

    `run_jobs=False`: the in-process queue only stores jobs; `serve`'s job process runs
    them (`run_job_process`), woken through `wakeup` after each.

    Called once per gunicorn worker process, after the fork, so no connection is
    shared between processes. Every kind of work is a job on the queue: webhooks, scans
    on request, and what the elected scheduler enqueues (drift ticks, reconcile polls).
    The in-process queue's threads and the scheduler start with the worker
    (`start_workers`) and stop when it exits; with RQ nothing runs here but the scheduler.
    """
    from runner.web.context import WebServices

    services = build_services(settings)
    drift_parts = build_drift_parts(services)
    registry = build_job_registry(services, drift_parts)
    # The services' mutex: PR groups and Terraform states are keyed apart, and one
    # object per process is what makes a second hold from one thread an error.
    queue = build_queue(
        settings,
        services.store,
        registry,
        mutex=services.mutex,
        run_jobs=run_jobs,
        wakeup=wakeup,
    )
    drift = build_drift(settings, services, queue.submit, drift_parts)
    scheduler = build_scheduler(settings, services.store, queue.submit, drift.scheduler)

    def start_workers() -> None:
        queue.start()
        scheduler.start()

    def stop_workers() -> None:
        _quietly(scheduler.stop, "scheduler")
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
        plan_store=services.plan_store,
    )


def build_job_registry(services: Services, drift: DriftParts | None = None) -> JobRegistry:
    """Every kind of job and its handler, on this process's services (`runner/jobs/`)
    and its drift service and scheduler (`drift`, when the web side shares them)."""
    from runner.commands.pr_flow import build_handler
    from runner.drift.scheduler import DriftScheduleHandler
    from runner.drift.triggers import DriftScanHandler
    from runner.jobs.registry import JobRegistry
    from runner.reconcile.jobs import ReconcileHandler
    from runner.reconcile.reconciler import Reconciler

    pull_requests = build_handler(services)
    drift = drift or build_drift_parts(services)
    return JobRegistry(
        {
            "pull_request": pull_requests,
            "comment": pull_requests,
            "drift_scan": DriftScanHandler(drift.service),
            "drift_schedule": DriftScheduleHandler(drift.scheduler),
            "reconcile": ReconcileHandler(Reconciler(services), services.settings),
        }
    )


def job_registry(settings: Settings, store: Store) -> JobHandler:
    """The default handler factory of `gitops-runner worker` (and of a plain `rq worker`,
    `GITOPS_JOB_HANDLER_FACTORY`): every kind of job."""
    return build_job_registry(build_services(settings, store))


def build_scheduler(
    settings: Settings,
    store: Store,
    submit: Callable[[JobPayload], int],
    drift: DriftScheduler | None,
) -> JobScheduler:
    """The scheduler of one web process: drift ticks (when drift is scheduled) and
    reconcile polls (repositories with a `poll_interval`); only the lease holder submits."""
    from runner.jobs.scheduler import JobScheduler
    from runner.reconcile.jobs import ReconcilePolls, reconciled_repos

    sources: list[ScheduleSource] = []
    if drift is not None:
        sources.append(drift)
    if reconciled_repos(settings):
        sources.append(ReconcilePolls(settings))
    return JobScheduler(store, submit, sources)


def create_app_from_env() -> Flask:
    """The app for plain `gunicorn 'runner.wiring:create_app_from_env()'`.

    Settings come from the `GITOPS_*` environment (and the YAML file named by
    `GITOPS_CONFIG_FILE`, if any). Runs in each gunicorn worker after the fork, so the
    Store and queue built here belong to that worker process alone.
    """
    from runner.web.app import create_app
    from runner.web.auth.startup import check_sign_in

    settings = load_settings(os.environ.get("GITOPS_CONFIG_FILE") or None)
    services = build_web_services(settings)
    # Refuses a dashboard nobody can sign in to (AuthConfigError names the settings).
    check_sign_in(settings, services.store.tokens.count_usable)
    return create_app(settings, services)


def pull_request_flow_handler(settings: Settings, store: Store) -> JobHandler:
    """The default handler factory: the pull-request flow, wired from settings."""
    from runner.commands.pr_flow import build_handler

    return build_handler(build_services(settings, store))


def build_queue(
    settings: Settings,
    store: Store,
    handler: JobHandler,
    *,
    mutex: ProjectMutex | None = None,
    run_jobs: bool = True,
    wakeup: JobWakeup | None = None,
) -> JobQueue:
    """The queue `settings.queue` names, on `store`.

    `handler` runs the jobs of an in-process queue, its PR groups held on `mutex` (the
    process's own, `Services.mutex`; a new one if not given). An RQ queue only submits;
    its jobs run in `gitops-runner worker` processes, which build their own handler.
    `run_jobs=False`: an in-process queue that only stores jobs (`serve`'s job process
    runs them), and wakes the job process through `wakeup`.
    """
    from runner.jobs.inprocess import InProcessQueue, QueueRole
    from runner.jobs.queue import JobTiming

    if settings.queue == "rq":
        # Imported only when asked for: redis and rq are the `redis` extra.
        from runner.jobs.rq_queue import RQQueue

        return RQQueue(store, settings.redis_url, settings.queue_name)
    return InProcessQueue(
        store,
        handler,
        settings.workers,
        mutex=mutex or build_mutex(settings, store),
        timing=JobTiming.for_lease(settings.job_lease_seconds),
        role=QueueRole.ALL if run_jobs else QueueRole.SUBMIT,
        wakeup=None if run_jobs else wakeup,
    )


def run_job_process(
    settings: Settings, stop: threading.Event, *, wakeup: JobWakeup | None = None
) -> None:
    """`serve`'s job process (`GITOPS_JOB_PROCESS`): every kind of job of the in-process
    queue, submitted by the web processes (which wake it through `wakeup`), run here
    until `stop`."""
    from runner.jobs.inprocess import InProcessQueue, QueueRole
    from runner.jobs.job_process import run_queue
    from runner.jobs.queue import JobTiming

    services = build_services(settings)
    queue = InProcessQueue(
        services.store,
        build_job_registry(services),
        settings.workers,
        mutex=services.mutex,
        timing=JobTiming.for_lease(settings.job_lease_seconds),
        role=QueueRole.RUN,
        wakeup=wakeup,
    )
    # As a web process stopped its queue: 20 s to finish, then running jobs are cancelled.
    run_queue(queue, stop, stop_timeout_s=20)
