"""The runner installed as a GitHub App: installation tokens instead of a personal token.

The fake GitHub checks each JWT against the App's public key and hands out expiring
installation tokens, as GitHub does; the runner is wired from App settings only.
"""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from runner.cli import cli
from runner.events.model import RepoRef
from runner.forge.base import ForgeError
from runner.forge.factory import ForgeNotConfigured, build_forge
from runner.jobs.model import decode_event, encode_event
from runner.results.masking import REDACTED, Masker
from runner.settings import load_settings
from runner.wiring import _clone_credentials
from tests.support.pr_world import (
    APP_CHANGE,
    APP_INSTALLATION,
    FULL_NAME,
    PullRequestWorld,
    make_app_world,
)

pytest_plugins = ["tests.support.app_world"]  # the `app_world` fixture

BOT = "gitops-runner[bot]"


def _repo_requests(world: PullRequestWorld) -> list[str]:
    return [r.authorization or "" for r in world.github.requests if r.path.startswith("/repos/")]


def test_a_pr_is_planned_and_commented_as_the_app(app_world):
    number = app_world.open_pr("feature", APP_CHANGE)

    comments = app_world.github.comments(FULL_NAME, number)
    assert comments and "infra/app" in comments[-1].body
    assert {c.user for c in comments} == {BOT}
    assert app_world.statuses(app_world.head_sha(number))["gitops/plan"] == "success"
    tokens = app_world.github.installation_tokens()
    assert len(tokens) == 1
    assert set(_repo_requests(app_world)) == {f"token {tokens[0]}"}


def test_an_expiring_installation_token_is_renewed_mid_run(tmp_path):
    # PyGithub renews a token 20 s before it expires: this one is due after a second.
    world = make_app_world(tmp_path, token_lifetime=21.0)
    try:
        number = world.open_pr("feature", APP_CHANGE)
        first = world.github.installation_tokens()[-1]
        time.sleep(1.5)
        before = len(world.github.requests)
        world.comment(number, "gitops plan")

        assert "infra/app" in world.last_comment(number)
        assert len(world.github.installation_tokens()) >= 2
        later = [r.authorization for r in world.github.requests[before:]]
        assert f"token {first}" not in later
    finally:
        world.github.stop()
        world.services.store.close()


def test_clones_use_the_installation_token(app_world):
    app_world.open_pr("feature", APP_CHANGE)
    credentials = _clone_credentials(app_world.settings, app_world.services.forge_for)

    auth = credentials(f"{app_world.github.url}/{FULL_NAME}.git")

    assert auth is not None and auth.username == "x-access-token"
    assert auth.token == app_world.github.installation_tokens()[-1]


def test_the_apps_own_comment_is_ignored(app_world):
    number = app_world.open_pr("feature", APP_CHANGE)
    posted = len(app_world.comments(number))

    app_world.comment(number, "gitops plan", user=BOT)

    assert app_world.services.forge_for("github").bot_login() == BOT
    assert len(app_world.comments(number)) == posted + 1  # only the bot's own comment


def test_a_key_the_app_does_not_have_is_named(tmp_path):
    other = make_app_world(tmp_path / "other")
    other.github.stop()
    other.services.store.close()
    wrong_key = (tmp_path / "other" / "app-key.pem").read_text()
    world = make_app_world(tmp_path / "world", private_key=wrong_key)
    try:
        repo = RepoRef(
            "github",
            FULL_NAME,
            clone_url=world.clone_url,
            html_url=f"{world.github.url}/{FULL_NAME}",
            default_branch="main",
            installation_id=APP_INSTALLATION,
        )
        with pytest.raises(ForgeError) as raised:
            world.services.forge_for("github").permission(repo, "alice")
        message = str(raised.value)
        assert "GitHub App 31337 could not act as installation 4242: HTTP 401" in message
        assert "GITOPS_GITHUB_APP_ID" in message and "BEGIN" not in message
    finally:
        world.github.stop()
        world.services.store.close()


def test_a_key_that_is_not_pem_fails_before_any_request(tmp_path):
    settings = load_settings(data_dir=tmp_path, github_app_id=1, github_app_key="not a key")

    with pytest.raises(ForgeNotConfigured, match="GITOPS_GITHUB_APP_KEY: not an unencrypted PEM"):
        build_forge(settings, "github")
    assert "not a key" in settings.secret_values()


def test_a_pr_that_prints_the_apps_key_file_shows_none_of_it(app_world):
    # The attack: a PR's Terraform reads the key from the path it guessed, and the plan
    # (comment, check run, run log) would print it as an output's value.
    key_file = app_world.settings.github_app_key_file
    leak = {"infra/app/leak.tf": f'output "leak" {{\n  value = file("{key_file}")\n}}\n'}

    number = app_world.open_pr("leak", leak)

    runs = app_world.github.check_runs(FULL_NAME, app_world.head_sha(number))
    outputs = [part or "" for run in runs for part in (run.output.summary, run.output.text)]
    logs = [path.read_text() for path in app_world.settings.logs_dir.rglob("*") if path.is_file()]
    shown = "\n".join([*app_world.comments(number), *outputs, *logs])
    assert "+ leak" in shown and "(sensitive value)" in shown  # the plan did print it
    key_lines = [line for line in key_file.read_text().splitlines() if line.strip()]
    assert len(key_lines) > 3
    assert [line for line in key_lines if line in shown] == []


def test_the_key_files_contents_are_masked_and_an_unreadable_one_is_skipped(tmp_path):
    key_file = tmp_path / "key.pem"
    key_file.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ib2R5\n-----END\n")
    settings = load_settings(data_dir=tmp_path, github_app_id=1, github_app_key_file=key_file)
    masker = Masker.from_secrets(settings.secret_values())

    assert masker.mask("  c2VjcmV0LWtleS1ib2R5  ") == f"  {REDACTED}  "
    key_file.unlink()
    assert settings.secret_values() == ()


def test_an_app_without_a_key_names_the_settings(tmp_path):
    settings = load_settings(data_dir=tmp_path, github_app_id=1)

    with pytest.raises(ForgeNotConfigured, match="GITOPS_GITHUB_APP_KEY_FILE"):
        build_forge(settings, "github")


def test_the_installation_travels_with_the_job_and_old_rows_still_read(app_world):
    number = app_world.github.open_pull(
        FULL_NAME, head_sha=app_world.main_sha(), head_ref="x", base_sha=app_world.main_sha()
    )
    event = app_world.pr_event("opened", number)
    kind, payload = encode_event(event)

    assert decode_event(kind, payload).repo.installation_id == APP_INSTALLATION
    del payload["repo"]["installation_id"]  # a version 2 row from before Apps
    assert decode_event(kind, payload, version=2).repo.installation_id is None


def test_the_manifest_asks_for_exactly_what_the_runner_uses():
    result = CliRunner().invoke(
        cli, ["github-app", "manifest", "--url", "https://runner.example.com/"]
    )

    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    assert manifest["hook_attributes"]["url"] == "https://runner.example.com/events"
    assert manifest["default_events"] == [
        "pull_request",
        "issue_comment",
        "check_run",
        "check_suite",
    ]
    assert manifest["default_permissions"] == {
        "metadata": "read",
        "contents": "read",
        "pull_requests": "write",
        "issues": "write",
        "statuses": "write",
        "checks": "write",
    }
