"""Prometheus metrics at `/metrics`: webhooks, jobs, locks, runs, durations, drift.

Two kinds of numbers. What only the web process sees (webhooks received, how fast
they were answered) is counted in the process; what the store knows (queue depth,
locks, runs by kind and result, run durations, drifted projects) is read from the
database at scrape time, so every process gives the same answer.

With several gunicorn worker processes a scrape reaches one of them: the in-process
counters then live in prometheus-client's multiprocess mode (files under
`PROMETHEUS_MULTIPROC_DIR`, which `serve` sets up; see runner/web/server.py) and
every scrape sums all workers' files.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Blueprint, Response, current_app
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from runner.store.jobs import JobStatus
from runner.store.stats import StoreStats
from runner.store.store import Store

METRICS_EXTENSION = "gitops_runner_metrics"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# A webhook acknowledgement should take milliseconds; the top buckets catch regressions.
_ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Terraform runs take seconds to an hour (GITOPS_TERRAFORM_TIMEOUT's default).
RUN_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

blueprint = Blueprint("metrics", __name__)


class WebMetrics:
    """Prometheus metrics of one app, in a registry of its own.

    Per-app rather than the global registry so that several apps in one process (tests)
    never collide on metric names or see each other's counts.
    """

    def __init__(self, store: Store) -> None:
        # What /metrics exposes; in multiprocess mode the counters below are read back
        # from every worker's files instead of from this process's registry.
        self.registry = CollectorRegistry()
        counters = self.registry
        if os.environ.get(MULTIPROC_ENV):
            counters = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.registry)
        self.webhooks = Counter(
            "gitops_webhooks",
            "Webhook deliveries received, by forge and outcome.",
            ["forge", "outcome"],
            registry=counters,
        )
        self.ack_seconds = Histogram(
            "gitops_webhook_ack_seconds",
            "Time from receiving a webhook to answering it.",
            ["forge"],
            buckets=_ACK_BUCKETS,
            registry=counters,
        )
        self.registry.register(StoreCollector(store))
        # The labelled children, looked up once: `labels()` takes a lock and builds a
        # key on every call, and this runs for every webhook.
        self._counted: dict[tuple[str, str], Any] = {}
        self._timed: dict[str, Any] = {}

    def observe_webhook(self, forge: str, outcome: str, seconds: float) -> None:
        counter = self._counted.get((forge, outcome))
        if counter is None:
            counter = self._counted[(forge, outcome)] = self.webhooks.labels(forge, outcome)
        timer = self._timed.get(forge)
        if timer is None:
            timer = self._timed[forge] = self.ack_seconds.labels(forge)
        counter.inc()
        timer.observe(seconds)


def install_metrics(app: object, metrics: WebMetrics) -> None:
    """Expose `metrics` at /metrics on `app` (sign-in is the guard's business)."""
    app.extensions[METRICS_EXTENSION] = metrics  # type: ignore[attr-defined]
    app.register_blueprint(blueprint)  # type: ignore[attr-defined]


@blueprint.get("/metrics")
def scrape() -> Response:
    registry = current_app.extensions[METRICS_EXTENSION].registry
    # content_type, not mimetype: Flask would append a second `charset=utf-8`.
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


class StoreCollector(Collector):
    """Everything the store knows, read at scrape time (cheap aggregate queries)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._stats = StoreStats(store)

    def describe(self) -> list:
        # Without this, registering would call collect() (and query the DB) at app build.
        return [family for family, _ in self._families()]

    def collect(self) -> list:
        families = []
        for family, fill in self._families():
            fill(family)
            families.append(family)
        return families

    def _families(self) -> list:
        return [
            (GaugeMetricFamily("gitops_jobs", "Jobs queued or running.", labels=["status"]),
             self._jobs),
            (GaugeMetricFamily("gitops_locks_held", "Project locks currently held."),
             self._locks),
            (CounterMetricFamily("gitops_runs", "Terraform runs recorded, by command, "
                                 "trigger and result.", labels=["command", "trigger", "status"]),
             self._runs),
            (HistogramMetricFamily("gitops_run_duration_seconds", "Duration of finished "
                                   "Terraform runs, by command.", labels=["command"]),
             self._durations),
            (GaugeMetricFamily("gitops_drift_projects", "Projects by the status of their "
                               "newest drift scan (drift, pending, in_sync, error, busy).",
                               labels=["status"]),
             self._drift),
        ]  # fmt: skip

    def _jobs(self, family: GaugeMetricFamily) -> None:
        for status in (JobStatus.QUEUED, JobStatus.RUNNING):
            family.add_metric([status.value], self._store.jobs.count(status))

    def _locks(self, family: GaugeMetricFamily) -> None:
        family.add_metric([], len(self._store.locks.list()))

    def _runs(self, family: CounterMetricFamily) -> None:
        for row in self._stats.run_counts():
            family.add_metric([row.command, row.trigger, row.status], row.count)

    def _durations(self, family: HistogramMetricFamily) -> None:
        for histogram in self._stats.run_durations(RUN_BUCKETS):
            buckets = [(_bound(le), count) for le, count in histogram.buckets]
            buckets.append(("+Inf", histogram.count))
            family.add_metric([histogram.command], buckets, histogram.sum_seconds)

    def _drift(self, family: GaugeMetricFamily) -> None:
        for status, count in sorted(self._stats.drift_statuses().items()):
            family.add_metric([status], count)


def _bound(value: float) -> str:
    return repr(float(value))
