"""API tokens, written as the attacks they stop: no token, a wrong, revoked or expired
one, a viewer that acts, a leaked database or log.

Apps are built around a real store (SQLite and PostgreSQL) with real stored tokens;
the operator-only action is the real `POST /api/drift` as well as a view guarded by
`require_role`, the interface the dashboard's actions use.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, render_template_string
from flask.testing import FlaskClient
from sqlalchemy import text

from runner.settings import Settings
from runner.store.store import Store
from runner.store.tokens import hash_secret
from runner.web.app import create_app
from runner.web.context import WebServices
from tests.support.auth import TEST_API_TOKEN, add_operator_action, bearer, issue_token

WEBHOOK_SECRET = "webhook-secret"
READ_ROUTES = ("/api/runs", "/api/locks", "/api/jobs", "/api/drift", "/metrics")


def build_app(store: Store, tmp_path: Path, **values: Any) -> Flask:
    settings = Settings(data_dir=tmp_path / "data", github_webhook_secret=WEBHOOK_SECRET, **values)
    app = create_app(settings, WebServices(store=store, submit=lambda event, delivery=None: 1))

    add_operator_action(app)

    # A page with a form embeds the session's CSRF token, as the dashboard's do.
    @app.get("/test-form")
    def form() -> str:
        return render_template_string("<input name=csrf_token value='{{ csrf_token() }}'>")

    return app


@pytest.fixture
def client(store: Store, tmp_path: Path) -> FlaskClient:
    return build_app(store, tmp_path, api_token=TEST_API_TOKEN).test_client()


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[Store]:
    opened = Store.open(sqlite_url)
    yield opened
    opened.close()


# ---- the store ------------------------------------------------------------------


def test_a_created_token_authenticates_until_revoked(store: Store) -> None:
    new = store.tokens.create("ci", "operator")

    found = store.tokens.authenticate(new.secret)
    assert found is not None and (found.name, found.role) == ("ci", "operator")
    assert found.last_used_at is None  # the record read before this use
    assert store.tokens.list()[0].last_used_at is not None

    revoked = store.tokens.revoke(new.record.id)
    assert revoked is not None and revoked.revoked_at is not None
    assert store.tokens.authenticate(new.secret) is None
    assert store.tokens.revoke(new.record.id) == revoked  # twice is once
    assert store.tokens.revoke(9999) is None


def test_an_expired_token_no_longer_authenticates(store: Store) -> None:
    new = store.tokens.create("short", "viewer", expires_in=timedelta(seconds=-1))

    assert store.tokens.authenticate(new.secret) is None
    assert store.tokens.count_usable() == 0
    assert store.tokens.list()[0].expires_at < datetime.now(UTC)


def test_the_database_holds_only_a_hash_of_the_secret(store: Store) -> None:
    new = store.tokens.create("ci", "viewer")

    with store.read() as session:
        rows = session.execute(text("SELECT * FROM api_tokens")).all()
    stored = " ".join(str(value) for row in rows for value in row)
    assert new.secret not in stored
    assert hash_secret(new.secret) in stored
    assert new.secret.startswith("gr_") and len(new.secret) > 40


def test_bad_roles_and_names_are_refused_and_nothing_is_stored(store: Store) -> None:
    with pytest.raises(ValueError, match="viewer, operator"):
        store.tokens.create("ci", "admin")
    with pytest.raises(ValueError, match="name"):
        store.tokens.create("  ", "viewer")
    assert store.tokens.list() == []


# ---- the guard ------------------------------------------------------------------


@pytest.mark.parametrize("path", READ_ROUTES)
def test_no_token_is_401(client: FlaskClient, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error" in response.json


@pytest.mark.parametrize(
    "header",
    [
        "Bearer not-a-token",
        "Bearer ",
        f"Bearer {TEST_API_TOKEN}x",
        f"Bearer {TEST_API_TOKEN[:-1]}",
        f"bearer  {hash_secret(TEST_API_TOKEN)}",
    ],
)
def test_a_wrong_token_is_401(client: FlaskClient, header: str) -> None:
    for path in READ_ROUTES:
        assert client.get(path, headers={"Authorization": header}).status_code == 401, path


def test_a_stored_token_hash_is_not_a_token(store: Store, client: FlaskClient) -> None:
    secret = issue_token(store, "operator")

    assert client.get("/api/runs", headers=bearer(hash_secret(secret))).status_code == 401
    assert client.get("/api/runs", headers=bearer(secret)).status_code == 200


def test_a_revoked_token_is_401_at_once(store: Store, client: FlaskClient) -> None:
    new = store.tokens.create("laptop", "viewer")
    assert client.get("/api/runs", headers=bearer(new.secret)).status_code == 200

    store.tokens.revoke(new.record.id)

    assert client.get("/api/runs", headers=bearer(new.secret)).status_code == 401


def test_an_expired_token_is_401(store: Store, client: FlaskClient) -> None:
    secret = issue_token(store, "operator", expires_in=timedelta(seconds=-1))

    assert client.get("/api/runs", headers=bearer(secret)).status_code == 401


def test_a_viewer_reads_but_may_not_act(store: Store, client: FlaskClient) -> None:
    viewer = bearer(issue_token(store, "viewer"))

    assert client.get("/api/runs", headers=viewer).status_code == 200
    assert client.get("/metrics", headers=viewer).status_code == 200
    refused = client.post("/api/test-action", headers=viewer)
    assert refused.status_code == 403
    assert "operator" in refused.json["error"]


def test_an_operator_token_acts_without_a_csrf_token(store: Store, client: FlaskClient) -> None:
    operator = bearer(issue_token(store, "operator", name="deploy-bot"))

    response = client.post("/api/test-action", headers=operator)

    assert response.status_code == 200
    assert response.json == {"by": "token:deploy-bot", "role": "operator", "how": "token"}


def test_the_bootstrap_token_is_an_operator(client: FlaskClient) -> None:
    response = client.post("/api/test-action", headers=bearer(TEST_API_TOKEN))

    assert response.status_code == 200
    assert response.json["by"] == "GITOPS_API_TOKEN"


def test_a_browser_without_a_session_is_sent_to_sign_in(client: FlaskClient) -> None:
    response = client.get("/?page=2", headers={"Accept": "text/html"})

    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=/%3Fpage%3D2"


def test_webhooks_and_health_stay_open_and_webhooks_keep_their_signature_check(
    client: FlaskClient,
) -> None:
    assert client.get("/healthz").status_code == 200
    unsigned = client.post(
        "/events",
        data=b"{}",
        headers={"X-GitHub-Event": "ping", "X-GitHub-Delivery": "d-1",
                 "Content-Type": "application/json"},
    )  # fmt: skip
    assert unsigned.status_code == 401  # the webhook's own HMAC check, not sign-in
    assert client.get("/events").status_code == 401  # only POST /events is open


def test_no_token_secret_in_the_logs(
    store: Store, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    new = store.tokens.create("ci", "operator")
    client.get("/api/runs", headers=bearer(new.secret))
    client.get("/api/runs", headers=bearer(new.secret + "-wrong"))
    store.tokens.revoke(new.record.id)
    client.get("/api/runs", headers=bearer(new.secret))

    assert new.secret not in caplog.text
    assert TEST_API_TOKEN not in caplog.text


def test_dashboard_off_serves_only_webhooks_health_and_metrics(
    sqlite_store: Store, tmp_path: Path
) -> None:
    client = build_app(sqlite_store, tmp_path, dashboard="off").test_client()
    operator = bearer(issue_token(sqlite_store, "operator"))

    for path in ("/", "/api/runs", "/api/drift", "/login"):
        assert client.get(path, headers=operator).status_code == 404, path
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=operator).status_code == 200


def test_public_metrics_need_no_token(sqlite_store: Store, tmp_path: Path) -> None:
    client = build_app(
        sqlite_store, tmp_path, api_token=TEST_API_TOKEN, metrics_public=True
    ).test_client()

    assert client.get("/metrics").status_code == 200
    assert client.get("/api/runs").status_code == 401


def test_explicitly_insecure_mode_lets_anyone_read_but_still_wants_csrf_to_act(
    sqlite_store: Store, tmp_path: Path
) -> None:
    client = build_app(sqlite_store, tmp_path, dashboard_auth="none").test_client()

    assert client.get("/api/runs").status_code == 200
    # Another site's page posting to a runner on localhost: no CSRF token, refused.
    assert client.post("/api/test-action").status_code == 403
    form = client.get("/test-form").get_data(as_text=True)
    token = form.split("value='")[1].split("'")[0]
    response = client.post("/api/test-action", headers={"X-CSRF-Token": token})
    assert response.status_code == 200 and response.json["how"] == "anonymous"
