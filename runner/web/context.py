"""What a request handler reaches: the app's settings, services and metrics.

`create_app` (app.py) attaches one `WebContext` to each app; the blueprints
(webhooks, api, drift_api, dashboard) read it with `web_context()`. Kept apart from
the factory so the blueprints never import the module that imports them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from flask import current_app

from runner.drift.triggers import ScanTicket
from runner.jobs.model import WorkEvent
from runner.results.drift import DriftResult
from runner.settings import Settings
from runner.store.deliveries import DeliveryRef
from runner.store.plan_files import LocalPlanStore, PlanStore
from runner.store.store import Store
from runner.web.metrics import WebMetrics  # re-exported: the factory builds one per app

EXTENSION_KEY = "gitops_runner"
WEBHOOK_PATH = "/events"

# The drift API's seams (see WebServices and runner/drift/triggers.py).
# (repo, project) -> the scan job, started in the background; never waits for the scan.
DriftTrigger = Callable[[str | None, str | None], ScanTicket]
# repo -> the newest stored result of every project (of that repository).
DriftReport = Callable[[str | None], Sequence[DriftResult]]


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
    # Where finished runs' logs are read when this machine lacks the file (GITOPS_PLAN_STORE).
    plan_store: PlanStore = field(default_factory=LocalPlanStore)


@dataclass(frozen=True)
class WebContext:
    """Everything a request handler needs, attached to the app it belongs to."""

    settings: Settings
    services: WebServices
    metrics: WebMetrics


def web_context() -> WebContext:
    """The context of the app handling the current request."""
    return current_app.extensions[EXTENSION_KEY]
