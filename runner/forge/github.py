"""GitHub (and GitHub Enterprise) behind the `Forge` interface, through PyGithub.

Every call goes out as one REST request where GitHub allows it: the client is lazy,
so `get_repo`/`get_issue` build URLs instead of fetching objects first. PyGithub's
default pacing (0.25 s per request, 1 s per write) and its long 5xx back-off would
stall a busy runner, so both are replaced: no artificial pacing, a few quick retries
of transient failures, and GitHub's own rate-limit answers still honoured.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import requests
from github import Auth, Github, GithubException
from github.PullRequest import PullRequest
from github.Repository import Repository

from runner.events.model import ForgeKind, RepoRef
from runner.forge.base import (
    Approval,
    CommitState,
    ForgeError,
    IssueRef,
    Permission,
    ProjectReport,
    PullRequestInfo,
    cap_text,
    forge_call,
    is_ignored_context,
    report_as_status,
)
from runner.forge.github_app import GitHubAppAuth
from runner.forge.github_checks import CheckRuns
from runner.forge.rate_limits import (
    DEFAULT_MAX_WAIT,
    PrimaryLimitUsedUp,
    github_retry,
    wait_for_primary_reset,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 15  # seconds per HTTP request (PyGithub insists on an int)
STATUS_DESCRIPTION_CAP = 140  # GitHub rejects longer commit status descriptions
# The states in which GitHub would merge now (has_hooks: clean, plus pre-receive hooks).
_MERGEABLE_STATES = frozenset({"clean", "unstable", "has_hooks"})
# A finished check run that does not stand in a merge's way.
_PASSING_CONCLUSIONS = frozenset({"success", "neutral", "skipped"})
# Review states that change a reviewer's verdict; COMMENTED leaves it as it was.
_DECIDING_REVIEW_STATES = frozenset({"APPROVED", "CHANGES_REQUESTED", "DISMISSED"})
_PERMISSIONS: dict[str, Permission] = {
    "admin": "admin",
    "maintain": "write",
    "write": "write",
    "triage": "read",
    "read": "read",
}


def _github_message(exc: GithubException) -> str:
    data = exc.data
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return str(data or exc.message or "no message")


class GitHubForge:
    """The `Forge` for one GitHub host; thread-safe enough to share between workers."""

    name: ForgeKind = "github"
    comment_cap: int = 65_536

    def __init__(
        self,
        api_url: str,
        token: str = "",
        *,
        app: tuple[int, str] | None = None,
        request_timeout: int = DEFAULT_TIMEOUT,
        retry: bool = True,
        max_rate_limit_wait: float = DEFAULT_MAX_WAIT,
        checks: bool = False,
        mergeable_poll: Sequence[float] = (0.5, 1.0),
    ) -> None:
        """`api_url`: `https://api.github.com` or `https://ghe.example/api/v3`.

        Authenticates with `token`, or as the GitHub App `app` = (app id, PEM private
        key): then every repository is reached through its installation's token.
        `mergeable_poll`: pauses between re-reads of a PR while GitHub is still computing
        its mergeability (a background job started by the first read after a push).
        `checks`: report project results as check runs (an App only); `max_rate_limit_wait`:
        the longest one request waits for a rate limit (`forge/rate_limits.py`).
        """
        if not token and app is None:
            raise ValueError("a GitHub token or App is required")
        if checks and app is None:
            raise ValueError("check runs need a GitHub App: GitHub refuses them to tokens")
        self.api_url = api_url.rstrip("/")
        self._token = token  # kept only to scrub it from error messages
        self._mergeable_poll = tuple(mergeable_poll)
        self._request_timeout = request_timeout
        self._retry = github_retry(max_rate_limit_wait) if retry else None
        self._max_rate_limit_wait = max_rate_limit_wait
        self._checks = CheckRuns() if checks else None
        self._app = GitHubAppAuth(app[0], app[1], self._new_client) if app else None
        self._gh = self._new_client(Auth.Token(token)) if token else None
        self._login: str | None = None
        self._login_lock = threading.Lock()

    def _new_client(self, auth: Auth.Auth) -> Github:
        """A PyGithub client with the runner's options (see the module docstring)."""
        return Github(
            base_url=self.api_url,
            auth=auth,
            timeout=self._request_timeout,
            retry=self._retry,
            seconds_between_requests=None,
            seconds_between_writes=None,
            per_page=100,
            lazy=True,
            user_agent="gitops-runner",
        )

    @property
    def is_app(self) -> bool:
        return self._app is not None

    @property
    def app_id(self) -> int | None:
        """The App the runner acts as (its check runs carry this id), None with a token."""
        return self._app.app_id if self._app is not None else None

    @property
    def shows_reports(self) -> bool:
        return self._checks is not None

    @forge_call("get an installation token")
    def clone_token(self, repo: RepoRef) -> str:
        """The token git uses for `repo`: the installation's (renewed if due), or the PAT."""
        return self._app.token(repo) if self._app is not None else self._token

    def __repr__(self) -> str:
        return f"GitHubForge({self.api_url!r})"

    # --- pull requests --------------------------------------------------------------

    @forge_call("read the pull request")
    def pull_request(self, repo: RepoRef, number: int) -> PullRequestInfo:
        pr = self._read_pull(repo, number)
        return PullRequestInfo(
            number=pr.number,
            html_url=pr.html_url,
            author=pr.user.login if pr.user else "ghost",
            head_sha=pr.head.sha,
            head_ref=pr.head.ref,
            base_ref=pr.base.ref,
            base_sha=pr.base.sha,
            state="merged" if pr.merged else "open" if pr.state == "open" else "closed",
            draft=bool(pr.draft),
            mergeable=pr.mergeable,
            is_fork=_is_fork(pr),
        )

    @forge_call("list the reviews")
    def approvals(self, repo: RepoRef, number: int) -> list[Approval]:
        """Each user whose latest deciding review approves, with that review's commit.

        A later COMMENTED review leaves an approval standing, as on GitHub; a later
        CHANGES_REQUESTED or a dismissal withdraws it. GitHub lists reviews oldest first.
        """
        latest: dict[str, Any] = {}
        for review in self._repo(repo).get_pull(number).get_reviews():
            if review.user is None:  # a deleted account
                continue
            if review.state in _DECIDING_REVIEW_STATES:
                latest[review.user.login] = review
        return [
            Approval(user=user, commit_sha=review.commit_id)
            for user, review in latest.items()
            if review.state == "APPROVED"
        ]

    @forge_call("check mergeability")
    def is_mergeable(self, repo: RepoRef, number: int, ignore_contexts: Sequence[str]) -> bool:
        """Atlantis' rule: GitHub would merge, or is blocked only by statuses we ignore.

        A context is ignored when it equals an entry of `ignore_contexts` or extends it
        with ":" (`gitops/apply` covers `gitops/apply: app`). "blocked" can also mean
        missing required reviews, which the REST API does not tell apart; approval is
        a separate apply requirement.
        """
        pr = self._read_pull(repo, number)
        if pr.state != "open" or pr.mergeable is not True:
            return False
        if pr.mergeable_state in _MERGEABLE_STATES:
            return True
        if pr.mergeable_state != "blocked":
            return False  # dirty, behind, draft, unknown
        return not self._failing_checks(repo, pr.head.sha, ignore_contexts)

    # --- comments and statuses --------------------------------------------------------

    @forge_call("post a comment")
    def post_comment(self, repo: RepoRef, number: int, body: str) -> int:
        self._check_comment_size(body)
        return self._repo(repo).get_issue(number).create_comment(body).id

    @forge_call("edit a comment")
    def edit_comment(self, repo: RepoRef, number: int, comment_id: int, body: str) -> None:
        self._check_comment_size(body)
        self._repo(repo).get_issue(number).get_comment(comment_id).edit(body)

    @forge_call("react to a comment")
    def react(self, repo: RepoRef, number: int, comment_id: int, reaction: str) -> None:
        self._repo(repo).get_issue(number).get_comment(comment_id).create_reaction(reaction)

    @forge_call("set a commit status")
    def set_status(
        self,
        repo: RepoRef,
        sha: str,
        context: str,
        state: CommitState,
        description: str,
        target_url: str = "",
    ) -> None:
        options: dict[str, str] = {
            "context": context,
            "description": cap_text(description, STATUS_DESCRIPTION_CAP),
        }
        if target_url:
            options["target_url"] = target_url
        self._repo(repo).get_commit(sha).create_status(CommitState(state).value, **options)

    @forge_call("report a project's result")
    def report_project(self, repo: RepoRef, sha: str, report: ProjectReport) -> str:
        """A check run in App mode with checks on (`forge/github_checks.py`), else a status."""
        if self._checks is None:
            return report_as_status(self, repo, sha, report)
        try:
            return self._checks.report(self._repo(repo), repo.key, sha, report)
        except GithubException as exc:
            if exc.status != 403:
                raise
            # An installation approved before the App asked for `checks: write` still
            # gets its results, as a status (and the full plan in the comment).
            log.warning("check run refused (%s); reporting a status instead", exc.status)
            return report_as_status(self, repo, sha, report)

    # --- users --------------------------------------------------------------------------

    @forge_call("read a collaborator permission")
    def permission(self, repo: RepoRef, user: str) -> Permission:
        try:
            granted = self._repo(repo).get_collaborator_permission(user)
        except GithubException as exc:
            if exc.status == 404:  # no such user (or no access to the repo): deny
                return "none"
            raise
        return _PERMISSIONS.get(granted, "none")

    @forge_call("read the authenticated user")
    def bot_login(self) -> str:
        with self._login_lock:
            if self._login is None:
                self._login = (
                    self._app.bot_login() if self._app is not None else self._pat().get_user().login
                )
            return self._login

    # --- drift issues -----------------------------------------------------------------

    def find_open_issue(self, repo: RepoRef, title: str) -> IssueRef | None:
        """The runner's own open issue titled exactly `title` (never a PR, never a human's).

        Only issues the runner opened count, so it never rewrites a person's issue that
        happens to carry the same title.
        """
        return self._find_open_issue(repo, title, self.bot_login())

    @forge_call("list issues")
    def _find_open_issue(self, repo: RepoRef, title: str, creator: str) -> IssueRef | None:
        issues = self._repo(repo).get_issues(state="open", creator=creator)
        for issue in issues:
            # Title first: reading `pull_request` of a plain issue costs a GET (PyGithub
            # completes the listed object to learn the field is really absent).
            if issue.title == title and issue.pull_request is None:
                return _issue_ref(issue)
        return None

    @forge_call("open an issue")
    def open_issue(
        self, repo: RepoRef, title: str, body: str, labels: Sequence[str] = ()
    ) -> IssueRef:
        return _issue_ref(self._repo(repo).create_issue(title, body=body, labels=list(labels)))

    @forge_call("update an issue")
    def update_issue(self, repo: RepoRef, number: int, body: str) -> None:
        self._repo(repo).get_issue(number).edit(body=body)

    @forge_call("close an issue")
    def close_issue(self, repo: RepoRef, number: int, comment: str) -> None:
        """Comment first, so the issue never sits closed without its explanation."""
        issue = self._repo(repo).get_issue(number)
        issue.create_comment(comment)
        issue.edit(state="closed", state_reason="completed")

    # --- helpers ------------------------------------------------------------------------

    def _repo(self, repo: RepoRef) -> Repository:
        if repo.forge != "github":
            raise ValueError(f"{repo.key} is a {repo.forge} repository, not a GitHub one")
        client = self._app.client(repo) if self._app is not None else self._pat()
        self._pace(client)
        return client.get_repo(repo.full_name)  # lazy: no request

    def _pace(self, client: Github) -> None:
        """Hold a request while the client's primary rate limit is used up (bounded)."""
        if self._retry is None:
            return
        try:
            wait_for_primary_reset(client.requester, self._max_rate_limit_wait)
        except PrimaryLimitUsedUp as used_up:
            raise ForgeError(f"GitHub ({self.api_url}): {used_up}") from None

    def _pat(self) -> Github:
        assert self._gh is not None  # __init__ requires a token or an App
        return self._gh

    def _read_pull(self, repo: RepoRef, number: int) -> PullRequest:
        """Read the PR, re-reading briefly while GitHub still computes `mergeable`."""
        pr = self._repo(repo).get_pull(number)
        for pause in self._mergeable_poll:
            if pr.state != "open" or pr.merged or pr.mergeable is not None:
                break
            time.sleep(pause)
            pr = self._repo(repo).get_pull(number)
        return pr

    def _failing_checks(self, repo: RepoRef, sha: str, ignore: Sequence[str]) -> list[str]:
        """Statuses and check runs on `sha` that are not (yet) green and not ignored.

        Check runs count too: GitHub Actions reports through them, not statuses.
        """
        commit = self._repo(repo).get_commit(sha)
        # What the combined status aggregates, but paginated: the combined endpoint
        # shows only its first page of contexts, and a failure could hide past it.
        statuses = _latest_per_context(commit.get_statuses())
        failing = [s.context for s in statuses if s.state != "success"]
        failing += [
            run.name
            for run in commit.get_check_runs()
            if run.status != "completed" or run.conclusion not in _PASSING_CONCLUSIONS
        ]
        return [name for name in failing if not is_ignored_context(name, ignore)]

    def _check_comment_size(self, body: str) -> None:
        if len(body) > self.comment_cap:
            raise ForgeError(
                f"GitHub: comment of {len(body)} characters exceeds the cap of {self.comment_cap}"
            )

    def _forge_error(self, what: str, exc: Exception) -> ForgeError | None:
        """PyGithub's and the transport's exceptions, as `ForgeError` (see `forge_call`)."""
        if isinstance(exc, GithubException):
            return self._error(what, _github_message(exc), exc.status)
        if isinstance(exc, requests.RequestException):
            return self._error(what, f"{type(exc).__name__}: {exc}", None)
        return None

    def _error(self, what: str, detail: str, status: int | None) -> ForgeError:
        return ForgeError.of_request(f"GitHub ({self.api_url})", what, detail, status, self._token)


def _is_fork(pr: PullRequest) -> bool:
    """Whether the head is outside the base repository; a deleted head repo counts as one.

    GitHub repository names are case-insensitive, so `Acme/Infra` is `acme/infra`.
    """
    head_repo = pr.head.repo
    if head_repo is None:
        return True
    return head_repo.full_name.casefold() != pr.base.repo.full_name.casefold()


def _latest_per_context(statuses: Iterable[Any]) -> list[Any]:
    """GitHub lists statuses newest first; the first one seen per context is current."""
    latest: dict[str, Any] = {}
    for status in statuses:
        latest.setdefault(status.context, status)
    return list(latest.values())


def _issue_ref(issue: Any) -> IssueRef:
    return IssueRef(
        number=issue.number,
        html_url=issue.html_url,
        title=issue.title,
        body=issue.body or "",
        state="closed" if issue.state == "closed" else "open",
    )
