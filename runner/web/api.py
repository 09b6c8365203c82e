"""Read-only JSON API and health check (metrics: runner/web/metrics.py).

Everything here reads the store; nothing changes state, so a GET never races a job.
Every route but `/healthz` needs a signed-in viewer: an API token or a browser
session (runner/web/auth/, the guard in front of every blueprint).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, jsonify, render_template, request, send_file
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from runner.results.model import PlanSummary
from runner.store.jobs import JobRecord, JobStatus
from runner.store.locks import LockInfo
from runner.store.runs import RunRecord
from runner.web.context import WEBHOOK_PATH, web_context
from runner.web.log_stream import confined_log

logger = logging.getLogger(__name__)

blueprint = Blueprint("api", __name__)

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
API_PREFIX = "/api/"


@blueprint.get("/healthz")
def healthz() -> tuple[Response, int]:
    """200 when the database answers; 503 otherwise. Says nothing about versions."""
    try:
        with web_context().services.store.read() as session:
            session.execute(text("SELECT 1"))
    except SQLAlchemyError:
        logger.exception("health check: the database does not answer")
        return jsonify({"status": "unavailable"}), 503
    return jsonify({"status": "ok"}), 200


@blueprint.get("/api/runs")
def list_runs() -> Response:
    """Newest runs first; `repo` (as stored, e.g. github.com/acme/infra), `pr`, `limit`."""
    repo = request.args.get("repo") or None
    pr = _int_arg("pr", minimum=1)
    limit = _int_arg("limit", minimum=1) or DEFAULT_LIMIT
    runs = web_context().services.store.runs.list_runs(
        repo=repo, pr_number=pr, limit=min(limit, MAX_LIMIT)
    )
    return jsonify({"runs": [run_json(run) for run in runs]})


@blueprint.get("/api/runs/<int:run_id>")
def get_run(run_id: int) -> Response:
    return jsonify(run_json(_run_or_404(run_id)))


@blueprint.get("/api/runs/<int:run_id>/log")
def get_run_log(run_id: int) -> Response | tuple[Response, int]:
    """The run's Terraform output as plain text (already masked when it was written).

    Signed-in viewers only, like every route here (runner/web/auth/guard.py): a log
    holds a plan's whole output.
    """
    run = _run_or_404(run_id)
    path = _log_file(run)
    if path is None:
        return _stored_log(run)
    response = send_file(path, mimetype="text/plain", max_age=0)
    response.headers["Content-Type"] = "text/plain; charset=utf-8"
    return response


@blueprint.get("/api/locks")
def list_locks() -> Response:
    locks = web_context().services.store.locks.list(repo=request.args.get("repo") or None)
    return jsonify({"locks": [lock_json(lock) for lock in locks]})


@blueprint.get("/api/jobs")
def list_jobs() -> Response:
    """Jobs, newest first; `status` (queued, running, done, ...) and `limit`."""
    status = request.args.get("status") or None
    if status is not None and status not in JobStatus.__members__.values():
        abort(400, description=f"unknown status {status!r}")
    limit = min(_int_arg("limit", minimum=1) or DEFAULT_LIMIT, MAX_LIMIT)
    jobs = web_context().services.store.jobs.list(status=status)
    # The store lists oldest first; the newest are what people look for.
    return jsonify({"jobs": [job_json(job) for job in reversed(jobs[-limit:])]})


@blueprint.app_errorhandler(400)
@blueprint.app_errorhandler(404)
@blueprint.app_errorhandler(405)
@blueprint.app_errorhandler(413)
def _json_error(error: Any) -> tuple[Response | str, int]:
    # API clients get JSON; a person on a dashboard page gets the page's own layout.
    if _person_on_a_page():
        return render_template("error.html", status=error.code, message=error.description), (
            error.code
        )
    return jsonify({"error": error.description}), error.code


def _person_on_a_page() -> bool:
    """A browser on a dashboard page (it asks for HTML first), not a forge or a script."""
    if request.path.startswith(API_PREFIX) or request.path == WEBHOOK_PATH:
        return False
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def _int_arg(name: str, minimum: int) -> int | None:
    raw = request.args.get(name)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        abort(400, description=f"{name} must be an integer")
    if value < minimum:
        abort(400, description=f"{name} must be at least {minimum}")
    return value


def _run_or_404(run_id: int) -> RunRecord:
    run = web_context().services.store.runs.get_run(run_id)
    if run is None:
        abort(404, description=f"no run {run_id}")
    return run


def _log_file(run: RunRecord) -> Path | None:
    """The run's log if it is a file under the data dir; never anything else."""
    return confined_log(run.log_path, web_context().settings.data_dir)


def _stored_log(run: RunRecord) -> Response:
    """The log another machine wrote and kept in the plan store (GITOPS_PLAN_STORE)."""
    name = Path(run.log_path).name if run.log_path else ""
    kept = web_context().services.plan_store.read_log(name) if name else None
    if kept is None:
        abort(404, description="this run has no log file")
    return Response(kept, content_type="text/plain; charset=utf-8")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value


def summary_json(summary: PlanSummary | None) -> dict[str, int] | None:
    if summary is None:
        return None
    counts = asdict(summary)
    counts["import"] = counts.pop("import_")
    return counts


def run_json(run: RunRecord) -> dict[str, Any]:
    data = {name: _plain(value) for name, value in vars(run).items() if name != "summary"}
    data["summary"] = summary_json(run.summary)
    data["log_path"] = None  # a server path is no business of API clients
    data["log_url"] = f"/api/runs/{run.id}/log" if run.log_path else None
    return data


def lock_json(lock: LockInfo) -> dict[str, Any]:
    return {name: _plain(value) for name, value in vars(lock).items()}


def job_json(job: JobRecord) -> dict[str, Any]:
    """A job without its payload (the whole event), but with what it is about."""
    data = {name: _plain(value) for name, value in vars(job).items() if name != "payload"}
    data.update(job_subject(job))
    return data


def job_subject(job: JobRecord) -> dict[str, Any]:
    """Repository and PR number of a job, read defensively from its versioned payload."""
    payload = job.payload if isinstance(job.payload, dict) else {}
    repo = payload.get("repo") if isinstance(payload.get("repo"), dict) else {}
    pr = payload.get("pr") if isinstance(payload.get("pr"), dict) else {}
    number = pr.get("number", payload.get("pr_number"))
    return {
        "repo": repo.get("full_name") if isinstance(repo.get("full_name"), str) else None,
        "pr_number": number if isinstance(number, int) else None,
    }
