"""Refusing to start a dashboard nobody can sign in to, and `gitops-runner token ...`.

`serve` runs as a person runs it (a subprocess); the gunicorn app is built with
`create_app_from_env` from the environment, as plain gunicorn builds it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.web.auth.startup import AuthConfigError
from tests.support.auth import bearer
from tests.support.cli import run_cli

SECRET = "webhook-secret"
SESSION_SECRET = "s" * 40


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """A data dir and a webhook secret: everything but sign-in."""
    monkeypatch.setenv("GITOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GITOPS_GITHUB_WEBHOOK_SECRET", SECRET)
    return monkeypatch


def app_from_env():
    from runner.wiring import create_app_from_env

    return create_app_from_env()


def test_serve_refuses_to_start_without_sign_in_and_names_the_settings(tmp_path: Path) -> None:
    served = run_cli("serve", data_dir=tmp_path / "data", GITOPS_GITHUB_WEBHOOK_SECRET=SECRET)

    assert served.returncode == 2, served.stderr
    message = served.stderr
    for setting in (
        "GITOPS_OIDC_ISSUER",
        "GITOPS_API_TOKEN",
        "gitops-runner token create",
        "GITOPS_DASHBOARD=off",
        "GITOPS_DASHBOARD_AUTH=none",
    ):
        assert setting in message, setting
    assert "Listening" not in message


def test_the_gunicorn_app_refuses_too(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(AuthConfigError, match="nobody can sign in"):
        app_from_env()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GITOPS_DASHBOARD", "off"),
        ("GITOPS_DASHBOARD_AUTH", "none"),
        ("GITOPS_API_TOKEN", "t" * 32),
    ],
)
def test_starts_when_told_explicitly_or_given_a_token(
    env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    env.setenv(name, value)

    assert app_from_env().test_client().get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"GITOPS_OIDC_ISSUER": "https://idp.example"}, "GITOPS_OIDC_CLIENT_ID"),
        (
            {"GITOPS_OIDC_ISSUER": "https://idp.example", "GITOPS_OIDC_CLIENT_ID": "runner"},
            "GITOPS_OIDC_CLIENT_SECRET",
        ),
        ({"GITOPS_GITHUB_OAUTH_CLIENT_ID": "Iv1.abc"}, "GITOPS_GITHUB_OAUTH_CLIENT_SECRET"),
        (
            {"GITOPS_GITLAB_OAUTH_CLIENT_ID": "app", "GITOPS_GITLAB_OAUTH_CLIENT_SECRET": "x",
             "GITOPS_PUBLIC_URL": "https://runner.example"},
            "GITOPS_SESSION_SECRET",
        ),
        (
            {"GITOPS_GITLAB_OAUTH_CLIENT_ID": "app", "GITOPS_GITLAB_OAUTH_CLIENT_SECRET": "x",
             "GITOPS_SESSION_SECRET": "short"},
            "GITOPS_SESSION_SECRET",
        ),
        (
            {"GITOPS_GITLAB_OAUTH_CLIENT_ID": "app", "GITOPS_GITLAB_OAUTH_CLIENT_SECRET": "x",
             "GITOPS_SESSION_SECRET": SESSION_SECRET},
            "GITOPS_PUBLIC_URL",
        ),
    ],
)  # fmt: skip
def test_a_half_configured_provider_is_refused_naming_what_is_missing(
    env: pytest.MonkeyPatch, settings: dict[str, str], named: str
) -> None:
    env.setenv("GITOPS_API_TOKEN", "t" * 32)  # even with a token: the provider is broken
    for key, value in settings.items():
        env.setenv(key, value)

    with pytest.raises(AuthConfigError, match=named):
        app_from_env()


def test_tokens_from_the_cli_sign_in_and_stop_at_revocation(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    created = run_cli("token", "create", "--name", "ci", "--role", "operator", data_dir=data)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("gr_") and "\n" not in secret
    assert "not shown again" in created.stderr and secret not in created.stderr

    # A stored token is sign-in enough: the app starts, and the token works.
    client = app_from_env().test_client()
    assert client.get("/api/runs", headers=bearer(secret)).status_code == 200

    listed = run_cli("token", "list", data_dir=data)
    assert listed.returncode == 0 and secret not in listed.stdout
    assert "ci" in listed.stdout and "operator" in listed.stdout and "active" in listed.stdout

    revoked = run_cli("token", "revoke", "1", data_dir=data)
    assert revoked.returncode == 0 and "revoked token 1 (ci)" in revoked.stdout
    assert client.get("/api/runs", headers=bearer(secret)).status_code == 401
    assert "revoked" in run_cli("token", "list", data_dir=data).stdout
    # The only token is revoked: nobody could sign in, so the next start is refused.
    with pytest.raises(AuthConfigError):
        app_from_env()


def test_token_cli_mistakes_are_usage_errors(tmp_path: Path) -> None:
    data = tmp_path / "data"

    unknown = run_cli("token", "revoke", "42", data_dir=data)
    assert unknown.returncode == 2 and "no token 42" in unknown.stderr
    bad_lifetime = run_cli("token", "create", "--name", "x", "--expires-in", "soon", data_dir=data)
    assert bad_lifetime.returncode == 2 and "90d" in bad_lifetime.stderr
    bad_role = run_cli("token", "create", "--name", "x", "--role", "admin", data_dir=data)
    assert bad_role.returncode == 2
    assert "No API tokens" in run_cli("token", "list", data_dir=data).stdout


def test_a_token_with_a_lifetime_shows_its_expiry(tmp_path: Path) -> None:
    data = tmp_path / "data"
    created = run_cli("token", "create", "--name", "temp", "--expires-in", "12h", data_dir=data)
    assert created.returncode == 0, created.stderr

    listed = run_cli("token", "list", "--json", data_dir=data)

    assert '"expires_at": "20' in listed.stdout
    assert created.stdout.strip() not in listed.stdout
