"""`/api/drift`: the latest drift of every project, and scans on request.

`GET` reads the store. `POST` only records a scan job and starts it in the background
(runner/drift/triggers.py): a scan plans every project of a repository and takes
minutes, so the answer is `202` with the scan's id, never the result; the result shows
up in `GET /api/drift` and the scan's state in `GET /api/drift/scans/<id>`.

`POST` is unauthenticated like the rest of the API (docs/operations.md: keep it behind
the network boundary), so it accepts only what the operator configured: repositories
from the server config's `repos:`, never a URL or path from the request. It insists on
`Content-Type: application/json`, which a browser on another site cannot send without
a CORS preflight, so a web page cannot make a visitor's browser trigger scans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, abort, jsonify, request

from runner.drift.triggers import (
    ScanRefused,
    ScansBusy,
    ScansStopped,
    ScanStatus,
    ScanTicket,
    drift_scan_status,
    recent_drift_scans,
)
from runner.results.drift import DriftResult, DriftStatus
from runner.store.drift import DriftStore
from runner.web.api import summary_json
from runner.web.context import WebContext, web_context

blueprint = Blueprint("drift_api", __name__)

RECENT_SCANS = 5
_BODY_FIELDS = frozenset({"repo", "project"})


@dataclass(frozen=True)
class DriftOverview:
    """What GET /api/drift and the dashboard show."""

    results: tuple[DriftResult, ...]
    scans: tuple[ScanStatus, ...]

    def counts(self) -> dict[str, int]:
        return {
            status.value: sum(r.status is status for r in self.results) for status in DriftStatus
        }


def drift_overview(context: WebContext, repo: str | None = None) -> DriftOverview:
    """The newest result per project and the latest scans, from whichever process asks."""
    services = context.services
    if services.drift_report is not None:
        results: Sequence[DriftResult] = services.drift_report(repo)
    else:
        results = DriftStore(services.store).latest(repo)
    scans = recent_drift_scans(services.store, RECENT_SCANS)
    return DriftOverview(tuple(results), tuple(scans))


@blueprint.get("/api/drift")
def get_drift() -> Response:
    """Latest result per project (`repo`: a configured repository, or a key as stored)."""
    overview = drift_overview(web_context(), request.args.get("repo") or None)
    return jsonify(
        {
            "counts": overview.counts(),
            "results": [drift_result_json(r) for r in overview.results],
            "scans": [scan_json(s) for s in overview.scans],
        }
    )


@blueprint.post("/api/drift")
def post_drift() -> tuple[Response, int]:
    """Start a scan in the background; 202 with its id. Body: `{"repo"?, "project"?}`."""
    trigger = web_context().services.drift_trigger
    if trigger is None:
        return _error("drift scans are not available in this process", 503)
    if not request.is_json:
        return _error(
            "send Content-Type: application/json with a JSON object body, "
            'e.g. {} or {"repo": "acme/infra", "project": "app"}',
            415,
        )
    repo, project = _scan_body()
    try:
        ticket = trigger(repo, project)
    except ScanRefused as error:
        abort(400, description=str(error))
    except ScansBusy as error:
        response = _error(str(error), 429)
        response[0].headers["Retry-After"] = "60"
        return response
    except ScansStopped as error:
        return _error(str(error), 503)
    response = jsonify(ticket_json(ticket))
    response.headers["Location"] = f"/api/drift/scans/{ticket.id}"
    return response, 202


@blueprint.get("/api/drift/scans/<int:scan_id>")
def get_scan(scan_id: int) -> Response:
    status = drift_scan_status(web_context().services.store, scan_id)
    if status is None:
        abort(404, description=f"no drift scan {scan_id}")
    return jsonify(scan_json(status))


def _scan_body() -> tuple[str | None, str | None]:
    """`repo` and `project` from a JSON object body; `{}` (or no body) scans everything."""
    body = request.get_json(silent=True) if request.get_data(cache=True).strip() else {}
    if not isinstance(body, dict):
        abort(400, description="the body must be a JSON object")
    unknown = sorted(set(body) - _BODY_FIELDS)
    if unknown:
        abort(400, description=f"unknown field(s) {', '.join(unknown)}; known: project, repo")
    return _optional_string(body, "repo"), _optional_string(body, "project")


def _optional_string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        abort(400, description=f"{name} must be a string")
    return value


def _error(message: str, status: int) -> tuple[Response, int]:
    return jsonify({"error": message}), status


# ---- JSON shapes ------------------------------------------------------------------------


def drift_result_json(result: DriftResult) -> dict[str, Any]:
    """A stored result; values of attributes are never stored, so never shown."""
    return {
        "id": result.id,
        "repo": result.repo,
        "project": result.project,
        "dir": result.dir,
        "workspace": result.workspace,
        "status": result.status.value,
        "commit": result.commit,
        "summary": summary_json(result.summary),
        "drifted": [
            {
                "address": d.address,
                "actions": list(d.actions),
                "changed_attributes": list(d.changed_attributes),
            }
            for d in result.drifted
        ],
        "changes": [{"address": c.address, "actions": list(c.actions)} for c in result.changes],
        "error": result.error or None,
        "correction": result.correction.value if result.correction else None,
        "correction_reason": result.correction_reason or None,
        "plan_checksum": result.plan_checksum,
        "notified": result.notified,
        "issue_number": result.issue_number,
        "scanned_at": result.scanned_at.isoformat() if result.scanned_at else None,
    }


def scan_json(status: ScanStatus) -> dict[str, Any]:
    return {
        "id": status.id,
        "status": status.status.value,
        "repo": status.request.repo,
        "project": status.request.project,
        "created_at": _iso(status.created_at),
        "started_at": _iso(status.started_at),
        "finished_at": _iso(status.finished_at),
        "error": status.error,
        "url": f"/api/drift/scans/{status.id}",
    }


def ticket_json(ticket: ScanTicket) -> dict[str, Any]:
    return {
        "id": ticket.id,
        "status": ticket.status.value,
        # False when the same scan was already running: this request joined it.
        "started": ticket.started,
        "repo": ticket.request.repo,
        "project": ticket.request.project,
        "url": f"/api/drift/scans/{ticket.id}",
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
