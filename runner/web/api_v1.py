"""`/api/v1/`: projects and their sync state, runs, logs, locks, the audit, and actions.

The handlers read through read_model.py and act through actions.py; the table `ROUTES`
at the bottom is the API: it registers the routes (openapi.py) and is the OpenAPI
document served at `/api/openapi.json`. Viewers read; operators unlock, start drift
scans and queue reconciles.
The older `/api/` routes (api.py, drift_api.py) stay as they were.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from runner.results.masking import Masker
from runner.store.runs import RunQuery, RunRecord
from runner.web import api_models as m
from runner.web.actions import ActionRefused, queue_reconcile, start_drift_scan, unlock
from runner.web.audit import audit_query, csv_lines, every_apply
from runner.web.auth import Role, current_principal
from runner.web.context import WebContext, web_context
from runner.web.log_stream import (
    DEFAULT_MAX_STREAMS,
    LogFollower,
    StreamSlots,
    confined_log,
    parse_offset,
    whole_log_events,
)
from runner.web.openapi import ApiError, ApiRoute, openapi_document, register
from runner.web.read_model import (
    all_projects,
    drift_history,
    find_project,
    page_of_projects,
    page_of_runs,
    project_runs,
    state_counts,
)

blueprint = Blueprint("api_v1", __name__)

OPENAPI_PATH = "/api/openapi.json"
_STREAMS_KEY = "gitops_runner_log_streams"


@blueprint.record_once
def _stream_slots(state) -> None:  # type: ignore[no-untyped-def]
    state.app.extensions[_STREAMS_KEY] = StreamSlots(DEFAULT_MAX_STREAMS)


# ---- reading -------------------------------------------------------------------------------


def list_projects(query: m.ProjectsQuery) -> m.ProjectPage:
    statuses = all_projects(web_context(), query.repo)
    counts = state_counts(statuses)
    if query.state is not None:
        statuses = [s for s in statuses if s.state is query.state]
    page = page_of_projects(statuses, query.limit, query.cursor)
    items = [m.project_out(s) for s in page.items]
    return m.ProjectPage(items=items, counts=counts, next_cursor=page.next_cursor)


def get_project(query: m.ProjectQuery) -> m.ProjectDetailOut:
    context = web_context()
    status = find_project(context, query.repo, query.dir, query.workspace)
    if status is None:
        raise ApiError(404, f"no project {query.dir} ({query.workspace}) in {query.repo}")
    return m.ProjectDetailOut(
        project=m.project_out(status),
        drift_history=[m.drift_out(r) for r in drift_history(context, status)],
        runs=[m.run_out(run) for run in project_runs(context, status)],
    )


def runs_query(query: m.RunsQuery | m.AuditQuery) -> RunQuery:
    """The store's filter of an API (or page) query; the audit's is its own."""
    if isinstance(query, m.AuditQuery):
        return audit_query(query.repo, query.project)
    return RunQuery(
        repo=query.repo,
        project=query.project,
        workspace=query.workspace,
        pr_number=query.pr,
        status=query.status,
        trigger=query.trigger,
        command=query.command,
        author=query.author,
    )


def list_runs(query: m.RunsQuery) -> m.RunPage:
    return list_runs_of(runs_query(query), query.limit, query.cursor)


def get_run(run_id: int) -> m.RunDetailOut:
    run = run_or_404(run_id)
    return m.run_detail_out(run, web_context().services.store.runs.plans_of_run(run_id))


def get_run_log(run_id: int) -> Response:
    """The log so far, masked, as text (the stream below follows it live)."""
    context = web_context()
    text = _log_text(context, run_or_404(run_id))
    return Response(log_masker(context).mask(text), mimetype="text/plain")


def stream_run_log(run_id: int) -> Response:
    context = web_context()
    run = run_or_404(run_id)
    here = confined_log(run.log_path, context.settings.data_dir)
    if run.status.finished and here is None and run.log_path:
        # Finished on another machine: its log is in the plan store, if anywhere.
        text = log_masker(context).mask(_log_text(context, run))
        return Response(whole_log_events(text, run.status.value), mimetype="text/event-stream")
    return log_stream_response(context, run_id)


def list_locks() -> m.LockList:
    locks = web_context().services.store.locks.list()
    return m.LockList(items=[m.lock_out(lock) for lock in locks])


def list_audit(query: m.AuditQuery) -> m.RunPage:
    return list_runs_of(runs_query(query), query.limit, query.cursor)


def list_runs_of(query: RunQuery, limit: int, cursor: str | None) -> m.RunPage:
    page = page_of_runs(web_context(), query, limit, cursor)
    return m.RunPage(items=[m.run_out(run) for run in page.items], next_cursor=page.next_cursor)


def export_audit(query: m.AuditQuery) -> Response:
    return audit_csv_response(runs_query(query))


# ---- acting --------------------------------------------------------------------------------


def post_unlock(body: m.UnlockBody) -> m.UnlockOut:
    done = unlock(
        web_context().services.store, body.repo, body.dir, body.workspace, who=principal_name()
    )
    return m.UnlockOut(released=done.released, lock=m.lock_out(done.lock) if done.lock else None)


def post_drift_scan(body: m.DriftScanBody) -> m.ScanOut:
    try:
        ticket = start_drift_scan(web_context(), body.repo, body.project, who=principal_name())
    except ActionRefused as refused:
        headers = {"Retry-After": "60"} if refused.status == 429 else None
        raise ApiError(refused.status, refused.message, headers) from None
    return m.ScanOut(
        id=ticket.id,
        status=ticket.status.value,
        started=ticket.started,
        repo=ticket.request.repo,
        project=ticket.request.project,
        url=f"/api/drift/scans/{ticket.id}",
    )


def post_reconcile(body: m.ReconcileBody) -> m.ReconcileOut:
    try:
        queued = queue_reconcile(web_context(), body.repo, who=principal_name())
    except ActionRefused as refused:
        raise ApiError(refused.status, refused.message) from None
    return m.ReconcileOut(repo=queued.repo, job=queued.job_id)


# ---- shared with the pages -----------------------------------------------------------------


def principal_name() -> str:
    principal = current_principal()
    return principal.name if principal is not None else "anonymous"


def run_or_404(run_id: int) -> RunRecord:
    run = web_context().services.store.runs.get_run(run_id)
    if run is None:
        raise ApiError(404, f"no run {run_id}")
    return run


def _log_text(context: WebContext, run: RunRecord) -> str:
    """The log on this machine, else the copy another worker kept in the plan store."""
    path = confined_log(run.log_path, context.settings.data_dir)
    if path is not None:
        return path.read_text("utf-8", "replace")
    name = Path(run.log_path).name if run.log_path else ""
    kept = context.services.plan_store.read_log(name) if name else None
    if kept is None:
        raise ApiError(404, "this run has no log file")
    return kept.decode("utf-8", "replace")


def log_masker(context: WebContext) -> Masker:
    return Masker.from_secrets(context.settings.secret_values())


def log_stream_response(context: WebContext, run_id: int) -> Response:
    """The SSE response of a run's log; 503 while this process streams too many."""
    slots: StreamSlots = current_app.extensions[_STREAMS_KEY]
    if not slots.take():
        raise ApiError(503, "too many log streams are open; try again", {"Retry-After": "5"})
    data_dir = context.settings.data_dir
    follower = LogFollower(
        run_id=run_id,
        read_run=context.services.store.runs.get_run,
        find_log=lambda run: confined_log(run.log_path, data_dir),
        masker=log_masker(context),
    )
    offset = parse_offset(request.headers.get("Last-Event-ID"))
    response = Response(follower.events(offset), mimetype="text/event-stream")
    # Given back when the server closes the response, even if it was never read.
    response.call_on_close(slots.give_back)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass events on at once
    return response


def audit_csv_response(query: RunQuery) -> Response:
    runs = every_apply(web_context().services.store.runs, query)
    response = Response(stream_with_context(csv_lines(runs)), mimetype="text/csv")
    response.headers["Content-Disposition"] = 'attachment; filename="gitops-audit.csv"'
    return response


# ---- the table -----------------------------------------------------------------------------

V1 = "/api/v1"
ROUTES: list[ApiRoute] = [
    ApiRoute("GET", f"{V1}/projects", "list_projects", "Every project with its sync state",
             list_projects, m.ProjectPage, query=m.ProjectsQuery, tags=("projects",)),
    ApiRoute("GET", f"{V1}/project", "get_project",
             "One project: its state, drift history and runs", get_project,
             m.ProjectDetailOut, query=m.ProjectQuery, errors=(404,), tags=("projects",)),
    ApiRoute("GET", f"{V1}/runs", "list_runs", "Runs, newest first, filtered", list_runs,
             m.RunPage, query=m.RunsQuery, tags=("runs",)),
    ApiRoute("GET", f"{V1}/runs/{{run_id}}", "get_run", "One run with its plan", get_run,
             m.RunDetailOut, errors=(404,), tags=("runs",)),
    ApiRoute("GET", f"{V1}/runs/{{run_id}}/log", "get_run_log", "The run's log so far (text)",
             get_run_log, None, media_type="text/plain", errors=(404,), tags=("runs",)),
    ApiRoute("GET", f"{V1}/runs/{{run_id}}/log/stream", "stream_run_log",
             "The run's log, live (Server-Sent Events: log, then end)", stream_run_log, None,
             media_type="text/event-stream", errors=(404, 503), tags=("runs",)),
    ApiRoute("GET", f"{V1}/locks", "list_locks", "Held project locks", list_locks,
             m.LockList, tags=("locks",)),
    ApiRoute("POST", f"{V1}/locks/unlock", "unlock", "Release a project lock", post_unlock,
             m.UnlockOut, body=m.UnlockBody, role=Role.OPERATOR, tags=("locks",)),
    ApiRoute("GET", f"{V1}/audit", "list_audit", "Every apply: who, what, when, PR, commit",
             list_audit, m.RunPage, query=m.AuditQuery, tags=("audit",)),
    ApiRoute("GET", f"{V1}/audit.csv", "export_audit", "The audit as CSV", export_audit,
             None, query=m.AuditQuery, media_type="text/csv", tags=("audit",)),
    ApiRoute("POST", f"{V1}/drift/scans", "start_drift_scan",
             "Start a drift scan in the background", post_drift_scan, m.ScanOut,
             body=m.DriftScanBody, status=202, role=Role.OPERATOR, errors=(404, 429, 503),
             tags=("drift",)),
    ApiRoute("POST", f"{V1}/reconcile", "queue_reconcile",
             "Queue a reconcile pass of a reconciled repository", post_reconcile,
             m.ReconcileOut, body=m.ReconcileBody, status=202, role=Role.OPERATOR,
             errors=(404,), tags=("reconcile",)),
]  # fmt: skip
register(blueprint, ROUTES)


@blueprint.get(OPENAPI_PATH)
def openapi_json() -> Response:
    """The document of ROUTES: what this server answers, generated from its types."""
    from importlib.metadata import version

    document = openapi_document(ROUTES, title="gitops-runner", version=version("gitops-runner"))
    return jsonify(document)
