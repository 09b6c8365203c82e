"""The fake GitHub and the webhook builders, checked through PyGithub and raw HTTP.

Other tests trust these helpers to behave like GitHub; these tests pin the
behaviour the runner relies on (shapes PyGithub parses, auth, pagination,
status aggregation, signatures).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask import Flask, request
from github import BadCredentialsException, GithubException, UnknownObjectException
from werkzeug.serving import make_server

from tests.support.fake_github import FakeGitHub
from tests.support.github_payloads import (
    Pull,
    PullFile,
    Repo,
    build_delivery,
    issue_comment_event,
    ping_event,
    post_delivery,
    pull_request_event,
    sign,
)

REPO = "acme/infra"
TOKEN = "s3cret-token"
HEAD = "a" * 40
BASE = "b" * 40

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def commit(work: Path, name: str) -> str:
    (work / name).write_text(name)
    git(work, "add", name)
    git(work, "commit", "-qm", name)
    return git(work, "rev-parse", "HEAD")


@pytest.fixture
def bare_repo(tmp_path: Path) -> Path:
    """A bare repo with ``main`` and a ``feature`` branch one commit ahead."""
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    commit(work, "main.tf")
    git(work, "checkout", "-qb", "feature")
    commit(work, "feature.tf")
    bare = tmp_path / "infra.git"
    git(tmp_path, "clone", "-q", "--bare", str(work), str(bare))
    return bare


@pytest.fixture
def gh(bare_repo: Path) -> Iterator[FakeGitHub]:
    with FakeGitHub(token=TOKEN, login="gitops-bot") as fake:
        fake.add_repo(REPO, clone_url=f"file://{bare_repo}")
        yield fake


def open_pr(gh: FakeGitHub, **overrides: object) -> int:
    options: dict[str, object] = {
        "head_sha": HEAD,
        "head_ref": "feature",
        "base_sha": BASE,
        "user": "alice",
        "files": ["envs/prod/main.tf"],
    }
    return gh.open_pull(REPO, **(options | overrides))  # type: ignore[arg-type]


# --- REST through PyGithub -------------------------------------------------------


@pytest.mark.parametrize("form", ["root", "enterprise"])
def test_pygithub_works_with_root_and_enterprise_base_url(gh: FakeGitHub, form: str) -> None:
    base_url = gh.url if form == "root" else gh.api_url
    repo = gh.client(base_url=base_url).get_repo(REPO)

    assert (repo.full_name, repo.default_branch, repo.owner.login) == (REPO, "main", "acme")
    assert repo.clone_url == gh.repo(REPO).clone_url
    # URLs in responses follow the form the client used, so follow-up calls stay on it.
    assert repo.url == f"{base_url}/repos/{REPO}"
    last = gh.requests[-1]
    assert (last.method, last.path, last.authorization) == (
        "GET",
        f"/repos/{REPO}",
        f"token {TOKEN}",
    )
    assert last.prefix == ("" if form == "root" else "/api/v3")


def test_authenticated_user_is_the_configured_login(gh: FakeGitHub) -> None:
    assert gh.client().get_user().login == "gitops-bot"


def test_bad_or_missing_token_is_401_like_github(gh: FakeGitHub) -> None:
    with pytest.raises(BadCredentialsException):
        gh.client(token="wrong").get_repo(REPO)

    response = requests.get(f"{gh.api_url}/repos/{REPO}", timeout=5)
    assert response.status_code == 401
    assert response.json()["message"] == "Requires authentication"
    ok = requests.get(
        f"{gh.api_url}/repos/{REPO}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    )
    assert ok.status_code == 200


def test_get_pull_exposes_head_base_and_flags(gh: FakeGitHub) -> None:
    number = open_pr(gh, draft=True)
    gh.set_mergeable(REPO, number, False, "dirty")

    pr = gh.client().get_repo(REPO).get_pull(number)

    assert (pr.number, pr.state, pr.draft, pr.merged) == (number, "open", True, False)
    assert (pr.head.sha, pr.head.ref, pr.head.repo.full_name) == (HEAD, "feature", REPO)
    assert (pr.base.sha, pr.base.ref) == (BASE, "main")
    assert (pr.mergeable, pr.mergeable_state) == (False, "dirty")
    assert pr.user.login == "alice"
    assert pr.html_url == f"{gh.url}/{REPO}/pull/{number}"


def test_fork_pull_has_its_own_head_repo(gh: FakeGitHub) -> None:
    number = open_pr(gh, fork=True, head_clone_url="file:///elsewhere.git")

    head_repo = gh.client().get_repo(REPO).get_pull(number).head.repo

    assert (head_repo.full_name, head_repo.fork) == ("alice/infra", True)
    assert head_repo.clone_url == "file:///elsewhere.git"


def test_a_deleted_fork_leaves_head_repo_null(gh: FakeGitHub) -> None:
    number = open_pr(gh, fork=True)
    gh.delete_head_repo(REPO, number)

    head = gh.client().get_repo(REPO).get_pull(number).head

    assert (head.repo, head.sha, head.ref) == (None, HEAD, "feature")


def test_a_review_is_given_at_the_head_of_its_time(gh: FakeGitHub) -> None:
    number = open_pr(gh)
    gh.add_review(REPO, number, "bob")
    gh.push(REPO, number, "c" * 40)
    gh.add_review(REPO, number, "carol")

    reviews = gh.client().get_repo(REPO).get_pull(number).get_reviews()

    assert [(r.user.login, r.commit_id) for r in reviews] == [("bob", HEAD), ("carol", "c" * 40)]


def test_push_merge_and_close_change_the_pull(gh: FakeGitHub) -> None:
    first, second = open_pr(gh), open_pr(gh, head_ref="other")
    assert gh.push(REPO, first, "c" * 40) == HEAD
    merge_sha = gh.merge(REPO, first)
    gh.close(REPO, second)

    repo = gh.client().get_repo(REPO)
    merged = repo.get_pull(first)
    assert (merged.head.sha, merged.merged, merged.state) == ("c" * 40, True, "closed")
    assert merged.merge_commit_sha == merge_sha
    closed = repo.get_pull(second)
    assert (closed.state, closed.merged) == ("closed", False)
    assert [p.number for p in repo.get_pulls(state="all")] == [second, first]


def test_files_are_paginated_with_link_headers(gh: FakeGitHub) -> None:
    names = [f"modules/m{i}/main.tf" for i in range(5)]
    number = open_pr(gh, files=[*names[:4], PullFile(names[4], status="added", additions=3)])

    files = list(gh.client(per_page=2).get_repo(REPO).get_pull(number).get_files())

    assert [f.filename for f in files] == names
    assert (files[-1].status, files[-1].additions) == ("added", 3)
    pages = [r.query.get("page") for r in gh.requests if r.path.endswith("/files")]
    assert pages == [None, "2", "3"]


def test_reviews(gh: FakeGitHub) -> None:
    number = open_pr(gh)
    gh.add_review(REPO, number, "bob")
    gh.add_review(REPO, number, "carol", state="CHANGES_REQUESTED", commit_id=BASE)

    reviews = list(gh.client().get_repo(REPO).get_pull(number).get_reviews())

    assert [(r.user.login, r.state, r.commit_id) for r in reviews] == [
        ("bob", "APPROVED", HEAD),
        ("carol", "CHANGES_REQUESTED", BASE),
    ]


def test_comment_lifecycle_and_reactions(gh: FakeGitHub) -> None:
    number = open_pr(gh)
    human = gh.add_comment(REPO, number, "gitops plan", "alice")
    repo = gh.client().get_repo(REPO)
    pr = repo.get_pull(number)

    pr.get_issue_comment(human).create_reaction("eyes")
    posted = pr.create_issue_comment("Plan: 1 to add")
    posted.edit("Plan: 2 to add")
    pr.as_issue().create_reaction("rocket")

    assert [(c.user, c.body) for c in gh.comments(REPO, number)] == [
        ("alice", "gitops plan"),
        ("gitops-bot", "Plan: 2 to add"),
    ]
    assert [c.user.login for c in pr.get_issue_comments()] == ["alice", "gitops-bot"]
    assert [(r.user, r.content) for r in gh.reactions(REPO, comment_id=human)] == [
        ("gitops-bot", "eyes")
    ]
    assert [r.content for r in gh.reactions(REPO, issue_number=number)] == ["rocket"]
    posted.delete()
    with pytest.raises(UnknownObjectException):
        pr.get_issue_comment(posted.id)


def test_statuses_and_combined_status(gh: FakeGitHub) -> None:
    commit_ = gh.client().get_repo(REPO).get_commit(HEAD)
    assert commit_.get_combined_status().state == "pending"

    commit_.create_status("pending", context="gitops/plan", description="planning")
    commit_.create_status("success", context="gitops/plan", target_url="https://ci/1")
    assert commit_.get_combined_status().state == "success"
    commit_.create_status("failure", context="gitops/policy")

    combined = commit_.get_combined_status()
    assert (combined.state, combined.total_count, combined.sha) == ("failure", 2, HEAD)
    assert [s.state for s in commit_.get_statuses()] == ["failure", "success", "pending"]
    assert [(s.context, s.state) for s in gh.statuses(REPO, HEAD)] == [
        ("gitops/plan", "pending"),
        ("gitops/plan", "success"),
        ("gitops/policy", "failure"),
    ]


def test_collaborator_permission(gh: FakeGitHub) -> None:
    gh.set_permission(REPO, "alice", "admin")
    gh.set_permission(REPO, "bob", "maintain")
    repo = gh.client().get_repo(REPO)

    assert repo.get_collaborator_permission("alice") == "admin"
    assert repo.get_collaborator_permission("bob") == "write"
    assert repo.get_collaborator_permission("mallory") == "none"


def test_drift_issue_create_find_edit_close(gh: FakeGitHub) -> None:
    open_pr(gh)  # PRs show up in GitHub's issue list, but not under the drift label
    repo = gh.client().get_repo(REPO)

    issue = repo.create_issue("Drift in prod", body="3 changes", labels=["drift", "prod"])
    found = list(repo.get_issues(state="open", labels=["drift"]))
    assert [i.number for i in found] == [issue.number]
    assert {label.name for label in found[0].labels} == {"drift", "prod"}
    assert len(list(repo.get_issues(state="open"))) == 2

    issue.edit(body="4 changes")
    issue.edit(state="closed")

    assert list(repo.get_issues(state="open", labels=["drift"])) == []
    [stored] = gh.issues(REPO)
    assert (stored.state, stored.body, stored.state_reason) == ("closed", "4 changes", "completed")
    assert repo.get_issue(issue.number).closed_by.login == "gitops-bot"


def test_compare_is_settable_and_otherwise_computed_with_git(gh: FakeGitHub) -> None:
    repo = gh.client().get_repo(REPO)
    computed = repo.compare("main", "feature")
    assert (computed.status, computed.ahead_by, computed.behind_by) == ("ahead", 1, 0)
    assert repo.compare("feature", "main").status == "behind"

    gh.set_compare(REPO, "main", "feature", "diverged", ahead_by=2, behind_by=3)
    canned = repo.compare("main", "feature")
    assert (canned.status, canned.ahead_by, canned.behind_by) == ("diverged", 2, 3)


def test_injected_fault_fails_once(gh: FakeGitHub) -> None:
    number = open_pr(gh)
    pr = gh.client().get_repo(REPO).get_pull(number)
    gh.fail_next("POST", rf"/repos/{REPO}/issues/\d+/comments", status=502)

    with pytest.raises(GithubException) as failure:
        pr.create_issue_comment("first")
    assert failure.value.status == 502
    pr.create_issue_comment("second")
    assert [c.body for c in gh.comments(REPO, number)] == ["second"]


# --- webhook payloads ------------------------------------------------------------


def test_sign_matches_hmac_sha256() -> None:
    body = b'{"zen":"hi"}'
    expected = hmac.new(b"secret", body, hashlib.sha256).hexdigest()

    assert sign(body, "secret") == f"sha256={expected}"


def test_delivery_headers_look_like_hookshot() -> None:
    body, headers = build_delivery("ping", ping_event(), "secret", delivery_id="d-1")

    assert headers["X-GitHub-Event"] == "ping"
    assert headers["X-GitHub-Delivery"] == "d-1"
    assert headers["X-Hub-Signature-256"] == sign(body, "secret")
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("GitHub-Hookshot/")
    assert "X-Hub-Signature-256" not in build_delivery("ping", ping_event(), None)[1]


def test_pull_request_event_from_fake_state(gh: FakeGitHub) -> None:
    number = open_pr(gh)
    before = gh.push(REPO, number, "c" * 40)

    event = pull_request_event(
        "synchronize", gh.repo(REPO), gh.pull(REPO, number), "alice", before=before, hosts=gh.hosts
    )

    pr = event["pull_request"]
    assert (event["before"], event["after"], event["number"]) == (HEAD, "c" * 40, number)
    assert (pr["head"]["sha"], pr["head"]["ref"], pr["head"]["repo"]["full_name"]) == (
        "c" * 40,
        "feature",
        REPO,
    )
    assert pr["head"]["repo"]["clone_url"] == gh.repo(REPO).clone_url
    assert (pr["base"]["sha"], pr["base"]["ref"]) == (BASE, "main")
    assert (pr["draft"], pr["merged"], pr["user"]["login"]) == (False, False, "alice")
    repository = event["repository"]
    assert (repository["full_name"], repository["owner"]["login"]) == (REPO, "acme")
    assert repository["html_url"] == f"{gh.url}/{REPO}"
    assert "installation" not in event


def test_closed_event_reflects_merge_and_rejects_open_pr() -> None:
    repo = Repo(REPO, clone_url="file:///infra.git")
    pr = Pull(number=3, head_sha=HEAD, head_ref="feature", base_sha=BASE)
    with pytest.raises(ValueError):
        pull_request_event("closed", repo, pr, "alice")

    merged = Pull(
        number=3,
        head_sha=HEAD,
        head_ref="feature",
        base_sha=BASE,
        state="closed",
        merged=True,
        merge_commit_sha="d" * 40,
    )
    event = pull_request_event("closed", repo, merged, "alice")
    assert (event["pull_request"]["merged"], event["pull_request"]["merge_commit_sha"]) == (
        True,
        "d" * 40,
    )
    assert event["pull_request"]["html_url"] == f"https://github.com/{REPO}/pull/3"


def test_issue_comment_event_marks_prs_and_bots() -> None:
    repo = Repo(REPO, clone_url="file:///infra.git")

    on_pr = issue_comment_event("created", repo, 4, "gitops apply", "alice", 99)
    on_issue = issue_comment_event(
        "created", repo, 5, "hi", "gitops-runner[bot]", 100, is_pull_request=False
    )

    assert "pull_request" in on_pr["issue"] and "pull_request" not in on_issue["issue"]
    assert (on_pr["comment"]["id"], on_pr["comment"]["body"]) == (99, "gitops apply")
    assert on_pr["comment"]["user"] == on_pr["sender"]
    assert (on_pr["comment"]["user"]["type"], on_issue["comment"]["user"]["type"]) == (
        "User",
        "Bot",
    )
    assert on_pr["issue"]["number"] == 4


def test_post_delivery_sends_verifiable_signature() -> None:
    received: dict[str, object] = {}
    app = Flask("receiver")

    @app.post("/events")
    def events() -> tuple[str, int]:
        body = request.get_data()
        received["valid"] = hmac.compare_digest(
            request.headers["X-Hub-Signature-256"], sign(body, "hook-secret")
        )
        received["payload"] = json.loads(body)
        return "", 202

    server = make_server("127.0.0.1", 0, app)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/events"
        response = post_delivery(url, "ping", ping_event(hook_id=7), "hook-secret")
    finally:
        server.shutdown()
        thread.join()

    assert response.status_code == 202
    assert received["valid"] is True
    assert received["payload"]["hook_id"] == 7  # type: ignore[index]
