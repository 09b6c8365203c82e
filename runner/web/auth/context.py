"""What the guard and the sign-in routes read: fixed when the app is built."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from runner.store.tokens import TokenStore
from runner.web.auth.oidc import SignInProviders
from runner.web.auth.roles import AccessList

EXTENSION_KEY = "gitops_runner_auth"


@dataclass(frozen=True)
class AuthContext:
    """The app's sign-in rules and the stores they read."""

    tokens: TokenStore
    bootstrap_token: str | None
    access: AccessList
    providers: SignInProviders
    dashboard_on: bool
    auth_required: bool
    metrics_public: bool
    session_hours: int
    public_url: str  # without a trailing slash; sign-in callbacks hang below it


def auth_context() -> AuthContext:
    """The auth context of the app handling the current request."""
    return current_app.extensions[EXTENSION_KEY]
