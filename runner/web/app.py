"""The Flask application factory: webhooks, JSON API, metrics and the dashboard.

`create_app(settings, services)` builds a fresh app every time; nothing lives at module
level, so tests build as many apps as they like and each gunicorn worker process builds
its own (with its own Store and job queue) after the fork. Settings are read once, here,
and handed to the blueprints through `app.extensions`, never looked up globally.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, current_app, request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from runner.jobs.model import WorkEvent
from runner.settings import Settings, load_settings
from runner.store.deliveries import DeliveryPruner
from runner.store.jobs import JobStatus
from runner.store.store import Store

if TYPE_CHECKING:
    from runner.drift.model import DriftResult
    from runner.drift.triggers import ScanTicket

logger = logging.getLogger(__name__)

EXTENSION_KEY = "gitops_runner"
WEBHOOK_PATH = "/events"

# The drift API's seams (see WebServices and runner/drift/triggers.py).
# (repo, project) -> the scan job, started in the background; never waits for the scan.
DriftTrigger = Callable[[str | None, str | None], "ScanTicket"]
# repo -> the newest stored result of every project (of that repository).
DriftReport = Callable[[str | None], "Sequence[DriftResult]"]

# A webhook acknowledgement should take milliseconds; the top buckets catch regressions.
_ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# Browsers must never render Terraform output or an event field as HTML or script.
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}


class WebConfigError(ValueError):
    """The settings cannot make a safe web service (e.g. no webhook secret at all)."""


@dataclass(frozen=True)
class WebServices:
    """What the web layer calls; built per process by the caller, never by the app.

    `submit` is the job queue's submit: it persists the event and returns the job id,
    and must not call the forge or git (the webhook answers in milliseconds).
    `start_workers` / `stop_workers` run the job workers behind `submit` in this
    process (and the drift scheduler, when drift is scheduled); the gunicorn hooks call
    them once the app is loaded in a worker and when the worker exits (see
    runner/web/server.py). None when jobs run elsewhere (RQ).
    `drift_trigger` starts a drift scan in the background (POST /api/drift; None: the
    endpoint answers 503); `drift_report` reads the latest results (GET /api/drift;
    None: read straight from the store).
    """

    store: Store
    submit: Callable[[WorkEvent], int]
    drift_trigger: DriftTrigger | None = None
    drift_report: DriftReport | None = None
    start_workers: Callable[[], None] | None = None
    stop_workers: Callable[[], None] | None = None


class WebMetrics:
    """Prometheus metrics of one app, in a registry of its own.

    Per-app rather than the global registry so that several apps in one process (tests)
    never collide on metric names or see each other's counts.
    """

    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        self.webhooks = Counter(
            "gitops_webhooks",
            "Webhook deliveries received, by forge and outcome.",
            ["forge", "outcome"],
            registry=self.registry,
        )
        self.ack_seconds = Histogram(
            "gitops_webhook_ack_seconds",
            "Time from receiving a webhook to answering it.",
            ["forge"],
            buckets=_ACK_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(store))

    def observe_webhook(self, forge: str, outcome: str, seconds: float) -> None:
        self.webhooks.labels(forge=forge, outcome=outcome).inc()
        self.ack_seconds.labels(forge=forge).observe(seconds)


class _StoreCollector(Collector):
    """Queue depth and held locks, read from the store at scrape time.

    Read rather than counted in-process, so every process (and the RQ workers) agree.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    def describe(self) -> list:
        # Without this, registering would call collect() (and query the DB) at app build.
        return [
            GaugeMetricFamily("gitops_jobs", "Jobs queued or running.", labels=["status"]),
            GaugeMetricFamily("gitops_locks_held", "Project locks currently held."),
        ]

    def collect(self) -> list:
        jobs = GaugeMetricFamily("gitops_jobs", "Jobs queued or running.", labels=["status"])
        for status in (JobStatus.QUEUED, JobStatus.RUNNING):
            jobs.add_metric([status.value], self._store.jobs.count(status))
        locks = GaugeMetricFamily("gitops_locks_held", "Project locks currently held.")
        locks.add_metric([], len(self._store.locks.list()))
        return [jobs, locks]


@dataclass(frozen=True)
class WebContext:
    """Everything a request handler needs, attached to the app it belongs to."""

    settings: Settings
    services: WebServices
    metrics: WebMetrics


def web_context() -> WebContext:
    """The context of the app handling the current request."""
    return current_app.extensions[EXTENSION_KEY]


def check_webhook_secrets(settings: Settings) -> None:
    """Refuse to serve webhooks nobody can authenticate, unless explicitly told to.

    Called by `create_app` and, before forking, by `run_server`, so a misconfigured
    `serve` fails at once with this message instead of in every gunicorn worker.
    """
    if _secret(settings.github_webhook_secret) or _secret(settings.gitlab_webhook_secret):
        return
    if settings.insecure_no_webhook_secret:
        logger.warning(
            "no webhook secret configured: accepting unauthenticated webhooks "
            "(GITOPS_INSECURE_NO_WEBHOOK_SECRET is set)"
        )
        return
    raise WebConfigError(
        "no webhook secret configured: set GITOPS_GITHUB_WEBHOOK_SECRET (or "
        "GITOPS_GITLAB_WEBHOOK_SECRET) to the secret of the forge's webhook; to accept "
        "unauthenticated webhooks anyway (never on a reachable network), set "
        "GITOPS_INSECURE_NO_WEBHOOK_SECRET=true"
    )


def _secret(value: Any) -> str:
    return value.get_secret_value() if value is not None else ""


def create_app(settings: Settings, services: WebServices) -> Flask:
    """Build the web service around already-built services (store, queue)."""
    check_webhook_secrets(settings)
    _warn_about_allowlist(settings.repo_allowlist)
    app = Flask(__name__)
    # Werkzeug then refuses larger bodies before the view reads them (413).
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION_KEY] = WebContext(
        settings=settings, services=services, metrics=WebMetrics(services.store)
    )
    _register_blueprints(app)
    app.after_request(_security_headers)
    _prune_deliveries_after_webhooks(app, settings, services.store)
    return app


def _register_blueprints(app: Flask) -> None:
    # Imported here, not at the top: the blueprint modules import `web_context` from
    # this module, and a top-level import would be circular.
    from runner.web import api, dashboard, drift_api, webhooks

    app.register_blueprint(webhooks.blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(drift_api.blueprint)
    app.register_blueprint(dashboard.blueprint)


def _prune_deliveries_after_webhooks(app: Flask, settings: Settings, store: Store) -> None:
    """Deliveries are written here, by webhooks: old ones are forgotten from here too,
    at most hourly and in a thread of their own, so no webhook waits for it."""
    pruner = DeliveryPruner(store.deliveries, timedelta(days=settings.delivery_retention_days))

    def after_webhook(response: Response) -> Response:
        if request.path == WEBHOOK_PATH:
            pruner.prune_if_due()
        return response

    app.after_request(after_webhook)


def _security_headers(response: Response) -> Response:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _warn_about_allowlist(patterns: tuple[str, ...]) -> None:
    # Entries are matched against `host/owner/name`; `acme/*` (no host) matches nothing,
    # which looks like a broken webhook rather than a typo in the settings.
    for pattern in patterns:
        first = pattern.split("/", 1)[0]
        if "/" not in pattern or not any(char in first for char in ".:*?["):
            logger.warning(
                "repo_allowlist entry %r has no host; entries look like github.com/acme/*",
                pattern,
            )


def start_app_workers(app: Any) -> None:
    """Start the job workers of the app's services (called in a gunicorn worker)."""
    services = _services_of(app)
    if services is not None and services.start_workers is not None:
        services.start_workers()


def stop_app_workers(app: Any) -> None:
    """Stop the job workers of the app's services (gunicorn worker exit)."""
    services = _services_of(app)
    if services is not None and services.stop_workers is not None:
        services.stop_workers()


def _services_of(app: Any) -> WebServices | None:
    context = getattr(app, "extensions", {}).get(EXTENSION_KEY)
    return context.services if isinstance(context, WebContext) else None


def create_app_from_env() -> Flask:
    """The app for plain `gunicorn 'runner.web.app:create_app_from_env()'`.

    Settings come from the `GITOPS_*` environment (and the YAML file named by
    `GITOPS_CONFIG_FILE`, if any). Runs in each gunicorn worker after the fork, so the
    Store and queue built here belong to that worker process alone.
    """
    # Lazy: the services module pulls in the whole PR flow (forges, git, Terraform).
    from runner.commands.services import build_web_services

    settings = load_settings(os.environ.get("GITOPS_CONFIG_FILE") or None)
    return create_app(settings, build_web_services(settings))
