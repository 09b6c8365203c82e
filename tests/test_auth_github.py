"""Signing people in with GitHub (OAuth; GitHub has no OIDC for users), end to end
against the fake GitHub served over real HTTP: the user, orgs and teams come from its
REST API, and the allowlists name them as `github:LOGIN` and `group:github:ORG[/TEAM]`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from runner.settings import Settings
from runner.store.store import Store
from runner.web.app import create_app
from runner.web.context import WebServices
from tests.support.auth import (
    TEST_PUBLIC_URL,
    add_operator_action,
    csrf_header,
    follow_sign_in,
)
from tests.support.fake_github import FakeGitHub

CLIENT_ID = "Iv1.gitops-runner"
CLIENT_SECRET = "github-oauth-secret"


@pytest.fixture(scope="module")
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub(token="forge-token") as fake:
        fake.add_oauth_app(CLIENT_ID, CLIENT_SECRET)
        yield fake


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[Store]:
    opened = Store.open(sqlite_url)
    yield opened
    opened.close()


def build_client(store: Store, tmp_path: Path, github: FakeGitHub, **values: Any) -> FlaskClient:
    values = {
        "github_api_url": github.api_url,  # GitHub Enterprise style: sign-in pages at its root
        "github_oauth_client_id": CLIENT_ID,
        "github_oauth_client_secret": CLIENT_SECRET,
        "session_secret": "session-secret-for-the-github-tests-0123",
        "public_url": TEST_PUBLIC_URL,
        "dashboard_viewers": ("github:alice", "group:github:acme"),
        "dashboard_operators": ("group:github:acme/platform",),
        **values,
    }
    settings = Settings(data_dir=tmp_path / "data", github_webhook_secret="whs", **values)
    app: Flask = create_app(
        settings, WebServices(store=store, submit=lambda event, delivery=None: 1)
    )

    add_operator_action(app)

    return app.test_client()


@pytest.fixture
def client(sqlite_store: Store, tmp_path: Path, github: FakeGitHub) -> FlaskClient:
    return build_client(sqlite_store, tmp_path, github)


def test_a_team_member_signs_in_as_an_operator(client: FlaskClient, github: FakeGitHub) -> None:
    github.sign_in_as("bob", orgs=["acme"], teams=["acme/platform"])

    landed = follow_sign_in(client, "github")

    assert landed.status_code == 302, landed.get_data(as_text=True)
    acted = client.post("/api/test-action", headers=csrf_header(client))
    assert acted.status_code == 200 and acted.json["by"] == "github:bob"


def test_a_user_by_name_and_an_org_member_are_viewers(
    client: FlaskClient, github: FakeGitHub, sqlite_store: Store, tmp_path: Path
) -> None:
    github.sign_in_as("alice")
    follow_sign_in(client, "github")
    assert client.get("/api/runs").status_code == 200
    assert client.post("/api/test-action", headers=csrf_header(client)).status_code == 403

    member = build_client(sqlite_store, tmp_path, github)
    github.sign_in_as("carol", orgs=["acme"], teams=["acme/frontend"])
    follow_sign_in(member, "github")
    assert member.get("/api/runs").status_code == 200
    assert member.post("/api/test-action", headers=csrf_header(member)).status_code == 403


def test_someone_in_another_org_is_refused(client: FlaskClient, github: FakeGitHub) -> None:
    github.sign_in_as("mallory", orgs=["evil"], teams=["evil/platform"])

    refused = follow_sign_in(client, "github")

    assert refused.status_code == 403
    assert client.get("/api/runs").status_code == 401


def test_a_plain_entry_never_matches_a_github_user(
    sqlite_store: Store, tmp_path: Path, github: FakeGitHub
) -> None:
    # `alice` names an OIDC user; on GitHub anyone may register the login `alice`.
    client = build_client(sqlite_store, tmp_path, github, dashboard_viewers=("alice",),
                          dashboard_operators=("group:platform",))  # fmt: skip
    github.sign_in_as("alice", orgs=["platform"])

    assert follow_sign_in(client, "github").status_code == 403


def test_a_wrong_client_secret_signs_nobody_in(
    sqlite_store: Store, tmp_path: Path, github: FakeGitHub
) -> None:
    client = build_client(sqlite_store, tmp_path, github, github_oauth_client_secret="wrong")
    github.sign_in_as("bob", orgs=["acme"], teams=["acme/platform"])

    refused = follow_sign_in(client, "github")

    assert refused.status_code == 401
    assert client.get("/api/runs").status_code == 401
