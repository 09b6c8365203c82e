"""`/`: every project's sync state at a glance, then active jobs, locks, drift, recent runs.

Server-rendered from Jinja templates (base.html and its pages); autoescaped, because
repo names, branch names and errors come from pull requests anyone may open. The
helpers here (`run_row`, `display_helpers`) format records for every page (pages.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, render_template

from runner.drift.reports import describe
from runner.events.model import url_host
from runner.results.drift import DriftResult, DriftStatus
from runner.results.model import PlanSummary
from runner.settings import Settings
from runner.store.jobs import JobStatus
from runner.store.runs import RunRecord, RunStatus
from runner.web.api import job_subject
from runner.web.context import web_context
from runner.web.drift_api import drift_overview
from runner.web.read_model import all_projects, state_counts
from runner.web.sync_state import SyncState

blueprint = Blueprint("dashboard", __name__)

RECENT_RUNS = 50
ACTIVE_JOBS = 100

# Status → CSS class; anything unknown renders neutral.
_STATUS_CLASS = {
    RunStatus.SUCCESS: "ok",
    RunStatus.NO_CHANGES: "ok",
    RunStatus.FAILED: "bad",
    RunStatus.ERRORED: "bad",
    RunStatus.INTERRUPTED: "bad",
    RunStatus.RUNNING: "busy",
    RunStatus.QUEUED: "busy",
}
_DRIFT_CLASS = {
    DriftStatus.IN_SYNC: "ok",
    DriftStatus.DRIFT: "bad",
    DriftStatus.ERROR: "bad",
    DriftStatus.PENDING: "busy",
    DriftStatus.BUSY: "busy",
}


@dataclass(frozen=True)
class RunRow:
    """One run as the template shows it: every value already a display string."""

    run: RunRecord
    pr_url: str | None
    status_class: str
    summary: str
    started: str
    duration: str
    log_url: str | None
    page_url: str


@dataclass(frozen=True)
class DriftRow:
    """One project's latest drift result, as the template shows it."""

    result: DriftResult
    status_class: str
    what: str
    scanned: str


@blueprint.get("/")
def index() -> str:
    context = web_context()
    store = context.services.store
    runs = [run_row(run, context.settings) for run in store.runs.list_runs(limit=RECENT_RUNS)]
    projects = all_projects(context)
    jobs = [
        job
        for status in (JobStatus.RUNNING, JobStatus.QUEUED)
        for job in store.jobs.list(status=status, limit=ACTIVE_JOBS)
    ]
    return render_template(
        "dashboard.html",
        runs=runs,
        locks=store.locks.list(),
        jobs=[(job, job_subject(job)) for job in jobs],
        drift=[_drift_row(result) for result in drift_overview(context).results],
        projects=projects,
        counts=state_counts(projects),
        **display_helpers(),
    )


def display_helpers() -> dict[str, Any]:
    """What every page's template formats with."""
    return {
        "format_time": format_time,
        "format_summary": format_summary,
        "project_url": project_url,
        "states": list(SyncState),
    }


def project_url(repo: str, dir: str, workspace: str) -> str:
    return "/projects/view?" + urlencode({"repo": repo, "dir": dir, "workspace": workspace})


def run_row(run: RunRecord, settings: Settings) -> RunRow:
    """A run with every value formatted for a table row."""
    return RunRow(
        run=run,
        pr_url=pr_url(run.repo, run.pr_number, settings),
        status_class=_STATUS_CLASS.get(run.status, ""),
        summary=format_summary(run.summary),
        started=format_time(run.started_at),
        duration=_duration(run.started_at, run.finished_at),
        log_url=f"/api/v1/runs/{run.id}/log" if run.log_path else None,
        page_url=f"/runs/{run.id}",
    )


def _drift_row(result: DriftResult) -> DriftRow:
    return DriftRow(
        result=result,
        status_class=_DRIFT_CLASS.get(result.status, ""),
        what=describe(result).replace("`", ""),  # Slack markup, not HTML
        scanned=format_time(result.scanned_at),
    )


def pr_url(repo: str, pr_number: int | None, settings: Settings) -> str | None:
    """Web URL of a run's PR, from the stored repo key (`host/owner/name`).

    Runs from the CLI store a local path instead, which has no PR to link to.
    """
    if pr_number is None or repo.startswith("/") or repo.count("/") < 2:
        return None
    host = repo.split("/", 1)[0]
    if host == url_host(settings.gitlab_url):
        return f"https://{repo}/-/merge_requests/{pr_number}"
    return f"https://{repo}/pull/{pr_number}"


def format_summary(summary: PlanSummary | None) -> str:
    if summary is None:
        return ""
    parts = [
        f"+{summary.add}",
        f"~{summary.change}",
        f"-{summary.destroy}",
    ]
    if summary.replace:
        parts.append(f"±{summary.replace}")
    if summary.import_:
        parts.append(f"import {summary.import_}")
    if summary.drifted:
        parts.append(f"drift {summary.drifted}")
    return " ".join(parts)


def format_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else ""


def _duration(started: datetime, finished: datetime | None) -> str:
    if finished is None:
        return ""
    seconds = max(0, int((finished - started).total_seconds()))
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
