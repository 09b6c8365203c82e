"""`/login`, `/login/<provider>`, its callback, and `/logout`: the routes of sign-in.

A person who signs in but is on neither allowlist gets a 403 page and no session.
The `next` page a browser returns to after sign-in is a path on this site only, so
the sign-in flow can never be used to bounce someone to another site.
"""

from __future__ import annotations

import logging

from authlib.common.errors import AuthlibBaseError
from flask import Blueprint, Response, redirect, render_template, request, session
from joserfc.errors import JoseError
from requests import RequestException

from runner.web.auth.context import auth_context
from runner.web.auth.oidc import SignInError
from runner.web.auth.responses import refusal
from runner.web.auth.session import csrf_ok, sign_in, sign_out

logger = logging.getLogger(__name__)

_NEXT_KEY = "after_sign_in"
# Anything a provider, a forged callback or the network can throw at a callback.
_SIGN_IN_FAILURES = (AuthlibBaseError, JoseError, SignInError, RequestException, ValueError)


def build_login_blueprint() -> Blueprint:
    """A fresh blueprint per app (its views read the app's own auth context)."""
    blueprint = Blueprint("auth", __name__, template_folder="templates")
    blueprint.add_url_rule("/login", view_func=login_page, methods=["GET"])
    blueprint.add_url_rule("/login/<name>", view_func=start_sign_in, methods=["GET"])
    blueprint.add_url_rule("/login/<name>/callback", view_func=callback, methods=["GET"])
    blueprint.add_url_rule("/logout", view_func=logout, methods=["POST"])
    return blueprint


def login_page() -> Response | str:
    """The providers to sign in with; straight to the provider when there is one."""
    target = safe_next(request.args.get("next"))
    if target:
        session[_NEXT_KEY] = target
    providers = list(auth_context().providers)
    if len(providers) == 1:
        return redirect(f"/login/{providers[0].name}")
    return render_template("auth/login.html", providers=providers)


def start_sign_in(name: str) -> Response:
    provider = auth_context().providers.get(name)
    if provider is None:
        return refusal(404, f"no sign-in provider {name!r}")
    return provider.client.authorize_redirect(_callback_url(name))


def callback(name: str) -> Response:
    """Check the provider's answer, then open a session, or refuse with a reason."""
    context = auth_context()
    provider = context.providers.get(name)
    if provider is None:
        return refusal(404, f"no sign-in provider {name!r}")
    try:
        identity = provider.identity(provider.client.authorize_access_token())
    except _SIGN_IN_FAILURES as error:
        # %r: the reason may quote the callback's query, which anyone can write.
        logger.warning("sign-in with %s refused: %r", name, _reason(error))
        return refusal(401, f"sign-in failed: {_reason(error)}")
    if context.access.role_for(identity) is None:
        logger.warning("sign-in refused: %s is not on the allowlist", identity.display_name)
        sign_out()
        return refusal(
            403,
            f"{identity.display_name} is not on the dashboard's allowlist "
            "(GITOPS_DASHBOARD_VIEWERS / GITOPS_DASHBOARD_OPERATORS)",
        )
    target = safe_next(session.get(_NEXT_KEY)) or "/"
    sign_in(identity, context.session_hours)
    logger.info("%s signed in with %s", identity.display_name, name)
    return redirect(target)


def logout() -> Response:
    if not csrf_ok():
        return refusal(403, "missing or wrong CSRF token")
    sign_out()
    return redirect("/login")


def safe_next(target: object) -> str | None:
    """A local path to return to, or None: never another host (`//evil`, `/\\evil`)."""
    if not isinstance(target, str) or not target.startswith("/"):
        return None
    if target.startswith("//") or "\\" in target or any(ord(ch) < 32 for ch in target):
        return None
    return target


def _callback_url(name: str) -> str:
    # From GITOPS_PUBLIC_URL, never from the Host header an attacker may send.
    return f"{auth_context().public_url}/login/{name}/callback"


def _reason(error: Exception) -> str:
    description = getattr(error, "description", None) or getattr(error, "error", None)
    return str(description or error) or type(error).__name__
