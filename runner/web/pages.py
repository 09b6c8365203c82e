"""The dashboard's pages beyond `/`: a project, runs, a run (its log live), locks, audit.

Server-rendered from Jinja templates (autoescaped: names, branches and errors come
from pull requests anyone may open), reading through read_model.py like the API, so a
page and `/api/v1/` never disagree. The one action, unlock, is a form POST carrying
the session's CSRF token, and needs the operator role (auth/guard.py checks both).
"""

from __future__ import annotations

from typing import TypeVar
from urllib.parse import urlencode

from flask import Blueprint, Response, abort, redirect, render_template, request
from pydantic import BaseModel, ValidationError

from runner.web import api_models as m
from runner.web.actions import ActionRefused, queue_reconcile, start_drift_scan, unlock
from runner.web.api_v1 import principal_name, runs_query
from runner.web.auth import Role, require_role
from runner.web.charts import drift_chart
from runner.web.context import web_context
from runner.web.dashboard import display_helpers, project_url, run_row
from runner.web.openapi import describe, query_values
from runner.web.read_model import drift_history, find_project, page_of_runs, project_runs

blueprint = Blueprint("pages", __name__)

Query = TypeVar("Query", bound=BaseModel)


@blueprint.get("/projects/view")
def project_page() -> str:
    fields = {k: v for k, v in query_values().items() if k in m.ProjectQuery.model_fields}
    try:
        query = m.ProjectQuery.model_validate(fields)
    except ValidationError as error:
        abort(400, description=describe(error))
    context = web_context()
    status = find_project(context, query.repo, query.dir, query.workspace)
    if status is None:
        abort(404, description=f"no project {query.dir} ({query.workspace}) in {query.repo}")
    history = drift_history(context, status)
    return render_template(
        "project.html",
        status=status,
        history=history,
        chart=drift_chart(history),
        runs=[run_row(run, context.settings) for run in project_runs(context, status)],
        notice=request.args.get("notice", ""),
        **display_helpers(),
    )


@blueprint.get("/runs")
def runs_page() -> str:
    query, problem = _parse(m.RunsQuery)
    return _runs_table("runs.html", query, problem)


@blueprint.get("/runs/<int:run_id>")
def run_page(run_id: int) -> str:
    context = web_context()
    run = context.services.store.runs.get_run(run_id)
    if run is None:
        abort(404, description=f"no run {run_id}")
    return render_template(
        "run.html",
        row=run_row(run, context.settings),
        plans=context.services.store.runs.plans_of_run(run_id),
        stream_url=f"/api/v1/runs/{run_id}/log/stream" if run.log_path else None,
        **display_helpers(),
    )


@blueprint.get("/locks")
def locks_page() -> str:
    return render_template(
        "locks.html",
        locks=web_context().services.store.locks.list(),
        released=request.args.get("released", ""),
        **display_helpers(),
    )


@blueprint.post("/locks/unlock")
@require_role(Role.OPERATOR)
def unlock_form() -> Response:
    """The unlock button; back to the locks page, which says what was released."""
    form = request.form
    try:
        body = m.UnlockBody.model_validate(
            {name: form.get(name) for name in ("repo", "dir", "workspace") if form.get(name)}
        )
    except ValidationError as error:
        abort(400, description=describe(error))
    done = unlock(
        web_context().services.store, body.repo, body.dir, body.workspace, who=principal_name()
    )
    released = f"{body.dir} ({body.workspace})" if done.released else "nothing"
    return redirect("/locks?" + urlencode({"released": released}), code=303)  # type: ignore[return-value]


@blueprint.post("/drift/scan")
@require_role(Role.OPERATOR)
def drift_scan_form() -> Response:
    """A project page's "Scan for drift" button: the scan runs in the background."""
    repo, project = request.form.get("repo") or None, request.form.get("project") or None
    try:
        ticket = start_drift_scan(web_context(), repo, project, who=principal_name())
        notice = f"drift scan {ticket.id} {'started' if ticket.started else 'already running'}"
    except ActionRefused as refused:
        notice = f"no drift scan: {refused.message}"
    return _back_with(notice)


@blueprint.post("/reconcile")
@require_role(Role.OPERATOR)
def reconcile_form() -> Response:
    """A project page's "Reconcile now" button: a pass is queued like a poll."""
    try:
        queued = queue_reconcile(web_context(), request.form.get("repo", ""), principal_name())
        notice = f"reconcile of {queued.repo} queued (job {queued.job_id})"
    except ActionRefused as refused:
        notice = f"no reconcile: {refused.message}"
    return _back_with(notice)


def _back_with(notice: str) -> Response:
    """Back to the project page the form came from (rebuilt here: never a URL from the
    request), saying what happened."""
    form = request.form
    back = project_url(form.get("repo", ""), form.get("dir", ""), form.get("workspace", ""))
    return redirect(f"{back}&{urlencode({'notice': notice})}", code=303)  # type: ignore[return-value]


@blueprint.get("/audit")
def audit_page() -> str:
    query, problem = _parse(m.AuditQuery)
    filters = {k: v for k, v in (("repo", query.repo), ("project", query.project)) if v}
    csv_url = "/api/v1/audit.csv" + (f"?{urlencode(filters)}" if filters else "")
    return _runs_table("audit.html", query, problem, csv_url=csv_url)


def _runs_table(
    template: str, query: m.RunsQuery | m.AuditQuery, problem: str, **extra: str
) -> str:
    """A page of runs under the page's filters, paged by cursor like the API."""
    context = web_context()
    page = page_of_runs(context, runs_query(query), query.limit, query.cursor)
    return render_template(
        template,
        query=query,
        problem=problem,
        runs=[run_row(run, context.settings) for run in page.items],
        next_url=_next_url(page.next_cursor),
        **extra,
        **display_helpers(),
    )


def _parse(model: type[Query]) -> tuple[Query, str]:
    """The page's filters, or its defaults and what was wrong (shown above the table)."""
    try:
        return model.model_validate(query_values()), ""
    except ValidationError as error:
        return model(), describe(error)  # type: ignore[call-arg]


def _next_url(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    return f"{request.path}?{urlencode({**query_values(), 'cursor': cursor})}"
