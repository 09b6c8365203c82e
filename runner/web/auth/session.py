"""The browser session: cookie flags, the signed-in identity, and the CSRF token.

Flask's session is a cookie signed with GITOPS_SESSION_SECRET (itsdangerous): the
browser can read it but not change it. It holds the identity a provider vouched for
(never a role: roles are recomputed per request), the sign-in's expiry, and the
CSRF token every state-changing browser request must echo back.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from datetime import timedelta
from urllib.parse import urlsplit

from flask import Flask, request, session
from pydantic import SecretStr

from runner.settings import Settings
from runner.web.auth.roles import Identity

logger = logging.getLogger(__name__)

COOKIE_NAME = "gitops_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_CSRF_KEY = "csrf"
_IDENTITY_KEY = "identity"
_EXPIRES_KEY = "signed_in_until"


def with_session_secret(settings: Settings) -> Settings:
    """`settings` with a session secret: the configured one, or a random one made now.

    Called by `serve` before it forks its web processes, so that all of them sign and
    check session cookies (and the CSRF tokens in them) with the same key; one made
    in each process would refuse the cookies of the others. Still forgotten at
    restart: GITOPS_SESSION_SECRET is for sessions that outlive one (start-up insists on
    it with a sign-in provider).
    """
    if settings.session_secret is not None:
        return settings
    return settings.model_copy(update={"session_secret": SecretStr(secrets.token_urlsafe(32))})


def configure_session(app: Flask, settings: Settings) -> None:
    """Cookie flags and the signing key.

    `Secure` unless the public URL is plain http (a laptop's http://localhost); without
    GITOPS_SESSION_SECRET a random key is used, which only works in one process and
    is forgotten at restart (start-up insists on the setting when a provider is set).
    """
    secret = settings.session_secret.get_secret_value() if settings.session_secret else ""
    app.secret_key = secret or secrets.token_urlsafe(32)
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=urlsplit(settings.public_url).scheme != "http",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.session_hours),
    )


def sign_in(identity: Identity, hours: int) -> None:
    """Start a session for `identity`: a fresh session, so nothing from before survives
    (a planted session id or CSRF token is useless after sign-in)."""
    session.clear()
    session.permanent = True
    session[_IDENTITY_KEY] = [identity.provider, identity.user, list(identity.groups)]
    session[_EXPIRES_KEY] = int(time.time()) + hours * 3600
    session[_CSRF_KEY] = secrets.token_urlsafe(32)


def sign_out() -> None:
    session.clear()


def signed_in_identity() -> Identity | None:
    """The identity of this browser's session, if it has an unexpired one."""
    stored = session.get(_IDENTITY_KEY)
    until = session.get(_EXPIRES_KEY)
    if not isinstance(stored, list) or len(stored) != 3 or not isinstance(until, int):
        return None
    if until <= time.time():
        return None
    provider, user, groups = stored
    return Identity(str(provider), str(user), tuple(str(group) for group in groups))


def csrf_token() -> str:
    """This session's CSRF token, created on first use (forms and pages embed it)."""
    token = session.get(_CSRF_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[_CSRF_KEY] = token
    return token


def csrf_ok() -> bool:
    """Whether this request echoes the session's CSRF token (form field or header)."""
    expected = session.get(_CSRF_KEY)
    presented = request.headers.get(CSRF_HEADER) or _form_token()
    if not isinstance(expected, str) or not expected or not presented:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def _form_token() -> str | None:
    # Only a form body is read: parsing a JSON body here would consume it for the view.
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return request.form.get(CSRF_FIELD)
    return None
