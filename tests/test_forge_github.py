"""GitHubForge over real HTTP against the fake GitHub (Enterprise-style /api/v3 root).

Also covers `build_forge` and the check-runs endpoint this forge added to the fake.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from github import GithubException

from runner.events.model import RepoRef
from runner.forge.base import Approval, CommitState, Forge, ForgeError
from runner.forge.factory import ForgeNotConfigured, build_forge
from runner.forge.github import STATUS_DESCRIPTION_CAP, GitHubForge
from runner.settings import Settings
from tests.support.fake_github import FakeGitHub

NAME = "acme/infra"
TOKEN = "ghp_s3cret-forge-token"
HEAD = "a" * 40
BASE = "b" * 40


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    with FakeGitHub(token=TOKEN, login="gitops-bot") as gh:
        gh.add_repo(NAME, clone_url="file:///nonexistent/infra.git")
        yield gh


@pytest.fixture
def repo(fake: FakeGitHub) -> RepoRef:
    return RepoRef(
        forge="github",
        full_name=NAME,
        clone_url="file:///nonexistent/infra.git",
        html_url=f"{fake.url}/{NAME}",
        default_branch="main",
    )


@pytest.fixture
def forge(fake: FakeGitHub) -> GitHubForge:
    # Production retry settings; no pauses between mergeability re-reads.
    return GitHubForge(fake.api_url, TOKEN, mergeable_poll=(0, 0))


@pytest.fixture
def pr(fake: FakeGitHub) -> int:
    return fake.open_pull(NAME, head_sha=HEAD, head_ref="feature", base_sha=BASE, user="alice")


def requests_to(fake: FakeGitHub, method: str, path_end: str) -> list[str]:
    return [r.path for r in fake.requests if r.method == method and r.path.endswith(path_end)]


def test_implements_every_forge_member() -> None:
    wanted = {n for n in dir(Forge) if not n.startswith("_")} | set(Forge.__annotations__)
    assert wanted <= set(dir(GitHubForge))
    assert (GitHubForge.name, GitHubForge.comment_cap) == ("github", 65_536)


# --- pull requests ----------------------------------------------------------------------


def test_pull_request_fields(fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, pr: int) -> None:
    info = forge.pull_request(repo, pr)

    assert info.number == pr
    assert info.html_url == f"{fake.url}/{NAME}/pull/{pr}"
    assert (info.author, info.head_sha, info.head_ref) == ("alice", HEAD, "feature")
    assert (info.base_ref, info.base_sha) == ("main", BASE)
    assert (info.state, info.draft, info.mergeable) == ("open", False, True)
    assert {r.prefix for r in fake.requests} == {"/api/v3"}  # Enterprise root kept


def test_a_pull_request_from_the_same_repository_is_not_a_fork(
    forge: GitHubForge, repo: RepoRef, pr: int
) -> None:
    assert forge.pull_request(repo, pr).is_fork is False


def test_a_pull_request_from_a_fork_or_a_deleted_one_is_a_fork(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef
) -> None:
    fork = fake.open_pull(
        NAME, head_sha=HEAD, head_ref="feature", base_sha=BASE, user="mallory", fork=True
    )
    assert forge.pull_request(repo, fork).is_fork is True

    fake.delete_head_repo(NAME, fork)
    assert forge.pull_request(repo, fork).is_fork is True


def test_pull_request_draft_closed_and_merged(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, pr: int
) -> None:
    draft = fake.open_pull(NAME, head_sha=HEAD, head_ref="wip", base_sha=BASE, draft=True)
    closed = fake.open_pull(NAME, head_sha=HEAD, head_ref="old", base_sha=BASE)
    fake.close(NAME, closed)
    fake.merge(NAME, pr)

    assert forge.pull_request(repo, draft).draft is True
    assert forge.pull_request(repo, closed).state == "closed"
    merged = forge.pull_request(repo, pr)
    assert (merged.state, merged.mergeable) == ("merged", None)


def test_pull_request_rereads_while_mergeable_is_computed(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, pr: int
) -> None:
    fake.set_mergeable(NAME, pr, None, "unknown")

    assert forge.pull_request(repo, pr).mergeable is None
    assert len(requests_to(fake, "GET", f"/pulls/{pr}")) == 3  # one read + two re-reads


def test_pull_request_reads_once_when_mergeable_known_or_merged(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, pr: int
) -> None:
    forge.pull_request(repo, pr)
    fake.merge(NAME, pr)  # mergeable is None forever once merged
    forge.pull_request(repo, pr)

    assert len(requests_to(fake, "GET", f"/pulls/{pr}")) == 2


def test_missing_pull_request_is_a_forge_error(forge: GitHubForge, repo: RepoRef) -> None:
    with pytest.raises(ForgeError, match="read the pull request: HTTP 404") as caught:
        forge.pull_request(repo, 404)
    assert caught.value.status == 404


def test_repo_of_another_forge_is_refused(forge: GitHubForge, repo: RepoRef) -> None:
    gitlab = RepoRef("gitlab", NAME, repo.clone_url, "https://gitlab.example/acme/infra", "main")
    with pytest.raises(ValueError, match="gitlab"):
        forge.pull_request(gitlab, 1)


# --- comments, reactions, statuses ----------------------------------------------------------


def test_post_and_edit_comment(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, pr: int
) -> None:
    comment_id = forge.post_comment(repo, pr, "Plan: 1 to add")
    [posted] = fake.comments(NAME, pr)
    assert (posted.id, posted.body, posted.user) == (comment_id, "Plan: 1 to add", "gitops-bot")

    forge.edit_comment(repo, pr, comment_id, "Plan: 2 to add")
    assert [c.body for c in fake.comments(NAME, pr)] == ["Plan: 2 to add"]
    # One request each: the lazy client fetches nothing before writing.
    assert [(r.method, r.path) for r in fake.requests] == [
        ("POST", f"/repos/{NAME}/issues/{pr}/comments"),
        ("PATCH", f"/repos/{NAME}/issues/comments/{comment_id}"),
    ]


def test_comment_over_the_cap_is_refused_without_a_request(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, pr: int
) -> None:
    with pytest.raises(ForgeError, match="exceeds the cap"):
        forge.post_comment(repo, pr, "x" * (forge.comment_cap + 1))
    assert fake.requests == []


def test_react_on_a_comment(fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, pr: int) -> None:
    comment_id = fake.add_comment(NAME, pr, "gitops plan", user="alice")

    forge.react(repo, pr, comment_id, "eyes")

    [reaction] = fake.reactions(NAME, comment_id=comment_id)
    assert (reaction.content, reaction.user) == ("eyes", "gitops-bot")


def test_set_status(fake: FakeGitHub, forge: GitHubForge, repo: RepoRef) -> None:
    forge.set_status(repo, HEAD, "gitops/plan", CommitState.PENDING, "Planning…")
    forge.set_status(
        repo, HEAD, "gitops/plan: app", CommitState.SUCCESS, "1 to add", "https://runner/x"
    )

    first, second = fake.statuses(NAME, HEAD)
    assert (first.context, first.state, first.description) == (
        "gitops/plan",
        "pending",
        "Planning…",
    )
    assert first.target_url is None
    assert (second.context, second.state, second.target_url) == (
        "gitops/plan: app",
        "success",
        "https://runner/x",
    )


def test_long_status_description_is_truncated(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef
) -> None:
    forge.set_status(repo, HEAD, "gitops/apply", CommitState.FAILURE, "e" * 500)

    [status] = fake.statuses(NAME, HEAD)
    assert status.description == "e" * (STATUS_DESCRIPTION_CAP - 1) + "…"
    assert status.state == "failure"


# --- users --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("admin", "admin"),
        ("maintain", "write"),
        ("write", "write"),
        ("triage", "read"),
        ("read", "read"),
        ("none", "none"),
    ],
)
def test_permission(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, role: str, expected: str
) -> None:
    fake.set_permission(NAME, "bob", role)
    assert forge.permission(repo, "bob") == expected


def test_permission_of_a_stranger_is_none(forge: GitHubForge, repo: RepoRef) -> None:
    assert forge.permission(repo, "mallory") == "none"


def test_permission_in_an_unknown_repo_is_none(forge: GitHubForge, repo: RepoRef) -> None:
    # GitHub answers 404 for repos the token cannot see; deny rather than fail.
    other = RepoRef("github", "acme/secret", repo.clone_url, repo.html_url, "main")
    assert forge.permission(other, "bob") == "none"


def test_bot_login_is_fetched_once(fake: FakeGitHub, forge: GitHubForge) -> None:
    assert forge.bot_login() == "gitops-bot"
    assert forge.bot_login() == "gitops-bot"
    assert len(requests_to(fake, "GET", "/user")) == 1


def test_approvals_follow_each_users_latest_review(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, pr: int
) -> None:
    fake.add_review(NAME, pr, "alice", "APPROVED")
    fake.add_review(NAME, pr, "bob", "APPROVED")
    fake.add_review(NAME, pr, "bob", "CHANGES_REQUESTED")
    fake.add_review(NAME, pr, "carol", "APPROVED")
    fake.add_review(NAME, pr, "carol", "COMMENTED")  # a comment leaves the approval
    fake.add_review(NAME, pr, "dave", "APPROVED")
    fake.add_review(NAME, pr, "dave", "DISMISSED")
    fake.add_review(NAME, pr, "erin", "CHANGES_REQUESTED")
    fake.add_review(NAME, pr, "erin", "APPROVED")
    fake.add_review(NAME, pr, "frank", "COMMENTED")

    assert {a.user for a in forge.approvals(repo, pr)} == {"alice", "carol", "erin"}


def test_an_approval_carries_the_commit_it_was_given_at(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, pr: int
) -> None:
    fake.add_review(NAME, pr, "bob", "APPROVED")
    fake.push(NAME, pr, "c" * 40)
    fake.add_review(NAME, pr, "carol", "APPROVED")
    fake.add_review(NAME, pr, "bob", "COMMENTED")  # at the new head: the approval stays old

    assert sorted(forge.approvals(repo, pr), key=lambda a: a.user) == [
        Approval("bob", HEAD),
        Approval("carol", "c" * 40),
    ]


def test_no_reviews_no_approvals(forge: GitHubForge, repo: RepoRef, pr: int) -> None:
    assert forge.approvals(repo, pr) == []


# --- mergeability -------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["clean", "unstable", "has_hooks"])
def test_mergeable_states(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, pr: int, state: str
) -> None:
    fake.set_mergeable(NAME, pr, True, state)
    assert forge.is_mergeable(repo, pr, ["gitops/apply"]) is True


@pytest.mark.parametrize("state", ["dirty", "behind", "draft", "unknown"])
def test_unmergeable_states(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, pr: int, state: str
) -> None:
    fake.set_mergeable(NAME, pr, True, state)
    assert forge.is_mergeable(repo, pr, ["gitops/apply"]) is False


def test_conflicts_or_still_computing_are_not_mergeable(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, pr: int
) -> None:
    fake.set_mergeable(NAME, pr, False, "dirty")
    assert forge.is_mergeable(repo, pr, []) is False
    fake.set_mergeable(NAME, pr, None, "unknown")
    assert forge.is_mergeable(repo, pr, []) is False


def test_closed_pr_is_not_mergeable(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, pr: int
) -> None:
    fake.close(NAME, pr)
    assert forge.is_mergeable(repo, pr, []) is False


def test_blocked_only_by_our_apply_status_is_mergeable(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, pr: int
) -> None:
    fake.set_mergeable(NAME, pr, True, "blocked")
    forge.set_status(repo, HEAD, "ci/build", CommitState.FAILURE, "red")
    forge.set_status(repo, HEAD, "ci/build", CommitState.SUCCESS, "green")  # newest wins
    forge.set_status(repo, HEAD, "gitops/apply", CommitState.PENDING, "waiting")
    forge.set_status(repo, HEAD, "gitops/apply: app", CommitState.FAILURE, "not applied")
    fake.add_check_run(NAME, HEAD, "lint", conclusion="failure")
    fake.add_check_run(NAME, HEAD, "lint", conclusion="success")  # a re-run, newest wins
    fake.add_check_run(NAME, HEAD, "docs", conclusion="skipped")

    assert forge.is_mergeable(repo, pr, ["gitops/apply"]) is True


def test_blocked_by_another_status_is_not_mergeable(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, pr: int
) -> None:
    fake.set_mergeable(NAME, pr, True, "blocked")
    forge.set_status(repo, HEAD, "gitops/apply", CommitState.PENDING, "waiting")
    forge.set_status(repo, HEAD, "ci/build", CommitState.PENDING, "running")

    assert forge.is_mergeable(repo, pr, ["gitops/apply"]) is False
    # Ignoring "gitops/apply" does not ignore a context that merely starts the same way.
    forge.set_status(repo, HEAD, "ci/build", CommitState.SUCCESS, "green")
    forge.set_status(repo, HEAD, "gitops/applyx", CommitState.FAILURE, "other")
    assert forge.is_mergeable(repo, pr, ["gitops/apply"]) is False


@pytest.mark.parametrize(
    ("status", "conclusion"), [("completed", "failure"), ("in_progress", None)]
)
def test_blocked_by_a_check_run_is_not_mergeable(
    fake: FakeGitHub,
    forge: GitHubForge,
    repo: RepoRef,
    pr: int,
    status: str,
    conclusion: str | None,
) -> None:
    fake.set_mergeable(NAME, pr, True, "blocked")
    forge.set_status(repo, HEAD, "gitops/apply", CommitState.PENDING, "waiting")
    fake.add_check_run(NAME, HEAD, "tests", status=status, conclusion=conclusion)

    assert forge.is_mergeable(repo, pr, ["gitops/apply"]) is False


def test_blocked_with_statuses_past_the_first_page(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, pr: int
) -> None:
    fake.set_mergeable(NAME, pr, True, "blocked")
    forge.set_status(repo, HEAD, "ci/old", CommitState.FAILURE, "red")
    for n in range(100):  # newest first: the failure lands on page two
        forge.set_status(repo, HEAD, f"ci/{n}", CommitState.SUCCESS, "green")

    assert forge.is_mergeable(repo, pr, ["gitops/apply"]) is False
    listed = [r for r in fake.requests if r.method == "GET" and "/statuses/" in r.path]
    pages = [r.query.get("page", "1") for r in listed]
    assert pages == ["1", "2"]


# --- drift issues -------------------------------------------------------------------------


def test_issue_lifecycle(fake: FakeGitHub, forge: GitHubForge, repo: RepoRef) -> None:
    title = "Drift detected: app (default)"
    assert forge.find_open_issue(repo, title) is None

    opened = forge.open_issue(repo, title, "2 to change", labels=["drift", "terraform"])
    [stored] = fake.issues(NAME)
    assert (stored.number, stored.title, stored.body) == (opened.number, title, "2 to change")
    assert stored.labels == ("drift", "terraform")
    assert (opened.state, opened.body) == ("open", "2 to change")
    assert opened.html_url.endswith(f"/{NAME}/issues/{opened.number}")

    assert forge.find_open_issue(repo, title) == opened
    assert forge.find_open_issue(repo, title.upper()) is None  # exact match only
    assert forge.find_open_issue(repo, "Drift detected") is None

    forge.update_issue(repo, opened.number, "3 to change")
    assert fake.issues(NAME)[0].body == "3 to change"
    found = forge.find_open_issue(repo, title)
    assert found is not None and found.body == "3 to change"

    forge.close_issue(repo, opened.number, "No drift any more.")
    assert fake.issues(NAME)[0].state == "closed"
    assert [c.body for c in fake.comments(NAME, opened.number)] == ["No drift any more."]
    assert forge.find_open_issue(repo, title) is None


def test_find_open_issue_never_returns_a_pull_request(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef
) -> None:
    title = "Drift detected: app"
    fake.open_pull(NAME, head_sha=HEAD, head_ref="f", base_sha=BASE, user="gitops-bot", title=title)
    assert forge.find_open_issue(repo, title) is None
    # Only the runner's own issues are considered.
    listed = [r for r in fake.requests if r.path == f"/repos/{NAME}/issues"]
    assert listed[0].query["creator"] == "gitops-bot"
    assert listed[0].query["state"] == "open"


def test_find_open_issue_pages_through_many_issues(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef
) -> None:
    for n in range(120):
        forge.open_issue(repo, f"issue {n}", "")
    # Newest first: "issue 0" is on the second page of 100.
    found = forge.find_open_issue(repo, "issue 0")
    assert found is not None and found.title == "issue 0"
    # Listed issues are used as listed; only the match may be read again.
    reads = [r.path for r in fake.requests if r.method == "GET" and "/issues/" in r.path]
    assert reads in ([], [f"/repos/{NAME}/issues/{found.number}"])


# --- failures ------------------------------------------------------------------------------


def test_a_5xx_once_is_retried(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, pr: int
) -> None:
    fake.fail_next("GET", rf"/repos/{NAME}/pulls/{pr}", status=502)

    assert forge.pull_request(repo, pr).number == pr
    assert len(requests_to(fake, "GET", f"/pulls/{pr}")) == 2


def test_idempotent_posts_are_retried(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, pr: int
) -> None:
    comment_id = fake.add_comment(NAME, pr, "gitops plan", user="alice")
    fake.fail_next("POST", rf"/repos/{NAME}/statuses/{HEAD}", status=500)
    fake.fail_next("POST", rf"/repos/{NAME}/issues/comments/\d+/reactions", status=503)

    forge.set_status(repo, HEAD, "gitops/plan", CommitState.SUCCESS, "ok")
    forge.react(repo, pr, comment_id, "eyes")

    assert [s.context for s in fake.statuses(NAME, HEAD)] == ["gitops/plan"]
    assert len(fake.reactions(NAME, comment_id=comment_id)) == 1


def test_a_5xx_on_a_new_comment_is_not_retried(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, pr: int
) -> None:
    # GitHub may have stored the comment before failing; a retry could post it twice.
    fake.fail_next("POST", rf"/repos/{NAME}/issues/{pr}/comments", status=502)

    with pytest.raises(ForgeError, match="post a comment: HTTP 502") as caught:
        forge.post_comment(repo, pr, "Plan")
    assert caught.value.status == 502
    assert len(requests_to(fake, "POST", f"/issues/{pr}/comments")) == 1


def test_persistent_5xx_gives_up_quickly(
    fake: FakeGitHub, forge: GitHubForge, repo: RepoRef, pr: int
) -> None:
    fake.fail_next("GET", rf"/repos/{NAME}/pulls/{pr}", status=500, times=10)

    with pytest.raises(ForgeError, match="HTTP 500"):
        forge.pull_request(repo, pr)
    assert len(requests_to(fake, "GET", f"/pulls/{pr}")) == 4  # one try + three retries


def test_bad_token_is_a_forge_error_without_the_token(fake: FakeGitHub, repo: RepoRef) -> None:
    wrong = "ghp_wrong-token-value"
    forge = GitHubForge(fake.api_url, wrong)

    with pytest.raises(ForgeError) as caught:
        forge.post_comment(repo, 1, "hello")

    error = caught.value
    assert error.status == 401
    assert "Bad credentials" in str(error)
    assert wrong not in str(error) and wrong not in repr(error)
    assert wrong not in repr(forge)
    assert len(fake.requests) == 1  # a 401 is final


def test_unreachable_server_is_a_forge_error(repo: RepoRef) -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    forge = GitHubForge(f"http://127.0.0.1:{port}/api/v3", TOKEN, retry=False)

    with pytest.raises(ForgeError, match="no response") as caught:
        forge.bot_login()
    assert caught.value.status is None
    assert TOKEN not in str(caught.value)


def test_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="token"):
        GitHubForge("https://api.github.com", "")


# --- build_forge ---------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The environment outranks values passed to Settings.
    for var in ("GITOPS_GITHUB_TOKEN", "GITOPS_GITHUB_API_URL"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.usefixtures("clean_env")
def test_build_github_forge(fake: FakeGitHub, repo: RepoRef) -> None:
    settings = Settings(github_token=TOKEN, github_api_url=fake.api_url + "/")

    forge = build_forge(settings, "github")

    assert isinstance(forge, GitHubForge)
    assert forge.api_url == fake.api_url
    assert forge.bot_login() == "gitops-bot"


@pytest.mark.usefixtures("clean_env")
def test_build_github_forge_without_token() -> None:
    with pytest.raises(ForgeNotConfigured, match="GITOPS_GITHUB_TOKEN"):
        build_forge(Settings(), "github")


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("name", ["gitlab", "bitbucket"])
def test_build_other_forges_is_not_configured(name: str) -> None:
    with pytest.raises(ForgeNotConfigured, match=name):
        build_forge(Settings(github_token=TOKEN), name)  # type: ignore[arg-type]


# --- the fake's check-runs endpoint ------------------------------------------------------


def test_fake_check_runs_latest_and_all(fake: FakeGitHub) -> None:
    first = fake.add_check_run(NAME, HEAD, "tests", conclusion="failure")
    rerun = fake.add_check_run(NAME, HEAD, "tests", status="in_progress", conclusion=None)
    fake.add_check_run(NAME, HEAD, "lint")
    commit = fake.client().get_repo(NAME).get_commit(HEAD)

    latest = {(r.id, r.name, r.status, r.conclusion) for r in commit.get_check_runs()}
    assert latest == {
        (rerun, "tests", "in_progress", None),
        (rerun + 1, "lint", "completed", "success"),
    }
    every = [r.id for r in commit.get_check_runs(filter="all")]
    assert every == [first, rerun, rerun + 1]
    runs = commit.get_check_runs()
    assert runs.totalCount == 2
    assert next(iter(runs)).head_sha == HEAD


def test_fake_check_runs_paginate(fake: FakeGitHub) -> None:
    for n in range(35):
        fake.add_check_run(NAME, HEAD, f"job {n}")
    runs = fake.client(per_page=30).get_repo(NAME).get_commit(HEAD).get_check_runs()

    assert [r.name for r in runs] == [f"job {n}" for n in range(35)]
    pages = [r.query.get("page", "1") for r in fake.requests if r.path.endswith("/check-runs")]
    assert pages == ["1", "2"]


def test_fake_check_runs_reject_bad_input(fake: FakeGitHub) -> None:
    with pytest.raises(ValueError, match="status"):
        fake.add_check_run(NAME, HEAD, "x", status="done")
    with pytest.raises(ValueError, match="conclusion"):
        fake.add_check_run(NAME, HEAD, "x", status="queued", conclusion="success")
    with pytest.raises(ValueError, match="conclusion"):
        fake.add_check_run(NAME, HEAD, "x", conclusion="great")
    with pytest.raises(GithubException) as caught:
        fake.client().get_repo(NAME).get_commit(HEAD).get_check_runs(filter="some").totalCount  # noqa: B018
    assert caught.value.status == 422
