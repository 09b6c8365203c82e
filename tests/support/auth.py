"""Signing in, in tests: Bearer headers, tokens of a role, and a browser session
opened through the fake OIDC provider (tests/support/fake_oidc.py) over real HTTP.

    token = issue_token(store, "operator")
    client.get("/api/runs", headers=bearer(token))
    authorize(client, token)            # every later request carries it
    sign_in(client, idp, "alice@example.com", groups=["platform"])   # a cookie session
    client.post("/api/...", headers={"X-CSRF-Token": csrf_of(client)})
    github.sign_in_as("bob", orgs=["acme"]); follow_sign_in(client, "github")  # fake GitHub
    add_operator_action(app)            # POST /api/test-action, operators only
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Flask, jsonify
from flask.testing import FlaskClient

from runner.store.store import Store
from runner.web.auth import Role, current_principal, require_role
from runner.web.auth.session import CSRF_HEADER
from tests.support.fake_oidc import FakeOIDC

# The bootstrap operator token (GITOPS_API_TOKEN) the tests' apps are built with.
TEST_API_TOKEN = "test-bootstrap-operator-token-0123456789"
# Where the Flask test client's requests go; sign-in callbacks are built from it.
TEST_PUBLIC_URL = "http://localhost"


def bearer(token: str) -> dict[str, str]:
    """The header an API client sends."""
    return {"Authorization": f"Bearer {token}"}


def issue_token(
    store: Store, role: str = "viewer", name: str | None = None, expires_in: timedelta | None = None
) -> str:
    """A new stored API token of `role`; returns its secret."""
    return store.tokens.create(name or f"test-{role}", role, expires_in).secret


def authorize(client: FlaskClient, token: str = TEST_API_TOKEN) -> FlaskClient:
    """Make every later request of `client` carry `token` (returns the client)."""
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


def sign_in(
    client: FlaskClient,
    idp: FakeOIDC,
    email: str,
    groups: tuple[str, ...] | list[str] = (),
    next_path: str | None = None,
    **user: Any,
) -> Any:
    """Sign `email` in through `idp` as a browser would; returns the callback's response.

    The runner's redirect to the provider and the provider's redirect back are
    followed by hand: the provider is a real HTTP server, the runner a test client.
    """
    idp.sign_in_as(email, groups, **user)
    return follow_sign_in(client, "oidc", next_path)


def follow_sign_in(client: FlaskClient, provider: str, next_path: str | None = None) -> Any:
    """Go through `/login/<provider>` and back, as a browser would, with whoever the
    provider (a fake served over HTTP) was told to sign in; returns the callback's
    response."""
    query = f"?next={next_path}" if next_path else ""
    client.get(f"/login{query}")
    start = client.get(f"/login/{provider}")
    assert start.status_code == 302, start.get_data(as_text=True)
    answer = requests.get(start.headers["Location"], allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    back = urlsplit(answer.headers["Location"])
    return client.get(f"{back.path}?{back.query}", headers={"Accept": "text/html"})


def csrf_of(client: FlaskClient) -> str:
    """The CSRF token of the client's session, as a page would embed it."""
    with client.session_transaction() as session:
        return session["csrf"]


def csrf_header(client: FlaskClient) -> dict[str, str]:
    return {CSRF_HEADER: csrf_of(client)}


def add_operator_action(app: Flask) -> Flask:
    """Give `app` an operator-only action, `POST /api/test-action`, written as the
    dashboard's actions are (`@require_role`); it answers who acted, with which role
    and how they signed in."""

    @app.post("/api/test-action")
    @require_role(Role.OPERATOR)
    def act() -> Any:
        principal = current_principal()
        assert principal is not None
        return jsonify({"by": principal.name, "role": principal.role.label, "how": principal.how})

    return app
