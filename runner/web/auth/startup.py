"""Refusing to start a dashboard and API nobody can sign in to, or everybody can.

What counts as sign-in: a provider for people (OIDC, GitHub or GitLab OAuth, each
complete), GITOPS_API_TOKEN, or at least one usable stored token (`gitops-runner
token create`). Without any, `serve` and the gunicorn app stop with a message that
names the settings, unless the dashboard is off (GITOPS_DASHBOARD=off) or its
openness is explicit (GITOPS_DASHBOARD_AUTH=none).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlsplit

from runner.settings import Settings
from runner.web.auth.oidc import configured_provider_names
from runner.web.auth.roles import AccessList

logger = logging.getLogger(__name__)

MIN_SESSION_SECRET = 32
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")

NO_SIGN_IN = (
    "the dashboard and API are reachable but nobody can sign in: configure OpenID Connect "
    "(GITOPS_OIDC_ISSUER, GITOPS_OIDC_CLIENT_ID, GITOPS_OIDC_CLIENT_SECRET), GitHub or "
    "GitLab sign-in (GITOPS_GITHUB_OAUTH_CLIENT_ID / GITOPS_GITLAB_OAUTH_CLIENT_ID and their "
    "secrets), each with GITOPS_SESSION_SECRET and GITOPS_PUBLIC_URL; or set "
    "GITOPS_API_TOKEN, or create a token with `gitops-runner token create`. To serve "
    "webhooks only, set GITOPS_DASHBOARD=off; to open the dashboard to everyone who can "
    "reach it (never on a shared network), set GITOPS_DASHBOARD_AUTH=none"
)


class AuthConfigError(ValueError):
    """Sign-in settings that cannot make a safe dashboard; the message names them."""


def check_sign_in(settings: Settings, usable_tokens: Callable[[], int]) -> None:
    """Raise AuthConfigError unless the dashboard is off, open on purpose, or guarded.

    `usable_tokens` counts stored tokens; it is only called when the settings alone
    configure no sign-in (so `serve` opens the database only when it must).
    """
    if settings.dashboard == "off":
        return
    problems = provider_problems(settings)
    if problems:
        raise AuthConfigError("; ".join(problems))
    providers = configured_provider_names(settings)
    _warn_about(settings, providers)
    if settings.dashboard_auth == "none":
        logger.warning(
            "GITOPS_DASHBOARD_AUTH=none: everyone who reaches the dashboard may read and act"
        )
        return
    if providers or _secret(settings.api_token) or usable_tokens() > 0:
        return
    raise AuthConfigError(NO_SIGN_IN)


def provider_problems(settings: Settings) -> list[str]:
    """What a half-configured provider lacks, one sentence per problem."""
    problems = []
    if (settings.oidc_issuer or settings.oidc_client_id) and not (
        settings.oidc_issuer and settings.oidc_client_id and _secret(settings.oidc_client_secret)
    ):
        problems.append(
            "OpenID Connect needs GITOPS_OIDC_ISSUER, GITOPS_OIDC_CLIENT_ID and "
            "GITOPS_OIDC_CLIENT_SECRET together"
        )
    for forge in ("github", "gitlab"):
        if getattr(settings, f"{forge}_oauth_client_id") and not _secret(
            getattr(settings, f"{forge}_oauth_client_secret")
        ):
            name = forge.upper()
            problems.append(
                f"GITOPS_{name}_OAUTH_CLIENT_ID needs GITOPS_{name}_OAUTH_CLIENT_SECRET"
            )
    if configured_provider_names(settings):
        problems += _session_problems(settings)
    return problems


def _session_problems(settings: Settings) -> list[str]:
    problems = []
    if len(_secret(settings.session_secret)) < MIN_SESSION_SECRET:
        problems.append(
            f"sign-in needs GITOPS_SESSION_SECRET, at least {MIN_SESSION_SECRET} characters "
            "(e.g. `openssl rand -hex 32`), the same in every process"
        )
    if urlsplit(settings.public_url).scheme not in ("http", "https"):
        problems.append(
            "sign-in needs GITOPS_PUBLIC_URL (e.g. https://runner.example.com): the "
            "provider sends people back to GITOPS_PUBLIC_URL/login/<provider>/callback"
        )
    return problems


def _warn_about(settings: Settings, providers: list[str]) -> None:
    if not providers:
        return
    if AccessList.of(settings.dashboard_viewers, settings.dashboard_operators).empty:
        logger.warning(
            "a sign-in provider is configured but GITOPS_DASHBOARD_VIEWERS and "
            "GITOPS_DASHBOARD_OPERATORS are empty: nobody can sign in"
        )
    url = urlsplit(settings.public_url)
    if url.scheme == "http" and url.hostname not in _LOCAL_HOSTS:
        logger.warning("GITOPS_PUBLIC_URL is plain http: session cookies are sent without Secure")


def _secret(value: object) -> str:
    getter = getattr(value, "get_secret_value", None)
    return getter() if getter is not None else ""
