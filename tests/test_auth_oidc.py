"""Signing people in with OpenID Connect, end to end against a provider served over
real HTTP (tests/support/fake_oidc.py), written as the attacks it must stop: forged
id_tokens, replayed or foreign callbacks, people not on the allowlist, cross-site
posts without the CSRF token, redirects to other sites.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from runner.settings import Settings
from runner.store.store import Store
from runner.web.app import create_app
from runner.web.auth.session import COOKIE_NAME
from runner.web.context import WebServices
from tests.support.auth import (
    TEST_PUBLIC_URL,
    add_operator_action,
    bearer,
    csrf_header,
    csrf_of,
    follow_sign_in,
    sign_in,
)
from tests.support.fake_oidc import FakeOIDC

HTML = {"Accept": "text/html"}
ALICE = "alice@example.com"  # a viewer by name
BOB = "bob@example.com"  # an operator through the group
MALLORY = "mallory@example.com"  # on no list


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeOIDC]:
    with FakeOIDC() as provider:
        yield provider


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[Store]:
    opened = Store.open(sqlite_url)
    yield opened
    opened.close()


def build_app(store: Store, tmp_path: Path, idp: FakeOIDC, **values: Any) -> Flask:
    values = {
        **idp.settings(public_url=TEST_PUBLIC_URL),
        "dashboard_viewers": (ALICE,),
        "dashboard_operators": ("group:platform",),
        **values,
    }
    settings = Settings(data_dir=tmp_path / "data", github_webhook_secret="whs", **values)
    app = create_app(settings, WebServices(store=store, submit=lambda event, delivery=None: 1))

    add_operator_action(app)

    return app


@pytest.fixture
def app(sqlite_store: Store, tmp_path: Path, idp: FakeOIDC) -> Flask:
    return build_app(sqlite_store, tmp_path, idp)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def signed_in(client: FlaskClient) -> bool:
    return client.get("/api/runs").status_code == 200


# ---- people who may sign in -------------------------------------------------------


def test_an_operator_by_group_signs_in_reads_and_acts_with_the_csrf_token(
    client: FlaskClient, idp: FakeOIDC
) -> None:
    landed = sign_in(client, idp, BOB, groups=["platform"])

    assert landed.status_code == 302 and landed.headers["Location"] == "/"
    assert client.get("/", headers=HTML).status_code == 200
    assert client.post("/api/test-action").status_code == 403  # no CSRF token
    acted = client.post("/api/test-action", headers=csrf_header(client))
    assert acted.status_code == 200
    assert acted.json == {"by": BOB, "role": "operator", "how": "oidc"}
    form = client.post("/api/test-action", data={"csrf_token": csrf_of(client)})
    assert form.status_code == 200


def test_a_viewer_reads_and_is_refused_when_acting(client: FlaskClient, idp: FakeOIDC) -> None:
    sign_in(client, idp, ALICE, groups=["developers"])

    assert signed_in(client)
    refused = client.post("/api/test-action", headers=csrf_header(client))
    assert refused.status_code == 403
    assert "operator" in refused.json["error"]


def test_groups_only_in_userinfo_still_count(client: FlaskClient, idp: FakeOIDC) -> None:
    sign_in(client, idp, BOB, groups=["platform"], groups_in_id_token=False)

    assert client.post("/api/test-action", headers=csrf_header(client)).status_code == 200


def test_the_flow_uses_state_nonce_and_pkce(client: FlaskClient, idp: FakeOIDC) -> None:
    sign_in(client, idp, ALICE)

    sent = idp.authorize_requests[-1].params
    assert sent["response_type"] == "code" and sent["client_id"] == idp.client_id
    assert sent["redirect_uri"] == f"{TEST_PUBLIC_URL}/login/oidc/callback"
    assert sent["state"] and sent["nonce"]
    assert sent["code_challenge_method"] == "S256" and sent["code_challenge"]
    assert idp.token_requests[-1]["code_verifier"]


# ---- attacks --------------------------------------------------------------------------


def test_a_person_on_no_list_gets_403_and_no_session(client: FlaskClient, idp: FakeOIDC) -> None:
    refused = sign_in(client, idp, MALLORY, groups=["contractors"])

    assert refused.status_code == 403
    assert "not on the dashboard&#39;s allowlist" in refused.get_data(as_text=True)
    assert not signed_in(client)
    assert client.get("/", headers=HTML).status_code == 302  # back to sign-in


@pytest.mark.parametrize(
    "lie",
    [
        {"foreign_key": True},  # signed by someone else's key under the provider's kid
        {"audience": "another-client"},  # a token minted for another application
        {"nonce": "not-the-nonce"},  # a token from another sign-in, replayed
        {"issuer": "https://evil.example"},
    ],
    ids=["wrong signature", "wrong audience", "wrong nonce", "wrong issuer"],
)
def test_a_forged_id_token_is_refused(
    client: FlaskClient, idp: FakeOIDC, lie: dict[str, Any]
) -> None:
    idp.forge_next(**lie)

    refused = sign_in(client, idp, BOB, groups=["platform"])

    assert refused.status_code == 401
    assert "sign-in failed" in refused.get_data(as_text=True)
    assert not signed_in(client)


def test_an_unverified_email_is_refused(client: FlaskClient, idp: FakeOIDC) -> None:
    refused = sign_in(client, idp, ALICE, email_verified=False)

    assert refused.status_code == 401
    assert not signed_in(client)


def test_userinfo_for_another_subject_is_refused(client: FlaskClient, idp: FakeOIDC) -> None:
    idp.forge_next(userinfo_sub="someone-else")

    refused = sign_in(client, idp, BOB, groups=["platform"], groups_in_id_token=False)

    assert refused.status_code == 401
    assert not signed_in(client)


def callback_link(client: FlaskClient, idp: FakeOIDC, email: str, **user: Any) -> str:
    """Start a sign-in in `client` and return the provider's link back (not yet followed)."""
    idp.sign_in_as(email, **user)
    start = client.get("/login/oidc")
    back = requests.get(start.headers["Location"], allow_redirects=False, timeout=10)
    return back.headers["Location"].removeprefix(TEST_PUBLIC_URL)


def test_a_callback_started_in_another_browser_is_refused(app: Flask, idp: FakeOIDC) -> None:
    victim, attacker = app.test_client(), app.test_client()
    # Login CSRF: the attacker starts a sign-in as themself and sends the victim the
    # link back; the victim's session holds no such state.
    link = callback_link(attacker, idp, BOB, groups=["platform"])

    assert victim.get(link, headers=HTML).status_code == 401
    assert not signed_in(victim)


def test_a_callback_used_twice_is_refused(client: FlaskClient, idp: FakeOIDC) -> None:
    link = callback_link(client, idp, BOB, groups=["platform"])
    assert client.get(link, headers=HTML).status_code == 302
    client.post("/logout", headers=csrf_header(client))

    assert client.get(link, headers=HTML).status_code == 401
    assert not signed_in(client)


def test_a_wrong_bearer_token_beats_a_valid_session(client: FlaskClient, idp: FakeOIDC) -> None:
    sign_in(client, idp, BOB, groups=["platform"])

    assert client.get("/api/runs", headers=bearer("guess")).status_code == 401


def test_sign_in_never_redirects_to_another_site(client: FlaskClient, idp: FakeOIDC) -> None:
    for target in ("//evil.example/", "/\\evil.example", "https://evil.example/"):
        landed = sign_in(client, idp, ALICE, next_path=target)
        assert landed.headers["Location"] == "/", target
    landed = sign_in(client, idp, ALICE, next_path="/api/runs")
    assert landed.headers["Location"] == "/api/runs"


def test_removing_someone_from_the_list_takes_effect_at_once(
    sqlite_store: Store, tmp_path: Path, idp: FakeOIDC
) -> None:
    before = build_app(sqlite_store, tmp_path, idp).test_client()
    sign_in(before, idp, ALICE)
    cookie = before.get_cookie(COOKIE_NAME)
    assert cookie is not None
    after = build_app(sqlite_store, tmp_path, idp, dashboard_viewers=()).test_client()
    after.set_cookie(COOKIE_NAME, cookie.value, domain="localhost")

    assert after.get("/api/runs").status_code == 403


def test_a_session_signed_with_another_secret_is_no_session(
    sqlite_store: Store, tmp_path: Path, idp: FakeOIDC
) -> None:
    other = build_app(sqlite_store, tmp_path, idp, session_secret="x" * 40).test_client()
    sign_in(other, idp, BOB, groups=["platform"])
    cookie = other.get_cookie(COOKIE_NAME)
    assert cookie is not None
    ours = build_app(sqlite_store, tmp_path, idp).test_client()
    ours.set_cookie(COOKIE_NAME, cookie.value, domain="localhost")

    assert not signed_in(ours)


def test_sign_out_needs_the_csrf_token(client: FlaskClient, idp: FakeOIDC) -> None:
    sign_in(client, idp, ALICE)

    assert client.post("/logout").status_code == 403
    assert signed_in(client)
    assert client.post("/logout", headers=csrf_header(client)).status_code == 302
    assert not signed_in(client)


# ---- the cookie --------------------------------------------------------------------------


def test_the_session_cookie_is_httponly_lax_and_secure_off_localhost_http(
    sqlite_store: Store, tmp_path: Path, idp: FakeOIDC, client: FlaskClient
) -> None:
    landed = sign_in(client, idp, ALICE)
    cookie = landed.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # http://localhost: a browser would drop a Secure cookie

    public = build_app(sqlite_store, tmp_path, idp, public_url="https://runner.example")
    started = public.test_client().get("/login?next=/runs", base_url="https://runner.example")
    assert "Secure" in started.headers["Set-Cookie"]
    assert "HttpOnly" in started.headers["Set-Cookie"]


# ---- GitLab: an OIDC provider at GITOPS_GITLAB_URL -------------------------------------


def test_gitlab_users_and_groups_are_their_own_entries(
    sqlite_store: Store, tmp_path: Path, idp: FakeOIDC
) -> None:
    # The fake stands in for GitLab: user name in `nickname`, groups only from userinfo.
    gitlab = {
        "gitlab_url": idp.issuer,
        "gitlab_oauth_client_id": idp.client_id,
        "gitlab_oauth_client_secret": idp.client_secret,
        "dashboard_viewers": ("gitlab:carol",),
        "dashboard_operators": ("group:gitlab:acme/infra",),
    }
    client = build_app(sqlite_store, tmp_path, idp, **gitlab).test_client()
    page = client.get("/login", headers=HTML).get_data(as_text=True)
    assert 'href="/login/oidc"' in page and 'href="/login/gitlab"' in page  # two: a choice

    idp.sign_in_as("dave@example.com", ["acme/infra"], username="dave", groups_in_id_token=False)
    assert follow_sign_in(client, "gitlab").status_code == 302
    acted = client.post("/api/test-action", headers=csrf_header(client))
    assert acted.json == {"by": "gitlab:dave", "role": "operator", "how": "oidc"}

    viewer = build_app(sqlite_store, tmp_path, idp, **gitlab).test_client()
    idp.sign_in_as("carol@example.com", ["acme/web"], username="carol", groups_in_id_token=False)
    follow_sign_in(viewer, "gitlab")
    assert viewer.post("/api/test-action", headers=csrf_header(viewer)).status_code == 403
    # `carol` on GitLab is not the OIDC user `carol@example.com`, nor the reverse.
    stranger = build_app(sqlite_store, tmp_path, idp, **gitlab).test_client()
    assert sign_in(stranger, idp, "carol@example.com").status_code == 403


def test_a_sign_in_expires(client: FlaskClient, idp: FakeOIDC) -> None:
    sign_in(client, idp, ALICE)
    assert signed_in(client)

    with client.session_transaction() as session:  # GITOPS_SESSION_HOURS later
        session["signed_in_until"] = int(time.time()) - 1

    assert not signed_in(client)
    assert client.get("/", headers=HTML).headers["Location"] == "/login?next=/"


def test_an_unknown_provider_is_404(client: FlaskClient) -> None:
    assert client.get("/login/facebook", headers=HTML).status_code == 404
    assert client.get("/login/facebook/callback?code=x&state=y").status_code == 404


def test_a_callback_without_a_sign_in_is_refused(client: FlaskClient) -> None:
    # What a provider sends when the person declines, or what anyone can type.
    declined = "/login/oidc/callback?error=access_denied&error_description=%3Cb%3Eno%3C/b%3E"
    forged = "/login/oidc/callback?code=made-up&state=made-up"

    for path in (declined, forged):
        refused = client.get(path, headers=HTML)
        assert refused.status_code == 401, path
        assert "<b>" not in refused.get_data(as_text=True)
    assert not signed_in(client)
