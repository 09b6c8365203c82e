"""What a request handler reaches: the app's settings, services and metrics.

`create_app` (app.py) attaches one `WebContext` to each app; the blueprints
(webhooks, api, drift_api, dashboard) read it with `web_context()`. Kept apart from
the factory so the blueprints never import the module that imports them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from flask import current_app
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from runner.drift.triggers import ScanTicket
from runner.jobs.model import WorkEvent
from runner.results.drift import DriftResult
from runner.settings import Settings
from runner.store.deliveries import DeliveryRef
from runner.store.jobs import JobStatus
from runner.store.store import Store

EXTENSION_KEY = "gitops_runner"
WEBHOOK_PATH = "/events"

# The drift API's seams (see WebServices and runner/drift/triggers.py).
# (repo, project) -> the scan job, started in the background; never waits for the scan.
DriftTrigger = Callable[[str | None, str | None], ScanTicket]
# repo -> the newest stored result of every project (of that repository).
DriftReport = Callable[[str | None], Sequence[DriftResult]]

# A webhook acknowledgement should take milliseconds; the top buckets catch regressions.
_ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Submit(Protocol):
    """The job queue's submit (`JobQueue.submit`): the job and its delivery in one write."""

    def __call__(self, event: WorkEvent, *, delivery: DeliveryRef | None = None) -> int: ...


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
    submit: Submit
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
