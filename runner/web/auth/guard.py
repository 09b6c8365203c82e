"""The one gate in front of every route: who is asking, and may they?

`install_auth` registers a `before_request` guard that runs before any view: every
route needs a signed-in viewer except an explicit list (`POST /events`, whose
webhooks keep their own signature checks; `/healthz`; the sign-in routes; static
files; `/metrics` when GITOPS_METRICS_PUBLIC is set). A browser without a session is
sent to `/login`; anything else gets 401 JSON. State-changing browser requests must
echo the CSRF token; Bearer requests need none (no cookie is involved).
`@require_role` guards actions on top.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast
from urllib.parse import quote

from flask import Flask, Response, abort, current_app, g, redirect, request

from runner.settings import Settings
from runner.store.tokens import TokenStore
from runner.web.auth.context import EXTENSION_KEY, AuthContext, auth_context
from runner.web.auth.login import build_login_blueprint
from runner.web.auth.oidc import SignInProviders
from runner.web.auth.responses import METRICS_PATH, refusal, wants_json
from runner.web.auth.roles import AccessList, Principal, Role
from runner.web.auth.session import (
    configure_session,
    csrf_ok,
    csrf_token,
    signed_in_identity,
)
from runner.web.auth.tokens import presented_bearer, principal_for_token
from runner.web.context import WEBHOOK_PATH

HEALTH_PATH = "/healthz"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SIGN_IN_PATHS = ("/login", "/logout")
ANONYMOUS = Principal("anonymous", Role.OPERATOR, "anonymous")

View = TypeVar("View", bound=Callable[..., Any])


def install_auth(app: Flask, settings: Settings, tokens: TokenStore) -> None:
    """Put the guard, the sign-in routes and the template helpers on `app`."""
    configure_session(app, settings)
    bootstrap = settings.api_token.get_secret_value() if settings.api_token else ""
    app.extensions[EXTENSION_KEY] = AuthContext(
        tokens=tokens,
        bootstrap_token=bootstrap or None,
        access=AccessList.of(settings.dashboard_viewers, settings.dashboard_operators),
        providers=SignInProviders.from_settings(app, settings),
        dashboard_on=settings.dashboard == "on",
        auth_required=settings.dashboard_auth == "required",
        metrics_public=settings.metrics_public,
        session_hours=settings.session_hours,
        public_url=settings.public_url.rstrip("/"),
    )
    # First in line, before any blueprint's own before_app_request hooks.
    app.before_request_funcs.setdefault(None, []).insert(0, _guard)
    app.register_blueprint(build_login_blueprint())
    app.jinja_env.globals.update(csrf_token=csrf_token, current_principal=current_principal)


def current_principal() -> Principal | None:
    """Who makes this request (set by the guard); None on the open routes."""
    return g.get("principal")


def require_role(role: Role) -> Callable[[View], View]:
    """Decorate a view that acts: 401 without a principal, 403 below `role`."""

    def decorate(view: View) -> View:
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            principal = current_principal()
            if principal is None:
                return refusal(401, "sign in first")
            if not principal.may(role):
                return refusal(
                    403,
                    f"this needs the {role.label} role; {principal.name} "
                    f"is a {principal.role.label}",
                )
            return view(*args, **kwargs)

        return cast(View, guarded)

    return decorate


def _guard() -> Response | None:
    context = auth_context()
    path = request.path
    if not context.dashboard_on and not _served_without_dashboard(path):
        abort(404)  # GITOPS_DASHBOARD=off: only webhooks, health and metrics exist
    if _always_open(path):
        return None
    if path == METRICS_PATH and context.metrics_public:
        return None
    bearer = presented_bearer(request.headers.get("Authorization"))
    if bearer is not None:
        return _admit_token(context, bearer)
    return _admit_browser(context)


def _served_without_dashboard(path: str) -> bool:
    return path in (WEBHOOK_PATH, HEALTH_PATH, METRICS_PATH)


def _always_open(path: str) -> bool:
    if path == HEALTH_PATH:
        return True
    static = current_app.static_url_path
    if static and path.startswith(static + "/"):
        return True
    return any(path == prefix or path.startswith(prefix + "/") for prefix in _SIGN_IN_PATHS)


def _admit_token(context: AuthContext, secret: str) -> Response | None:
    principal = principal_for_token(secret, context.tokens, context.bootstrap_token)
    if principal is None:
        return refusal(401, "wrong, revoked or expired API token")
    g.principal = principal
    return None


def _admit_browser(context: AuthContext) -> Response | None:
    if context.auth_required:
        identity = signed_in_identity()
        if identity is None:
            return _sign_in_first()
        role = context.access.role_for(identity)
        if role is None:
            return refusal(403, f"{identity.display_name} is not on the dashboard's allowlist")
        g.principal = Principal(identity.display_name, role, "oidc")
    else:
        g.principal = ANONYMOUS
    # A cookie (or no credential at all) rides along on cross-site requests; the token
    # echoed from one of our pages proves the request came from one of them.
    if request.method in UNSAFE_METHODS and not csrf_ok():
        return refusal(
            403, "missing or wrong CSRF token (form field csrf_token or header X-CSRF-Token)"
        )
    return None


def _sign_in_first() -> Response:
    if wants_json() or request.method != "GET":
        return refusal(401, "sign in, or send Authorization: Bearer <API token>")
    return cast(Response, redirect(f"/login?next={quote(request.full_path.rstrip('?'))}"))
