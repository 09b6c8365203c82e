"""The Flask application factory: webhooks, JSON API, metrics and the dashboard.

`create_app(settings, services)` builds a fresh app every time; nothing lives at module
level, so tests build as many apps as they like and each gunicorn worker process builds
its own (with its own Store and job queue) after the fork. Settings are read once, here,
and handed to the blueprints through `app.extensions`, never looked up globally.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import partial
from typing import Any

from flask import Flask, Response

from runner.jobs.model import prepare_encoders
from runner.settings import Settings
from runner.store.deliveries import DeliveryPruner
from runner.store.store import Store
from runner.web import api, api_v1, dashboard, drift_api, pages, webhooks
from runner.web.auth import install_auth
from runner.web.context import (
    EXTENSION_KEY,
    WebContext,
    WebMetrics,
    WebServices,
)
from runner.web.metrics import install_metrics

logger = logging.getLogger(__name__)

# app.extensions key of the worker's warm-up (`warm_app`).
WARM_UP_KEY = "gitops_runner.warm_up"

# Browsers must never render Terraform output or an event field as HTML or script.
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self' 'unsafe-inline'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'; "
        # The dashboard's own files only (runner/web/static): log.js and its live log.
        "script-src 'self'; connect-src 'self'; img-src 'self'"
    ),
    "Referrer-Policy": "no-referrer",
}


class WebConfigError(ValueError):
    """The settings cannot make a safe web service (e.g. no webhook secret at all)."""


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
    # Before the blueprints: its guard must run ahead of every other request hook.
    install_auth(app, settings, services.store.tokens)
    _register_blueprints(app)
    install_metrics(app, app.extensions[EXTENSION_KEY].metrics)
    app.after_request(_security_headers)
    # Deliveries are written by webhooks: old ones are forgotten after them too, at most
    # hourly and in a thread of their own, so no webhook waits for it.
    pruner = DeliveryPruner(
        services.store.deliveries, timedelta(days=settings.delivery_retention_days)
    )
    # Last: POST /events is answered in front of everything above (webhooks.py says why).
    webhooks.serve_webhooks_first(app, _SECURITY_HEADERS, pruner.prune_if_due)
    app.extensions[WARM_UP_KEY] = partial(_warm_up, services.store, pruner)
    return app


def warm_app(app: Any) -> None:
    """Do what a worker's first webhooks would otherwise do on their clock (called once
    the worker has booted, before it takes requests; see runner/web/server.py)."""
    warm_up = getattr(app, "extensions", {}).get(WARM_UP_KEY)
    if warm_up is not None:
        warm_up()


def _warm_up(store: Store, pruner: DeliveryPruner) -> None:
    # Each of these cost its first webhook 5-10 ms, and in a burst every request in
    # flight waited behind them: the first pooled connection, a job kind's encoder, and
    # the hourly prune's first thread, whose start waits for the GIL (issue 10).
    store.connect_now()
    prepare_encoders()
    pruner.prune_if_due()


def _register_blueprints(app: Flask) -> None:
    app.register_blueprint(api.blueprint)
    app.register_blueprint(drift_api.blueprint)
    app.register_blueprint(dashboard.blueprint)
    app.register_blueprint(api_v1.blueprint)
    app.register_blueprint(pages.blueprint)


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
