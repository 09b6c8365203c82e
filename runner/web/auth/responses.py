"""Refusals (401, 403) as JSON for API clients and as a small page for browsers."""

from __future__ import annotations

from flask import Response, jsonify, render_template, request

API_PREFIX = "/api/"
METRICS_PATH = "/metrics"


def refusal(status: int, message: str) -> Response:
    """A 401/403 saying why, in the form the client reads."""
    if wants_json():
        response = jsonify({"error": message})
    else:
        page = render_template("auth/refused.html", status=status, message=message)
        response = Response(page, mimetype="text/html")
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="gitops-runner"'
    return response


def wants_json() -> bool:
    """API and metrics clients, and anything that does not ask for HTML, get JSON."""
    if request.path.startswith(API_PREFIX) or request.path == METRICS_PATH:
        return True
    return not request.accept_mimetypes.accept_html
