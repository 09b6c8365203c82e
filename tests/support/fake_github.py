"""A stateful fake of the GitHub REST API, served over real HTTP for PyGithub.

The runner talks to GitHub only through PyGithub; serving the real wire protocol
(auth header, JSON shapes, pagination ``Link`` headers, status codes) on
127.0.0.1 tests that code path end to end without mocking PyGithub itself.
Tests set state up and inspect it through Python methods; every method and
every request handler runs under one lock, so the server thread and the test
thread never see half-applied changes. Inspection returns frozen snapshots.

The API is served at both the root (``github.com`` style) and ``/api/v3``
(GitHub Enterprise style); URLs inside responses follow the form the request
used, as a real server's would.

Usage::

    with FakeGitHub(token="t0ken", login="gitops-bot") as gh:
        gh.add_repo("acme/infra", clone_url=f"file://{bare_repo}")
        n = gh.open_pull("acme/infra", head_sha=sha, head_ref="feature", base_sha=base)
        runner = make_runner(github_url=gh.api_url, token="t0ken")
        ...
        assert "Plan" in gh.comments("acme/infra", n)[-1].body
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import jwt
from flask import Flask, Response, request
from github import Auth, Github
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from tests.support.github_payloads import (
    Comment,
    Hosts,
    Issue,
    Json,
    Pull,
    PullFile,
    Repo,
    comment_json,
    fake_sha,
    iso_now,
    issue_json,
    issue_of_pull,
    node_id,
    pull_json,
    repo_json,
    stable_id,
    user_json,
)
from tests.support.local_server import ServedFake

ENTERPRISE_PREFIX = "/api/v3"
DOCS_URL = "https://docs.github.com/rest"
# GitHub's own wording; PyGithub tells the two limits apart by it.
SECONDARY_RATE_LIMIT_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
)
PRIMARY_RATE_LIMIT_MESSAGE = "API rate limit exceeded for installation ID 4242."
# The largest `output.summary` / `output.text` of a check run GitHub accepts.
CHECK_OUTPUT_CAP = 65_535

# GitHub's "permission" field folds the finer roles into the classic three;
# "role_name" keeps the role as granted.
_PERMISSION_OF_ROLE = {
    "admin": "admin",
    "maintain": "write",
    "write": "write",
    "triage": "read",
    "read": "read",
    "none": "none",
}
_STATUS_STATES = frozenset({"error", "failure", "pending", "success"})
_REACTIONS = frozenset({"+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes"})
_COMPARE_STATUSES = frozenset({"identical", "ahead", "behind", "diverged"})
_CHECK_STATUSES = frozenset({"queued", "in_progress", "completed"})
_CHECK_CONCLUSIONS = frozenset(
    {"success", "failure", "neutral", "cancelled", "skipped", "timed_out", "action_required"}
)
_SHA_RE = re.compile(r"[0-9a-f]{40}")


class ApiError(Exception):
    """Raised inside handlers; rendered as GitHub's ``{"message": ...}`` error body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _not_found() -> ApiError:
    return ApiError(404, "Not Found")


def _invalid(message: str = "Validation Failed") -> ApiError:
    return ApiError(422, message)


@dataclass(frozen=True)
class Status:
    """One commit status as posted (GitHub keeps every post, newest wins per context)."""

    id: int
    sha: str
    state: str
    context: str
    description: str | None
    target_url: str | None
    creator: str
    created_at: str = field(default_factory=iso_now)


@dataclass(frozen=True)
class CheckOutput:
    """A check run's `output`: GitHub caps `summary` and `text` at 65535 characters each."""

    title: str | None = None
    summary: str | None = None
    text: str | None = None


@dataclass(frozen=True)
class CheckRun:
    """A check run (GitHub Actions and other Apps report CI this way, not as statuses)."""

    id: int
    head_sha: str
    name: str
    status: str
    conclusion: str | None
    app: str = "github-actions"
    started_at: str = field(default_factory=iso_now)
    # The App that created it: the installed App's id for runs it posted over the API.
    app_id: int | None = None
    output: CheckOutput = field(default_factory=CheckOutput)
    details_url: str | None = None
    external_id: str = ""
    # Every status it went through, in order (`in_progress`, then `completed`).
    history: tuple[str, ...] = ()


@dataclass(frozen=True)
class Review:
    """A submitted pull request review."""

    id: int
    user: str
    state: str
    commit_id: str
    body: str = ""
    submitted_at: str = field(default_factory=iso_now)


@dataclass(frozen=True)
class Reaction:
    """A reaction on a comment (``subject="comment"``) or on an issue/PR (``"issue"``)."""

    id: int
    user: str
    content: str
    created_at: str = field(default_factory=iso_now)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received; ``path`` is relative to the API root (no ``/api/v3``)."""

    method: str
    path: str
    query: dict[str, str]
    authorization: str | None
    body: Any
    prefix: str


@dataclass(frozen=True)
class CompareResult:
    """A canned answer for ``GET /compare/{base}...{head}``."""

    status: str
    ahead_by: int = 0
    behind_by: int = 0


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    status: int
    message: str
    remaining: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _RepoState:
    """Everything GitHub keeps per repository; numbers are shared by issues and PRs."""

    repo: Repo
    permissions: dict[str, str] = field(default_factory=dict)
    pulls: dict[int, Pull] = field(default_factory=dict)
    issues: dict[int, Issue] = field(default_factory=dict)
    closed_by: dict[int, str] = field(default_factory=dict)
    comments: dict[int, Comment] = field(default_factory=dict)
    reactions: dict[tuple[str, int], list[Reaction]] = field(default_factory=dict)
    statuses: dict[str, list[Status]] = field(default_factory=dict)
    check_runs: dict[str, list[CheckRun]] = field(default_factory=dict)
    reviews: dict[int, list[Review]] = field(default_factory=dict)
    compare: dict[tuple[str, str], CompareResult] = field(default_factory=dict)
    next_number: int = 1

    def take_number(self, wanted: int | None) -> int:
        """Allocate an issue/PR number, honouring an explicit one if it is free."""
        number = self.next_number if wanted is None else wanted
        if number in self.pulls or number in self.issues:
            raise ValueError(f"#{number} already exists in {self.repo.full_name}")
        self.next_number = max(self.next_number, number + 1)
        return number

    def comment_count(self, number: int) -> int:
        return sum(1 for c in self.comments.values() if c.issue_number == number)


@dataclass
class _App:
    """The GitHub App the fake knows: JWTs must verify against `public_key`."""

    app_id: int
    public_key: bytes
    slug: str
    installation_id: int
    token_lifetime: float  # seconds an installation token is accepted
    tokens: dict[str, tuple[int, float]] = field(default_factory=dict)  # token -> (id, expiry)


class FakeGitHub(ServedFake):
    """In-memory GitHub with a real HTTP front; see the module docstring for usage."""

    def __init__(self, token: str = "test-token", login: str = "gitops-bot") -> None:
        super().__init__("fake-github")
        self.token = token
        self.login = login
        self._lock = threading.RLock()
        self._ids = itertools.count(1_000_001)
        self._repos: dict[str, _RepoState] = {}
        self._requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._github_app: _App | None = None
        # (requests left, epoch second of the reset) while a primary limit is simulated.
        self._rate_limit: tuple[int, float] | None = None
        # "Sign in with GitHub" (OAuth apps): see `add_oauth_app` and `sign_in_as`.
        self._oauth = _OAuth()
        self.app = self._build_app()

    # --- lifecycle ------------------------------------------------------------

    def wsgi_app(self) -> Any:
        # PyGithub may be given the root or the GitHub Enterprise style /api/v3 prefix.
        return DispatcherMiddleware(self.app, {ENTERPRISE_PREFIX: self.app})

    @property
    def api_url(self) -> str:
        """GitHub Enterprise style API root, the form a self-hosted runner is configured with."""
        return self.url + ENTERPRISE_PREFIX

    @property
    def hosts(self) -> Hosts:
        """Pass to the payload builders so webhook URLs point at this server."""
        return Hosts(api=self.api_url, web=self.url)

    def client(self, token: str | None = None, **options: Any) -> Github:
        """A PyGithub client for this server with throttling and retries off (fast tests)."""
        defaults: dict[str, Any] = {
            "base_url": self.api_url,
            "auth": Auth.Token(token or self.token),
            "retry": None,
            "seconds_between_requests": None,
            "seconds_between_writes": None,
        }
        return Github(**(defaults | options))

    # --- setup ------------------------------------------------------------------

    def install_app(
        self,
        app_id: int,
        public_key_pem: bytes,
        *,
        slug: str = "gitops-runner",
        installation_id: int = 4242,
        token_lifetime: float = 3600.0,
    ) -> None:
        """Act as GitHub for an App installed on every repository, as `installation_id`.

        JWTs (RS256, `iss` = the App id) must verify against `public_key_pem`; installation
        tokens are accepted for `token_lifetime` seconds, then answered 401 as GitHub does.
        The App's writes (comments, issues) carry `<slug>[bot]`.
        """
        with self._lock:
            self._github_app = _App(app_id, public_key_pem, slug, installation_id, token_lifetime)
            self.login = f"{slug}[bot]"

    def installation_tokens(self) -> list[str]:
        """Every installation token issued so far, oldest first."""
        with self._lock:
            return list(self._github_app.tokens) if self._github_app else []

    def add_repo(self, full_name: str, clone_url: str, default_branch: str = "main") -> Repo:
        """Register a repository; ``clone_url`` is handed to the runner as-is."""
        repo = Repo(full_name=full_name, clone_url=clone_url, default_branch=default_branch)
        with self._lock:
            self._repos[full_name] = _RepoState(repo)
        return repo

    def set_permission(self, full_name: str, login: str, permission: str) -> None:
        """Grant ``admin|maintain|write|triage|read|none``; unknown users have ``none``."""
        if permission not in _PERMISSION_OF_ROLE:
            raise ValueError(f"unknown permission {permission!r}")
        with self._lock:
            self._state(full_name).permissions[login] = permission

    def open_pull(
        self,
        full_name: str,
        *,
        head_sha: str,
        head_ref: str,
        base_sha: str,
        user: str = "octocat",
        number: int | None = None,
        base_ref: str | None = None,
        files: Iterable[str | PullFile] = (),
        draft: bool = False,
        fork: bool = False,
        head_clone_url: str | None = None,
        title: str = "Update infrastructure",
        body: str = "",
        labels: Iterable[str] = (),
    ) -> int:
        """Open a PR and return its number.

        ``fork=True`` makes the head repo ``{user}/{name}`` (``fork: true``) cloned from
        ``head_clone_url``, defaulting to the base repo's clone URL so a single bare
        repo holding both refs is enough for most tests.
        """
        with self._lock:
            state = self._state(full_name)
            head_repo = None
            if fork:
                head_repo = dataclasses.replace(
                    state.repo,
                    full_name=f"{user}/{state.repo.name}",
                    clone_url=head_clone_url or state.repo.clone_url,
                    fork=True,
                )
            pr = Pull(
                number=state.take_number(number),
                head_sha=head_sha,
                head_ref=head_ref,
                base_sha=base_sha,
                base_ref=base_ref or state.repo.default_branch,
                user=user,
                title=title,
                body=body,
                draft=draft,
                head_repo=head_repo,
                labels=tuple(labels),
                files=_pull_files(files),
            )
            state.pulls[pr.number] = pr
            return pr.number

    def push(
        self,
        full_name: str,
        number: int,
        head_sha: str,
        *,
        files: Iterable[str | PullFile] | None = None,
        base_sha: str | None = None,
    ) -> str:
        """Move the PR head (a ``synchronize``); returns the previous head sha (``before``)."""
        with self._lock:
            before = self.pull(full_name, number).head_sha
            changes: dict[str, Any] = {"head_sha": head_sha}
            if files is not None:
                changes["files"] = _pull_files(files)
            if base_sha is not None:
                changes["base_sha"] = base_sha
            self._update_pull(full_name, number, **changes)
            return before

    def delete_head_repo(self, full_name: str, number: int) -> None:
        """The fork behind a PR is deleted: GitHub then serves ``head.repo: null``."""
        with self._lock:
            if self.pull(full_name, number).head_repo is None:
                raise ValueError("only a fork PR's head repository can be deleted")
            self._update_pull(full_name, number, head_repo_deleted=True)

    def set_draft(self, full_name: str, number: int, draft: bool) -> None:
        """Toggle draft (``ready_for_review`` / ``converted_to_draft``)."""
        self._update_pull(full_name, number, draft=draft)

    def set_mergeable(
        self, full_name: str, number: int, mergeable: bool | None, mergeable_state: str = "clean"
    ) -> None:
        """Set what GitHub computed; ``None`` is GitHub's "still computing"."""
        self._update_pull(full_name, number, mergeable=mergeable, mergeable_state=mergeable_state)

    def merge(
        self,
        full_name: str,
        number: int,
        *,
        merge_commit_sha: str | None = None,
        merged_by: str | None = None,
    ) -> str:
        """Mark the PR merged and closed; returns the merge commit sha."""
        with self._lock:
            pr = self.pull(full_name, number)
            sha = merge_commit_sha or fake_sha("merge", full_name, number, pr.head_sha)
            now = iso_now()
            self._update_pull(
                full_name,
                number,
                state="closed",
                merged=True,
                merge_commit_sha=sha,
                merged_by=merged_by or pr.user,
                merged_at=now,
                closed_at=now,
                mergeable=None,
                mergeable_state="unknown",
            )
            return sha

    def close(self, full_name: str, number: int) -> None:
        """Close the PR without merging."""
        self._update_pull(full_name, number, state="closed", closed_at=iso_now())

    def reopen(self, full_name: str, number: int) -> None:
        """Reopen a closed, unmerged PR."""
        self._update_pull(full_name, number, state="open", closed_at=None)

    def add_review(
        self,
        full_name: str,
        number: int,
        user: str,
        state: str = "APPROVED",
        commit_id: str | None = None,
        body: str = "",
    ) -> int:
        """Submit a review (``APPROVED|CHANGES_REQUESTED|COMMENTED|DISMISSED``); returns its id.

        ``commit_id`` is the commit the review was given at: the PR's head at the time
        unless given (GitHub records it, so a later push makes the review stale).
        """
        with self._lock:
            pr = self.pull(full_name, number)
            review = Review(
                id=next(self._ids),
                user=user,
                state=state,
                commit_id=commit_id or pr.head_sha,
                body=body,
            )
            self._state(full_name).reviews.setdefault(number, []).append(review)
            return review.id

    def add_comment(self, full_name: str, number: int, body: str, user: str) -> int:
        """A comment by someone other than the runner (e.g. ``gitops plan``); returns its id."""
        with self._lock:
            return self._create_comment(self._state(full_name), number, body, user).id

    def set_compare(
        self,
        full_name: str,
        base: str,
        head: str,
        status: str,
        ahead_by: int = 0,
        behind_by: int = 0,
    ) -> None:
        """Fix the answer for ``compare/{base}...{head}`` (otherwise computed with git)."""
        if status not in _COMPARE_STATUSES:
            raise ValueError(f"unknown compare status {status!r}")
        with self._lock:
            self._state(full_name).compare[(base, head)] = CompareResult(
                status, ahead_by, behind_by
            )

    def add_check_run(
        self,
        full_name: str,
        sha: str,
        name: str,
        status: str = "completed",
        conclusion: str | None = "success",
    ) -> int:
        """Record a check run on ``sha`` (a re-run: the same name again); returns its id.

        ``conclusion`` is GitHub's: only set once ``status`` is ``completed``.
        """
        if status not in _CHECK_STATUSES:
            raise ValueError(f"unknown check run status {status!r}")
        if (status == "completed") != (conclusion is not None):
            raise ValueError("a conclusion goes with status 'completed', and only with it")
        if conclusion is not None and conclusion not in _CHECK_CONCLUSIONS:
            raise ValueError(f"unknown check run conclusion {conclusion!r}")
        with self._lock:
            run = CheckRun(
                id=next(self._ids), head_sha=sha, name=name, status=status, conclusion=conclusion
            )
            self._state(full_name).check_runs.setdefault(sha, []).append(run)
            return run.id

    def fail_next(
        self,
        method: str,
        path: str,
        status: int = 500,
        message: str = "Server Error",
        times: int = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Make the next ``times`` matching requests fail (with ``headers`` on the answer).

        ``path`` is a regex fullmatched against the path below the API root (no ``/api/v3``).

        Clients built by :meth:`client` do not retry; PyGithub's default client retries
        5xx with back-off, which makes such tests slow.
        """
        fault = _Fault(method.upper(), re.compile(path), status, message, times, headers or {})
        with self._lock:
            self._faults.append(fault)

    def set_rate_limit(self, remaining: int, reset_in: float) -> None:
        """Simulate the primary rate limit: ``remaining`` more requests are answered (each
        saying how many are left in ``x-ratelimit-remaining``), then every request is
        refused with 403 as GitHub does, until ``reset_in`` seconds from now."""
        with self._lock:
            self._rate_limit = (remaining, time.time() + reset_in)

    def secondary_rate_limit_next(
        self, method: str, path: str, *, retry_after: int | None = 1, times: int = 1
    ) -> None:
        """GitHub's secondary rate limit on the next ``times`` matching requests: 403, its
        message, and ``Retry-After`` (seconds) unless None (then clients should wait a minute)."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        self.fail_next(method, path, 403, SECONDARY_RATE_LIMIT_MESSAGE, times, headers)

    def primary_rate_limit_next(
        self, method: str, path: str, *, reset_in: float, status: int = 403, times: int = 1
    ) -> None:
        """The primary rate limit used up: 403 (or 429), ``x-ratelimit-remaining: 0`` and
        ``x-ratelimit-reset`` ``reset_in`` seconds from now (an epoch second, as GitHub's)."""
        headers = {
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Used": "5000",
            "X-RateLimit-Reset": str(int(time.time() + reset_in + 0.999)),
        }
        self.fail_next(method, path, status, PRIMARY_RATE_LIMIT_MESSAGE, times, headers)

    # --- inspection -------------------------------------------------------------

    def repo(self, full_name: str) -> Repo:
        with self._lock:
            return self._state(full_name).repo

    def pull(self, full_name: str, number: int) -> Pull:
        with self._lock:
            pr = self._state(full_name).pulls.get(number)
        if pr is None:
            raise KeyError(f"{full_name}#{number} is not a pull request")
        return pr

    def comments(self, full_name: str, number: int) -> list[Comment]:
        """Comments on an issue or PR, oldest first."""
        with self._lock:
            state = self._state(full_name)
            return [c for c in state.comments.values() if c.issue_number == number]

    def statuses(self, full_name: str, sha: str) -> list[Status]:
        """Every status posted for ``sha``, oldest first."""
        with self._lock:
            return list(self._state(full_name).statuses.get(sha, ()))

    def check_runs(self, full_name: str, sha: str) -> list[CheckRun]:
        """Every check run on ``sha``, oldest first, as it is now."""
        with self._lock:
            return list(self._state(full_name).check_runs.get(sha, ()))

    def check_run_event(
        self,
        full_name: str,
        run_id: int,
        sender: str,
        *,
        action: str = "rerequested",
        pull_numbers: Iterable[int] | None = None,
    ) -> Json:
        """The ``check_run`` webhook GitHub sends when ``sender`` clicks "Re-run".

        ``pull_requests`` lists the open PRs whose head is the run's commit and lives in
        this repository: GitHub leaves fork PRs out. ``pull_numbers`` overrides the list.
        """
        with self._lock:
            state = self._state(full_name)
            run = next(r for runs in state.check_runs.values() for r in runs if r.id == run_id)
            if pull_numbers is None:
                pull_numbers = _open_pulls_at(state, run.head_sha)
            hosts = self.hosts
            data = _check_run_json(state.repo, run, hosts)
            data["pull_requests"] = [
                _check_run_pull_json(state.repo, state.pulls[n], hosts) for n in pull_numbers
            ]
            return {
                "action": action,
                "check_run": data,
                "repository": repo_json(state.repo, hosts),
                "sender": user_json(sender, hosts),
            }

    def check_suite_event(
        self,
        full_name: str,
        run_id: int,
        sender: str,
        *,
        action: str = "rerequested",
        pull_numbers: Iterable[int] | None = None,
    ) -> Json:
        """The ``check_suite`` webhook GitHub sends when ``sender`` clicks "Re-run all
        checks" on the suite holding check run ``run_id`` (one suite per App and commit).

        ``pull_requests`` as in `check_run_event`: fork PRs are left out.
        """
        # The suite holds the run: same commit, App, pull requests, sender and repository.
        event = self.check_run_event(
            full_name, run_id, sender, action=action, pull_numbers=pull_numbers
        )
        run = event.pop("check_run")
        event["check_suite"] = {
            "id": stable_id("check_suite", (full_name, run["head_sha"], run["app"]["id"])),
            "head_sha": run["head_sha"],
            "status": "queued",
            "conclusion": None,
            "app": run["app"],
            "pull_requests": run["pull_requests"],
        }
        return event

    def reactions(
        self, full_name: str, *, comment_id: int | None = None, issue_number: int | None = None
    ) -> list[Reaction]:
        """Reactions on a comment, or on an issue/PR itself."""
        if (comment_id is None) == (issue_number is None):
            raise ValueError("give exactly one of comment_id, issue_number")
        key = ("comment", comment_id) if comment_id is not None else ("issue", issue_number or 0)
        with self._lock:
            return list(self._state(full_name).reactions.get(key, ()))

    def issues(self, full_name: str) -> list[Issue]:
        """Plain issues (not PRs) in creation order."""
        with self._lock:
            return list(self._state(full_name).issues.values())

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, including rejected ones."""
        with self._lock:
            return list(self._requests)

    # --- state helpers ------------------------------------------------------------

    def _state(self, full_name: str) -> _RepoState:
        try:
            return self._repos[full_name]
        except KeyError:
            raise KeyError(f"no repo {full_name!r}; call add_repo first") from None

    def _update_pull(self, full_name: str, number: int, **changes: Any) -> None:
        with self._lock:
            pr = self.pull(full_name, number)
            self._state(full_name).pulls[number] = dataclasses.replace(
                pr, updated_at=iso_now(), **changes
            )

    def _create_comment(self, state: _RepoState, number: int, body: str, user: str) -> Comment:
        if number not in state.pulls and number not in state.issues:
            raise KeyError(f"{state.repo.full_name}#{number} does not exist")
        comment = Comment(id=next(self._ids), issue_number=number, body=body, user=user)
        state.comments[comment.id] = comment
        return comment

    # --- HTTP ---------------------------------------------------------------------

    def _build_app(self) -> Flask:
        app = Flask("fake_github")
        app.before_request(self._before_request)
        app.after_request(self._after_request)
        app.register_error_handler(ApiError, _error_response)
        app.register_error_handler(
            HTTPException, lambda e: _error_response(ApiError(e.code or 500, e.name))
        )
        repo = "/repos/<owner>/<name>"
        routes: list[tuple[str, str, Callable[..., Response]]] = [
            ("GET", "/user", self._get_user),
            ("GET", "/user/orgs", self._oauth_user_orgs),
            ("GET", "/user/teams", self._oauth_user_teams),
            ("GET", "/login/oauth/authorize", self._oauth_authorize),
            ("POST", "/login/oauth/access_token", self._oauth_access_token),
            ("GET", "/app", self._get_app),
            ("POST", "/app/installations/<int:iid>/access_tokens", self._access_token),
            ("GET", f"{repo}/installation", self._repo_installation),
            ("GET", repo, self._get_repo),
            ("GET", f"{repo}/pulls", self._list_pulls),
            ("GET", f"{repo}/pulls/<int:number>", self._get_pull),
            ("GET", f"{repo}/pulls/<int:number>/files", self._list_files),
            ("GET", f"{repo}/pulls/<int:number>/reviews", self._list_reviews),
            ("PUT", f"{repo}/pulls/<int:number>/merge", self._merge_pull),
            ("GET", f"{repo}/issues", self._list_issues),
            ("POST", f"{repo}/issues", self._create_issue),
            ("GET", f"{repo}/issues/<int:number>", self._get_issue),
            ("PATCH", f"{repo}/issues/<int:number>", self._edit_issue),
            ("GET", f"{repo}/issues/<int:number>/comments", self._list_comments),
            ("POST", f"{repo}/issues/<int:number>/comments", self._post_comment),
            ("GET", f"{repo}/issues/comments/<int:cid>", self._get_comment),
            ("PATCH", f"{repo}/issues/comments/<int:cid>", self._edit_comment),
            ("DELETE", f"{repo}/issues/comments/<int:cid>", self._delete_comment),
            ("GET", f"{repo}/issues/comments/<int:cid>/reactions", self._list_comment_reactions),
            ("POST", f"{repo}/issues/comments/<int:cid>/reactions", self._react_comment),
            ("GET", f"{repo}/issues/<int:number>/reactions", self._list_issue_reactions),
            ("POST", f"{repo}/issues/<int:number>/reactions", self._react_issue),
            ("POST", f"{repo}/statuses/<sha>", self._post_status),
            ("GET", f"{repo}/statuses/<ref>", self._list_statuses),
            ("GET", f"{repo}/commits/<ref>", self._get_commit),
            ("GET", f"{repo}/commits/<ref>/statuses", self._list_statuses),
            ("GET", f"{repo}/commits/<ref>/status", self._combined_status),
            ("GET", f"{repo}/commits/<ref>/check-runs", self._list_check_runs),
            ("POST", f"{repo}/check-runs", self._create_check_run),
            ("GET", f"{repo}/check-runs/<int:run_id>", self._get_check_run),
            ("PATCH", f"{repo}/check-runs/<int:run_id>", self._update_check_run),
            ("GET", f"{repo}/collaborators/<login>/permission", self._get_permission),
            ("GET", f"{repo}/compare/<path:basehead>", self._compare),
        ]
        for method, rule, handler in routes:
            app.add_url_rule(
                rule,
                endpoint=f"{method} {rule}",
                view_func=self._locked(handler),
                methods=[method],
            )
        return app

    def _locked(self, handler: Callable[..., Response]) -> Callable[..., Response]:
        """Run a handler under the state lock, resolving ``<owner>/<name>`` to repo state."""

        def view(**kwargs: Any) -> Response:
            with self._lock:
                if "owner" in kwargs:
                    full_name = f"{kwargs.pop('owner')}/{kwargs.pop('name')}"
                    state = self._repos.get(full_name)
                    if state is None:
                        raise _not_found()
                    return handler(state, **kwargs)
                return handler(**kwargs)

        return view

    def _before_request(self) -> Response | None:
        """Log, authenticate (401 like GitHub), then apply injected faults."""
        authorization = request.headers.get("Authorization")
        with self._lock:
            self._requests.append(
                RecordedRequest(
                    method=request.method,
                    path=request.path,
                    query=request.args.to_dict(),
                    authorization=authorization,
                    body=request.get_json(silent=True),
                    prefix=request.script_root,
                )
            )
            self._check_auth(authorization)
            self._apply_fault()
            self._count_rate_limit()
        return None

    def _count_rate_limit(self) -> None:
        """One request off the simulated primary limit; refused once none are left."""
        if self._rate_limit is None:
            return
        remaining, reset = self._rate_limit
        if time.time() >= reset:
            self._rate_limit = None  # reset: back to GitHub's usual headers
            return
        headers = _rate_limit_headers(max(remaining - 1, 0), reset)
        if remaining <= 0:
            raise ApiError(403, PRIMARY_RATE_LIMIT_MESSAGE, headers)
        self._rate_limit = (remaining - 1, reset)
        request.environ["fake_github.rate_limit"] = headers

    def _after_request(self, response: Response) -> Response:
        for name, value in request.environ.get("fake_github.rate_limit", {}).items():
            response.headers.setdefault(name, value)
        return _github_headers(response)

    def _check_auth(self, authorization: str | None) -> None:
        if request.path.startswith(_OAUTH_PAGES):
            return  # the browser's sign-in pages: the app authenticates in the form
        if not authorization:
            raise ApiError(401, "Requires authentication")
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() not in ("token", "bearer"):
            raise ApiError(401, "Bad credentials")
        if self._github_app is not None and _needs_jwt(request.path):
            self._check_jwt(self._github_app, credential)
        elif self._github_app is not None and credential in self._github_app.tokens:
            if self._github_app.tokens[credential][1] <= time.time():
                raise ApiError(401, "Bad credentials")  # GitHub's answer to an expired token
        elif credential != self.token and credential not in self._oauth.tokens:
            raise ApiError(401, "Bad credentials")

    def _check_jwt(self, app: _App, credential: str) -> None:
        """GitHub's checks: RS256 signed by the App's key, `iss` the App, not expired."""
        try:
            claims = jwt.decode(credential, app.public_key, algorithms=["RS256"])
        except jwt.PyJWTError:
            raise ApiError(401, "A JSON web token could not be decoded") from None
        if str(claims.get("iss")) != str(app.app_id) or "iat" not in claims:
            raise ApiError(401, "'Issuer' claim ('iss') must be an Integer")

    def _apply_fault(self) -> None:
        for fault in self._faults:
            if fault.method == request.method and fault.path.fullmatch(request.path):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                raise ApiError(fault.status, fault.message, fault.headers)

    # --- handlers: users and repos -----------------------------------------------

    def _get_user(self) -> Response:
        hosts = _request_hosts()
        person = self._oauth_person()
        login = person.login if person else self.login
        return _json(
            user_json(login, hosts)
            | {"name": login, "email": None, "created_at": "2024-01-01T00:00:00Z"}
        )

    # --- handlers: "Sign in with GitHub" (OAuth apps) ---------------------------

    def add_oauth_app(self, client_id: str, client_secret: str) -> None:
        """Register an OAuth app: its authorization codes are exchanged with this secret."""
        with self._lock:
            self._oauth.apps[client_id] = client_secret

    def sign_in_as(self, login: str, orgs: Iterable[str] = (), teams: Iterable[str] = ()) -> None:
        """Who the next `/login/oauth/authorize` signs in, with no form: a user, the orgs
        they belong to and their teams as `org/team-slug`."""
        with self._lock:
            self._oauth.next_person = _OAuthPerson(login, tuple(orgs), tuple(teams))

    def _oauth_person(self) -> _OAuthPerson | None:
        credential = (request.headers.get("Authorization") or "").partition(" ")[2].strip()
        return self._oauth.tokens.get(credential)

    def _oauth_authorize(self) -> Response:
        args = request.args
        person = self._oauth.next_person
        if args.get("client_id") not in self._oauth.apps or person is None:
            raise _not_found()  # GitHub shows an error page for an unknown client
        code = f"code-{next(self._ids)}"
        self._oauth.codes[code] = (person, args.get("redirect_uri", ""),
                                   args.get("code_challenge"))  # fmt: skip
        query = urlencode({"code": code, "state": args.get("state", "")})
        return Response(status=302, headers={"Location": f"{args.get('redirect_uri')}?{query}"})

    def _oauth_access_token(self) -> Response:
        form = request.form
        basic = request.authorization
        client_id = basic.username if basic else form.get("client_id")
        secret = basic.password if basic else form.get("client_secret")
        grant = self._oauth.codes.pop(form.get("code", ""), None)
        if client_id not in self._oauth.apps or self._oauth.apps[client_id] != secret:
            return _json({"error": "incorrect_client_credentials"})  # GitHub answers 200
        if grant is None or grant[1] != form.get("redirect_uri"):
            return _json({"error": "bad_verification_code"})
        if grant[2] and _s256(form.get("code_verifier", "")) != grant[2]:
            return _json({"error": "bad_verification_code"})
        token = f"gho_{next(self._ids)}"
        self._oauth.tokens[token] = grant[0]
        return _json({"access_token": token, "token_type": "bearer", "scope": "read:org"})

    def _oauth_user_orgs(self) -> Response:
        person = self._oauth_person()
        hosts = _request_hosts()
        return _json([user_json(org, hosts) for org in (person.orgs if person else ())])

    def _oauth_user_teams(self) -> Response:
        person = self._oauth_person()
        teams = []
        for team in person.teams if person else ():
            org, _, slug = team.partition("/")
            teams.append({"slug": slug, "name": slug, "organization": {"login": org}})
        return _json(teams)

    def _app_or_404(self) -> _App:
        if self._github_app is None:
            raise _not_found()
        return self._github_app

    def _get_app(self) -> Response:
        app = self._app_or_404()
        owner = user_json("acme", _request_hosts())
        return _json(
            {
                "id": app.app_id,
                "slug": app.slug,
                "node_id": node_id("A", app.app_id),
                "name": app.slug,
                "owner": owner,
                "description": "",
                "external_url": "https://runner.example.com",
                "html_url": f"{_request_hosts().web}/apps/{app.slug}",
                "created_at": "2024-01-01T00:00:00Z",
                "updated_at": "2024-01-01T00:00:00Z",
                "permissions": {},
                "events": [],
            }
        )

    def _access_token(self, iid: int) -> Response:
        app = self._app_or_404()
        if iid != app.installation_id:
            raise _not_found()
        token = f"ghs_{next(self._ids)}"
        expires = time.time() + app.token_lifetime
        app.tokens[token] = (iid, expires)
        expires_at = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return _json(
            {
                "token": token,
                "expires_at": expires_at,
                "permissions": {"contents": "read", "pull_requests": "write"},
                "repository_selection": "all",
            },
            201,
        )

    def _repo_installation(self, state: _RepoState) -> Response:
        app = self._app_or_404()
        return _json(
            {
                "id": app.installation_id,
                "app_id": app.app_id,
                "app_slug": app.slug,
                "account": user_json(state.repo.full_name.split("/")[0], _request_hosts()),
                "target_type": "Organization",
                "permissions": {},
                "events": [],
            }
        )

    def _get_repo(self, state: _RepoState) -> Response:
        return _json(repo_json(state.repo, _request_hosts()))

    def _get_permission(self, state: _RepoState, login: str) -> Response:
        role = state.permissions.get(login, "none")
        return _json(
            {
                "permission": _PERMISSION_OF_ROLE[role],
                "role_name": role,
                "user": user_json(login, _request_hosts()),
            }
        )

    # --- handlers: pulls -------------------------------------------------------------

    def _pull_or_404(self, state: _RepoState, number: int) -> Pull:
        pr = state.pulls.get(number)
        if pr is None:
            raise _not_found()
        return pr

    def _render_pull(self, state: _RepoState, pr: Pull) -> Json:
        return pull_json(state.repo, pr, _request_hosts(), comments=state.comment_count(pr.number))

    def _get_pull(self, state: _RepoState, number: int) -> Response:
        return _json(self._render_pull(state, self._pull_or_404(state, number)))

    def _list_pulls(self, state: _RepoState) -> Response:
        wanted = request.args.get("state", "open")
        base = request.args.get("base")
        head = request.args.get("head")
        pulls = [
            pr
            for pr in sorted(state.pulls.values(), key=lambda p: p.number, reverse=True)
            if wanted in ("all", pr.state)
            and base in (None, pr.base_ref)
            and head in (None, f"{(pr.head_repo or state.repo).owner}:{pr.head_ref}")
        ]
        return _paginate([self._render_pull(state, pr) for pr in pulls])

    def _list_files(self, state: _RepoState, number: int) -> Response:
        pr = self._pull_or_404(state, number)
        hosts = _request_hosts()
        return _paginate([_file_json(state.repo, pr, f, hosts) for f in pr.files])

    def _list_reviews(self, state: _RepoState, number: int) -> Response:
        self._pull_or_404(state, number)
        hosts = _request_hosts()
        reviews = state.reviews.get(number, [])
        return _paginate([_review_json(state.repo, number, r, hosts) for r in reviews])

    def _merge_pull(self, state: _RepoState, number: int) -> Response:
        pr = self._pull_or_404(state, number)
        if pr.state != "open" or pr.mergeable is False:
            raise ApiError(405, "Pull Request is not mergeable")
        data = _body()
        expected = data.get("sha")
        if expected and expected != pr.head_sha:
            raise ApiError(409, "Head branch was modified. Review and try the merge again.")
        sha = self.merge(state.repo.full_name, number, merged_by=self.login)
        return _json({"sha": sha, "merged": True, "message": "Pull Request successfully merged"})

    # --- handlers: issues -------------------------------------------------------------

    def _render_issue(self, state: _RepoState, number: int) -> Json:
        hosts = _request_hosts()
        comments = state.comment_count(number)
        pr = state.pulls.get(number)
        if pr is not None:
            return issue_json(
                state.repo,
                issue_of_pull(pr),
                hosts,
                is_pull_request=True,
                merged_at=pr.merged_at,
                comments=comments,
            )
        issue = state.issues[number]
        closed_by = state.closed_by.get(number) if issue.state == "closed" else None
        return issue_json(state.repo, issue, hosts, comments=comments, closed_by=closed_by)

    def _require_issue(self, state: _RepoState, number: int) -> None:
        if number not in state.issues and number not in state.pulls:
            raise _not_found()

    def _get_issue(self, state: _RepoState, number: int) -> Response:
        self._require_issue(state, number)
        return _json(self._render_issue(state, number))

    def _list_issues(self, state: _RepoState) -> Response:
        # GitHub's issue list includes pull requests (marked by "pull_request").
        everything: list[Issue] = [*state.issues.values()]
        everything += [issue_of_pull(pr) for pr in state.pulls.values()]
        wanted = request.args.get("state", "open")
        labels = {x for x in request.args.get("labels", "").split(",") if x}
        creator = request.args.get("creator")
        matching = [
            issue
            for issue in everything
            if wanted in ("all", issue.state)
            and labels <= set(issue.labels)
            and creator in (None, issue.user)
        ]
        matching.sort(
            key=lambda i: i.number, reverse=request.args.get("direction", "desc") == "desc"
        )
        return _paginate([self._render_issue(state, issue.number) for issue in matching])

    def _create_issue(self, state: _RepoState) -> Response:
        data = _body()
        if not data.get("title"):
            raise _invalid()
        issue = Issue(
            number=state.take_number(None),
            title=data["title"],
            body=data.get("body") or "",
            user=self.login,
            labels=_label_names(data.get("labels", [])),
        )
        state.issues[issue.number] = issue
        return _json(self._render_issue(state, issue.number), 201)

    def _edit_issue(self, state: _RepoState, number: int) -> Response:
        """PATCH applies to plain issues and to the issue side of PRs alike."""
        self._require_issue(state, number)
        data = _body()
        changes = _issue_changes(data)
        if number in state.pulls:
            changes.pop("state_reason", None)
            state.pulls[number] = dataclasses.replace(state.pulls[number], **changes)
        else:
            if changes.get("state") == "closed":
                changes.setdefault("state_reason", "completed")
                state.closed_by[number] = self.login
            elif changes.get("state") == "open":
                changes.setdefault("state_reason", "reopened")
            state.issues[number] = dataclasses.replace(state.issues[number], **changes)
        return _json(self._render_issue(state, number))

    # --- handlers: comments and reactions ---------------------------------------------

    def _comment_or_404(self, state: _RepoState, cid: int) -> Comment:
        comment = state.comments.get(cid)
        if comment is None:
            raise _not_found()
        return comment

    def _render_comment(self, state: _RepoState, comment: Comment) -> Json:
        return comment_json(
            state.repo,
            comment,
            _request_hosts(),
            is_pull_request=comment.issue_number in state.pulls,
        )

    def _list_comments(self, state: _RepoState, number: int) -> Response:
        self._require_issue(state, number)
        comments = [c for c in state.comments.values() if c.issue_number == number]
        return _paginate([self._render_comment(state, c) for c in comments])

    def _post_comment(self, state: _RepoState, number: int) -> Response:
        self._require_issue(state, number)
        comment = self._create_comment(state, number, _required_body_text(), self.login)
        return _json(self._render_comment(state, comment), 201)

    def _get_comment(self, state: _RepoState, cid: int) -> Response:
        return _json(self._render_comment(state, self._comment_or_404(state, cid)))

    def _edit_comment(self, state: _RepoState, cid: int) -> Response:
        comment = dataclasses.replace(
            self._comment_or_404(state, cid), body=_required_body_text(), updated_at=iso_now()
        )
        state.comments[cid] = comment
        return _json(self._render_comment(state, comment))

    def _delete_comment(self, state: _RepoState, cid: int) -> Response:
        self._comment_or_404(state, cid)
        del state.comments[cid]
        state.reactions.pop(("comment", cid), None)
        return Response(status=204)

    def _react(self, state: _RepoState, key: tuple[str, int]) -> Response:
        content = _body().get("content")
        if content not in _REACTIONS:
            raise _invalid()
        existing = state.reactions.setdefault(key, [])
        for reaction in existing:
            # GitHub answers 200 with the existing reaction instead of duplicating it.
            if reaction.user == self.login and reaction.content == content:
                return _json(_reaction_json(reaction, _request_hosts()), 200)
        reaction = Reaction(id=next(self._ids), user=self.login, content=content)
        existing.append(reaction)
        return _json(_reaction_json(reaction, _request_hosts()), 201)

    def _list_reactions(self, state: _RepoState, key: tuple[str, int]) -> Response:
        hosts = _request_hosts()
        return _paginate([_reaction_json(r, hosts) for r in state.reactions.get(key, [])])

    def _react_comment(self, state: _RepoState, cid: int) -> Response:
        self._comment_or_404(state, cid)
        return self._react(state, ("comment", cid))

    def _list_comment_reactions(self, state: _RepoState, cid: int) -> Response:
        self._comment_or_404(state, cid)
        return self._list_reactions(state, ("comment", cid))

    def _react_issue(self, state: _RepoState, number: int) -> Response:
        self._require_issue(state, number)
        return self._react(state, ("issue", number))

    def _list_issue_reactions(self, state: _RepoState, number: int) -> Response:
        self._require_issue(state, number)
        return self._list_reactions(state, ("issue", number))

    # --- handlers: commits, statuses, compare --------------------------------------------

    def _post_status(self, state: _RepoState, sha: str) -> Response:
        data = _body()
        if data.get("state") not in _STATUS_STATES:
            raise _invalid()
        status = Status(
            id=next(self._ids),
            sha=sha,
            state=data["state"],
            context=data.get("context") or "default",
            description=data.get("description"),
            target_url=data.get("target_url"),
            creator=self.login,
        )
        state.statuses.setdefault(sha, []).append(status)
        return _json(_status_json(state.repo, status, _request_hosts()), 201)

    def _get_commit(self, state: _RepoState, ref: str) -> Response:
        sha = _resolve_ref(state.repo, ref)
        return _json(_commit_json(state.repo, sha, _request_hosts()))

    def _list_statuses(self, state: _RepoState, ref: str) -> Response:
        sha = _resolve_ref(state.repo, ref)
        hosts = _request_hosts()
        newest_first = reversed(state.statuses.get(sha, []))
        return _paginate([_status_json(state.repo, s, hosts) for s in newest_first])

    def _combined_status(self, state: _RepoState, ref: str) -> Response:
        sha = _resolve_ref(state.repo, ref)
        hosts = _request_hosts()
        latest = _latest_per_context(state.statuses.get(sha, []))
        api = f"{hosts.api}/repos/{state.repo.full_name}"
        return _json(
            {
                "state": _combined_state(latest),
                "statuses": [_status_json(state.repo, s, hosts) for s in latest],
                "sha": sha,
                "total_count": len(latest),
                "repository": repo_json(state.repo, hosts),
                "commit_url": f"{api}/commits/{sha}",
                "url": f"{api}/commits/{sha}/status",
            }
        )

    def _list_check_runs(self, state: _RepoState, ref: str) -> Response:
        """``filter=latest`` (GitHub's default) keeps the newest run of each name."""
        sha = _resolve_ref(state.repo, ref)
        runs = state.check_runs.get(sha, [])
        wanted = request.args.get("filter", "latest")
        if wanted == "latest":
            runs = list({run.name: run for run in runs}.values())
        elif wanted != "all":
            raise _invalid()
        if "check_name" in request.args:
            runs = [run for run in runs if run.name == request.args["check_name"]]
        hosts = _request_hosts()
        return _paginate_listing(
            "check_runs", [_check_run_json(state.repo, run, hosts) for run in runs]
        )

    def _calling_app(self) -> _App:
        """The App whose installation token authenticates this request; GitHub lets only
        Apps write check runs."""
        credential = (request.headers.get("Authorization") or "").partition(" ")[2].strip()
        app = self._github_app
        if app is None or credential not in app.tokens:
            raise ApiError(403, "You must authenticate via a GitHub App.")
        return app

    def _check_run_or_404(self, state: _RepoState, run_id: int) -> CheckRun:
        for runs in state.check_runs.values():
            for run in runs:
                if run.id == run_id:
                    return run
        raise _not_found()

    def _create_check_run(self, state: _RepoState) -> Response:
        app = self._calling_app()
        data = _body()
        name, sha = data.get("name"), data.get("head_sha")
        if not isinstance(name, str) or not name or not isinstance(sha, str):
            raise _invalid()
        run = _changed_check_run(
            CheckRun(
                id=next(self._ids),
                head_sha=sha,
                name=name,
                status="queued",
                conclusion=None,
                app=app.slug,
                app_id=app.app_id,
            ),
            data,
        )
        state.check_runs.setdefault(sha, []).append(run)
        return _json(_check_run_json(state.repo, run, _request_hosts()), 201)

    def _get_check_run(self, state: _RepoState, run_id: int) -> Response:
        run = self._check_run_or_404(state, run_id)
        return _json(_check_run_json(state.repo, run, _request_hosts()))

    def _update_check_run(self, state: _RepoState, run_id: int) -> Response:
        app = self._calling_app()
        run = self._check_run_or_404(state, run_id)
        if run.app_id != app.app_id:
            raise ApiError(403, "Invalid app_id - check run can only be modified by its creator")
        changed = _changed_check_run(run, _body())
        runs = state.check_runs[run.head_sha]
        runs[runs.index(run)] = changed
        return _json(_check_run_json(state.repo, changed, _request_hosts()))

    def _compare(self, state: _RepoState, basehead: str) -> Response:
        base, sep, head = basehead.partition("...")
        if not sep:
            raise _not_found()
        result = state.compare.get((base, head)) or _git_compare(state.repo, base, head)
        hosts = _request_hosts()
        api = f"{hosts.api}/repos/{state.repo.full_name}"
        html = f"{hosts.web}/{state.repo.full_name}/compare/{basehead}"
        base_sha = _try_resolve(state.repo, base) or base
        merge_base = _git(state.repo, "merge-base", base, head) or base_sha
        return _json(
            {
                "url": f"{api}/compare/{basehead}",
                "html_url": html,
                "permalink_url": html,
                "diff_url": f"{html}.diff",
                "patch_url": f"{html}.patch",
                "base_commit": _commit_json(state.repo, base_sha, hosts),
                "merge_base_commit": _commit_json(state.repo, merge_base, hosts),
                "status": result.status,
                "ahead_by": result.ahead_by,
                "behind_by": result.behind_by,
                "total_commits": result.ahead_by,
                "commits": [],
                "files": [],
            }
        )


# --- module helpers: request/response plumbing ------------------------------------


def _needs_jwt(path: str) -> bool:
    """Requests only the App itself (not an installation) may make: GitHub wants a JWT."""
    return path == "/app" or path.startswith("/app/") or path.endswith("/installation")


def _request_hosts() -> Hosts:
    """URLs in a response use the root the client called (``/`` or ``/api/v3``)."""
    root = request.host_url.rstrip("/")
    return Hosts(api=root + request.script_root, web=root)


_OAUTH_PAGES = "/login/oauth/"


@dataclass(frozen=True)
class _OAuthPerson:
    login: str
    orgs: tuple[str, ...]
    teams: tuple[str, ...]


@dataclass
class _OAuth:
    """OAuth apps (client id -> secret), pending codes, issued user tokens."""

    apps: dict[str, str] = field(default_factory=dict)
    next_person: _OAuthPerson | None = None
    codes: dict[str, tuple[_OAuthPerson, str, str | None]] = field(default_factory=dict)
    tokens: dict[str, _OAuthPerson] = field(default_factory=dict)


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, mimetype="application/json")


def _error_response(error: ApiError) -> Response:
    body = {"message": error.message, "documentation_url": DOCS_URL, "status": str(error.status)}
    response = _json(body, error.status)
    response.headers.update(error.headers)
    return response


def _github_headers(response: Response) -> Response:
    """Headers PyGithub reads (rate limit) or logs; values are static."""
    response.headers.setdefault("X-RateLimit-Limit", "5000")
    response.headers.setdefault("X-RateLimit-Remaining", "4999")
    response.headers.setdefault("X-RateLimit-Reset", "4102444800")
    response.headers.setdefault("X-RateLimit-Resource", "core")
    response.headers.setdefault("X-GitHub-Media-Type", "github.v3; format=json")
    return response


def _rate_limit_headers(remaining: int, reset: float) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": "5000",
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Used": str(5000 - remaining),
        "X-RateLimit-Reset": str(int(reset + 0.999)),
    }


def _body() -> Json:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ApiError(400, "Problems parsing JSON")
    return data


def _required_body_text() -> str:
    text = _body().get("body")
    if not isinstance(text, str) or not text:
        raise _invalid()
    return text


def _paginate(items: list[Json]) -> Response:
    """Serve one page with a GitHub ``Link`` header (``next``/``last``/``first``/``prev``)."""
    page = max(int(request.args.get("page", 1)), 1)
    per_page = min(max(int(request.args.get("per_page", 30)), 1), 100)
    last = max((len(items) + per_page - 1) // per_page, 1)
    response = _json(items[(page - 1) * per_page : page * per_page])
    links = dict(_page_links(page, last))
    if links:
        response.headers["Link"] = ", ".join(
            f'<{_page_url(n)}>; rel="{rel}"' for rel, n in links.items()
        )
    return response


def _paginate_listing(key: str, items: list[Json]) -> Response:
    """Like :func:`_paginate` for endpoints that wrap the page: ``{total_count, key: [...]}``."""
    response = _paginate(items)
    page = json.loads(response.get_data())
    response.set_data(json.dumps({"total_count": len(items), key: page}))
    return response


def _page_links(page: int, last: int) -> Iterator[tuple[str, int]]:
    if page < last:
        yield "next", page + 1
        yield "last", last
    if page > 1:
        yield "first", 1
        yield "prev", page - 1


def _page_url(page: int) -> str:
    query = request.args.to_dict() | {"page": str(page)}
    return f"{request.base_url}?{urlencode(query)}"


# --- module helpers: JSON shapes only the REST side needs --------------------------


def _pull_files(files: Iterable[str | PullFile]) -> tuple[PullFile, ...]:
    return tuple(f if isinstance(f, PullFile) else PullFile(f) for f in files)


def _label_names(labels: Iterable[str | Json]) -> tuple[str, ...]:
    """Clients may send labels as names or as label objects."""
    return tuple(label if isinstance(label, str) else label["name"] for label in labels)


def _issue_changes(data: Json) -> dict[str, Any]:
    """Translate an issue PATCH body into dataclass field changes."""
    changes: dict[str, Any] = {"updated_at": iso_now()}
    for key in ("title", "body", "state_reason"):
        if key in data:
            changes[key] = data[key]
    if "labels" in data:
        changes["labels"] = _label_names(data["labels"])
    if "state" in data:
        if data["state"] not in ("open", "closed"):
            raise _invalid()
        changes["state"] = data["state"]
        changes["closed_at"] = iso_now() if data["state"] == "closed" else None
    return changes


def _file_json(repo: Repo, pr: Pull, change: PullFile, hosts: Hosts) -> Json:
    blob = f"{hosts.web}/{repo.full_name}/blob/{pr.head_sha}/{change.filename}"
    data: Json = {
        "sha": fake_sha("blob", pr.head_sha, change.filename),
        "filename": change.filename,
        "status": change.status,
        "additions": change.additions,
        "deletions": change.deletions,
        "changes": change.additions + change.deletions,
        "blob_url": blob,
        "raw_url": blob.replace("/blob/", "/raw/", 1),
        "contents_url": (
            f"{hosts.api}/repos/{repo.full_name}/contents/{change.filename}?ref={pr.head_sha}"
        ),
    }
    if change.patch is not None:
        data["patch"] = change.patch
    if change.previous_filename is not None:
        data["previous_filename"] = change.previous_filename
    return data


def _review_json(repo: Repo, number: int, review: Review, hosts: Hosts) -> Json:
    html = f"{hosts.web}/{repo.full_name}/pull/{number}#pullrequestreview-{review.id}"
    pull_url = f"{hosts.api}/repos/{repo.full_name}/pulls/{number}"
    return {
        "id": review.id,
        "node_id": node_id("PRR", review.id),
        "user": user_json(review.user, hosts),
        "body": review.body,
        "state": review.state,
        "html_url": html,
        "pull_request_url": pull_url,
        "author_association": "CONTRIBUTOR",
        "_links": {"html": {"href": html}, "pull_request": {"href": pull_url}},
        "submitted_at": review.submitted_at,
        "commit_id": review.commit_id,
    }


def _reaction_json(reaction: Reaction, hosts: Hosts) -> Json:
    return {
        "id": reaction.id,
        "node_id": node_id("REA", reaction.id),
        "user": user_json(reaction.user, hosts),
        "content": reaction.content,
        "created_at": reaction.created_at,
    }


def _status_json(repo: Repo, status: Status, hosts: Hosts) -> Json:
    creator = user_json(status.creator, hosts)
    return {
        "url": f"{hosts.api}/repos/{repo.full_name}/statuses/{status.sha}",
        "avatar_url": creator["avatar_url"],
        "id": status.id,
        "node_id": node_id("SC", status.id),
        "state": status.state,
        "description": status.description,
        "target_url": status.target_url,
        "context": status.context,
        "created_at": status.created_at,
        "updated_at": status.created_at,
        "creator": creator,
    }


def _changed_check_run(run: CheckRun, data: Json) -> CheckRun:
    """`run` with a create/update body applied, validated as GitHub does (422)."""
    status = data.get("status", run.status)
    conclusion = data.get("conclusion", run.conclusion)
    if "conclusion" in data and "status" not in data:
        status = "completed"  # GitHub: a conclusion completes the run
    if status not in _CHECK_STATUSES or (status == "completed") != (conclusion is not None):
        raise _invalid()
    if conclusion is not None and conclusion not in _CHECK_CONCLUSIONS:
        raise _invalid()
    output = run.output
    given = data.get("output")
    if given is not None:
        if not isinstance(given, dict) or not given.get("title") or not given.get("summary"):
            raise _invalid("output requires a title and a summary")
        for key in ("summary", "text"):
            value = given.get(key)
            if value is not None and len(value) > CHECK_OUTPUT_CAP:
                raise _invalid(
                    f"Invalid request. Only {CHECK_OUTPUT_CAP} characters are allowed; "
                    f"{len(value)} were supplied."
                )
        output = CheckOutput(given["title"], given["summary"], given.get("text"))
    history = run.history if run.history and run.history[-1] == status else (*run.history, status)
    return dataclasses.replace(
        run,
        status=status,
        conclusion=conclusion,
        output=output,
        details_url=data.get("details_url", run.details_url),
        external_id=data.get("external_id", run.external_id),
        history=history,
    )


def _check_run_pull_json(repo: Repo, pr: Pull, hosts: Hosts) -> Json:
    """A PR as a check run lists it: number, and its head and base by ref and sha."""
    api = f"{hosts.api}/repos/{repo.full_name}"
    slim_repo = {"id": repo.id, "url": api, "name": repo.name}
    return {
        "id": stable_id("pull", f"{repo.full_name}#{pr.number}"),
        "number": pr.number,
        "url": f"{api}/pulls/{pr.number}",
        "head": {"ref": pr.head_ref, "sha": pr.head_sha, "repo": slim_repo},
        "base": {"ref": pr.base_ref, "sha": pr.base_sha, "repo": slim_repo},
    }


def _open_pulls_at(state: _RepoState, sha: str) -> list[int]:
    """What GitHub lists as a check's pull requests: the open ones of this repository
    (not forks) whose head is ``sha``."""
    return [
        pr.number
        for pr in state.pulls.values()
        if pr.head_sha == sha and pr.head_repo is None and pr.state == "open"
    ]


def _check_run_json(repo: Repo, run: CheckRun, hosts: Hosts) -> Json:
    api = f"{hosts.api}/repos/{repo.full_name}"
    html = f"{hosts.web}/{repo.full_name}/runs/{run.id}"
    return {
        "id": run.id,
        "node_id": node_id("CR", run.id),
        "head_sha": run.head_sha,
        "external_id": run.external_id,
        "url": f"{api}/check-runs/{run.id}",
        "html_url": html,
        "details_url": run.details_url or html,
        "status": run.status,
        "conclusion": run.conclusion,
        "started_at": run.started_at,
        "completed_at": run.started_at if run.status == "completed" else None,
        "output": dataclasses.asdict(run.output) | {"annotations_count": 0},
        "name": run.name,
        "check_suite": {"id": stable_id("check_suite", (repo.full_name, run.head_sha))},
        "app": {
            "id": run.app_id if run.app_id is not None else stable_id("app", run.app),
            "slug": run.app,
            "name": run.app,
            "owner": user_json(repo.owner, hosts),
        },
        "pull_requests": [],
    }


def _commit_json(repo: Repo, sha: str, hosts: Hosts) -> Json:
    api = f"{hosts.api}/repos/{repo.full_name}"
    person = {"name": "Fake", "email": "fake@example.com", "date": "2024-01-01T00:00:00Z"}
    return {
        "sha": sha,
        "node_id": node_id("C", sha),
        "url": f"{api}/commits/{sha}",
        "html_url": f"{hosts.web}/{repo.full_name}/commit/{sha}",
        "comments_url": f"{api}/commits/{sha}/comments",
        "commit": {
            "url": f"{api}/git/commits/{sha}",
            "author": person,
            "committer": person,
            "message": "",
            "tree": {"sha": fake_sha("tree", sha), "url": f"{api}/git/trees/{sha}"},
            "comment_count": 0,
        },
        "author": None,
        "committer": None,
        "parents": [],
        "files": [],
    }


def _latest_per_context(statuses: list[Status]) -> list[Status]:
    latest: dict[str, Status] = {}
    for status in statuses:
        latest[status.context] = status
    return list(latest.values())


def _combined_state(latest: list[Status]) -> str:
    """GitHub: any error/failure wins, then any pending (or none at all), else success."""
    states = {s.state for s in latest}
    if states & {"error", "failure"}:
        return "failure"
    if not states or "pending" in states:
        return "pending"
    return "success"


# --- module helpers: the test's real git repo -----------------------------------------


def _git(repo: Repo, *args: str) -> str | None:
    """Run git against the repo behind ``clone_url``; ``None`` when that is not possible."""
    path = repo.clone_url.removeprefix("file://")
    try:
        done = subprocess.run(
            ["git", "--git-dir", path, *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _try_resolve(repo: Repo, ref: str) -> str | None:
    return _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")


def _resolve_ref(repo: Repo, ref: str) -> str:
    """Full shas pass through untouched so tests can use made-up ones; names go to git."""
    if _SHA_RE.fullmatch(ref):
        return ref
    sha = _try_resolve(repo, ref)
    if sha is None:
        raise _invalid(f"No commit found for SHA: {ref}")
    return sha


def _git_compare(repo: Repo, base: str, head: str) -> CompareResult:
    counts = _git(repo, "rev-list", "--left-right", "--count", f"{base}...{head}")
    if counts is None:
        raise _not_found()
    behind, ahead = (int(x) for x in counts.split())
    if ahead and behind:
        status = "diverged"
    elif ahead:
        status = "ahead"
    elif behind:
        status = "behind"
    else:
        status = "identical"
    return CompareResult(status, ahead, behind)
