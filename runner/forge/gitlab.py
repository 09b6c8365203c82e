"""GitLab (gitlab.com and self-managed) behind the `Forge` interface, through python-gitlab.

The API base is the configured `GITOPS_GITLAB_URL`, never a fixed host. Objects are
fetched lazily (`lazy=True` builds the URL without a request), so each call is the
one or two REST requests it needs. GitLab's own words map onto the interface here:
a merge request's `iid` is the PR number, a note is a comment, award emoji are
reactions, a commit status's `name` is its context, access levels are permissions.

Retries: GETs, PUTs and DELETEs are retried on connection errors and 502/503/504; a
POST is not (a note or issue GitLab already created would be posted twice), except
commit statuses, where the newest per name wins anyway. 429 answers are waited out
by python-gitlab (`obey_rate_limit`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal

import requests
from gitlab import Gitlab, GitlabError
from gitlab.v4.objects import Project, ProjectMergeRequest
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

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

DEFAULT_TIMEOUT = 15  # seconds per HTTP request
STATUS_DESCRIPTION_CAP = 255  # GitLab stores commit status descriptions in a short column
# GitLab's access levels (Guest 10, Planner 15, Reporter 20, Developer 30, Maintainer 40,
# Owner 50): Developer may push, so may apply, like GitHub's write.
_DEVELOPER, _MAINTAINER, _GUEST = 30, 40, 10
_STATES: dict[CommitState, str] = {
    CommitState.PENDING: "pending",
    CommitState.SUCCESS: "success",
    CommitState.FAILURE: "failed",
    CommitState.ERROR: "failed",
}
# `detailed_merge_status` values while GitLab is still computing: mergeable unknown.
_COMPUTING = frozenset({"unchecked", "checking", "preparing", "approvals_syncing"})
# Blocked only by CI: mergeable when every status but the ignored ones is green.
_CI_BLOCKED = frozenset({"ci_must_pass", "ci_still_running"})
# GitHub's reaction names that GitLab spells differently.
_EMOJI = {"+1": "thumbsup", "-1": "thumbsdown", "laugh": "smile", "hooray": "tada"}
_APPROVED_NOTE = "approved this merge request"


def _transport_retry() -> Retry:
    """A few quick retries (at once, 0.5 s, 1 s) of requests that are safe to repeat."""
    return Retry(
        total=3,
        backoff_factor=0.25,
        backoff_max=2,
        status_forcelist=(502, 503, 504),
        allowed_methods=frozenset({"GET", "HEAD", "PUT", "DELETE"}),
        raise_on_status=False,
    )


def _session(retry: bool) -> requests.Session:
    session = requests.Session()
    if retry:
        adapter = HTTPAdapter(max_retries=_transport_retry())
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    return session


class GitLabForge:
    """The `Forge` for one GitLab instance; thread-safe enough to share between workers."""

    name: ForgeKind = "gitlab"
    comment_cap: int = 1_000_000  # GitLab's note length limit
    shows_reports: bool = False  # project results are commit statuses (no check runs)

    def __init__(
        self,
        url: str,
        token: str,
        *,
        request_timeout: int = DEFAULT_TIMEOUT,
        retry: bool = True,
        mergeable_poll: Sequence[float] = (0.5, 1.0),
    ) -> None:
        """`url`: the instance root, `https://gitlab.com` or `https://git.example/gitlab`.

        `mergeable_poll`: pauses between re-reads of a merge request while GitLab still
        computes whether it can merge (`detailed_merge_status: checking`).
        """
        if not token:
            raise ValueError("a GitLab token is required")
        self.url = url.rstrip("/")
        self._token = token  # kept only to scrub it from error messages
        self._mergeable_poll = tuple(mergeable_poll)
        self._gl = Gitlab(
            self.url,
            private_token=token,
            timeout=request_timeout,
            per_page=100,
            retry_transient_errors=False,  # the session retries what is safe to repeat
            session=_session(retry),
            user_agent="gitops-runner",
        )
        self._login: str | None = None
        self._login_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"GitLabForge({self.url!r})"

    # --- merge requests ---------------------------------------------------------------

    @forge_call("read the merge request")
    def pull_request(self, repo: RepoRef, number: int) -> PullRequestInfo:
        mr = self._read_mr(repo, number)
        diff_refs = mr.diff_refs or {}
        return PullRequestInfo(
            number=mr.iid,
            html_url=mr.web_url,
            author=(mr.author or {}).get("username", "ghost"),
            head_sha=mr.sha,
            head_ref=mr.source_branch,
            base_ref=mr.target_branch,
            # Just after creation GitLab may not have computed the diff yet; the target
            # branch's name then resolves to its head, which is what start_sha is.
            base_sha=diff_refs.get("start_sha") or mr.target_branch,
            state=_state(mr.state),
            draft=bool(getattr(mr, "draft", False)),
            mergeable=_mergeable(mr.detailed_merge_status),
            is_fork=mr.source_project_id != mr.target_project_id,
        )

    @forge_call("read the approvals")
    def approvals(self, repo: RepoRef, number: int) -> list[Approval]:
        """Who approves now, each with the head the merge request had when they approved.

        GitLab lists current approvers without a commit; the commit is the head of the
        latest diff version (one per push) created before the approver's latest
        "approved this merge request" note. Unknown (no such note): an empty sha,
        which never equals a head, so the approval does not count.
        """
        mr = self._mr(repo, number)
        approvers = [entry["user"]["username"] for entry in mr.approvals.get().approved_by]
        if not approvers:
            return []
        pushes = _pushes(mr.diffs.list(iterator=True))
        approved_at = _approval_times(mr.notes.list(iterator=True, sort="asc"))
        return [
            Approval(user=user, commit_sha=_head_at(pushes, approved_at.get(user.casefold())))
            for user in approvers
        ]

    @forge_call("check mergeability")
    def is_mergeable(self, repo: RepoRef, number: int, ignore_contexts: Sequence[str]) -> bool:
        """GitLab would merge now, or waits only for CI whose failing statuses we ignore.

        `detailed_merge_status` names every other blocker (approvals, discussions,
        conflicts, draft), so those count against the merge request, as they should.
        """
        mr = self._read_mr(repo, number)
        if mr.state != "opened":
            return False
        if mr.detailed_merge_status == "mergeable":
            return True
        if mr.detailed_merge_status not in _CI_BLOCKED:
            return False
        return not self._failing_statuses(repo, mr.sha, ignore_contexts)

    # --- notes and statuses -----------------------------------------------------------

    @forge_call("post a note")
    def post_comment(self, repo: RepoRef, number: int, body: str) -> int:
        self._check_comment_size(body)
        return int(self._mr(repo, number).notes.create({"body": body}).id)

    @forge_call("edit a note")
    def edit_comment(self, repo: RepoRef, number: int, comment_id: int, body: str) -> None:
        self._check_comment_size(body)
        self._mr(repo, number).notes.update(comment_id, {"body": body})

    @forge_call("award an emoji")
    def react(self, repo: RepoRef, number: int, comment_id: int, reaction: str) -> None:
        note = self._mr(repo, number).notes.get(comment_id, lazy=True)
        try:
            note.awardemojis.create({"name": _EMOJI.get(reaction, reaction)})
        except GitlabError as exc:
            if "already" not in str(exc.error_message).lower():  # awarded before: done
                raise

    @forge_call("set a commit status")
    def report_project(self, repo: RepoRef, sha: str, report: ProjectReport) -> str:
        return report_as_status(self, repo, sha, report)

    def set_status(
        self,
        repo: RepoRef,
        sha: str,
        context: str,
        state: CommitState,
        description: str,
        target_url: str = "",
    ) -> None:
        data = {
            "state": _STATES[CommitState(state)],
            "name": context,
            "description": cap_text(description, STATUS_DESCRIPTION_CAP),
        }
        if target_url:
            data["target_url"] = target_url
        try:
            self._project(repo).commits.get(sha, lazy=True).statuses.create(data)
        except GitlabError as exc:
            # Posting `pending` over `pending` is refused ("Cannot transition status via
            # :enqueue from :pending"): the status already says what we wanted.
            if "cannot transition status" not in str(exc.error_message).lower():
                raise

    # --- users --------------------------------------------------------------------------

    @forge_call("read a member's access level")
    def permission(self, repo: RepoRef, user: str) -> Permission:
        """Owner/Maintainer → admin, Developer → write, Guest..Reporter → read, else none.

        Inherited memberships (group, parent groups) count, as they do in GitLab.
        """
        users = self._gl.users.list(username=user, get_all=False)
        if not users:
            return "none"
        try:
            member = self._project(repo).members_all.get(users[0].id)
        except GitlabError as exc:
            if exc.response_code == 404:  # not a member (or no access to the project)
                return "none"
            raise
        return _permission(int(member.access_level))

    @forge_call("read the authenticated user")
    def bot_login(self) -> str:
        with self._login_lock:
            if self._login is None:
                self._gl.auth()
                assert self._gl.user is not None
                self._login = str(self._gl.user.username)
            return self._login

    # --- drift issues -----------------------------------------------------------------

    def find_open_issue(self, repo: RepoRef, title: str) -> IssueRef | None:
        """The runner's own open issue titled exactly `title` (never a person's)."""
        return self._find_open_issue(repo, title, self.bot_login())

    @forge_call("list issues")
    def _find_open_issue(self, repo: RepoRef, title: str, author: str) -> IssueRef | None:
        issues = self._project(repo).issues.list(
            state="opened", author_username=author, search=title, iterator=True
        )
        return next((_issue_ref(issue) for issue in issues if issue.title == title), None)

    @forge_call("open an issue")
    def open_issue(
        self, repo: RepoRef, title: str, body: str, labels: Sequence[str] = ()
    ) -> IssueRef:
        data = {"title": title, "description": body, "labels": ",".join(labels)}
        return _issue_ref(self._project(repo).issues.create(data))

    @forge_call("update an issue")
    def update_issue(self, repo: RepoRef, number: int, body: str) -> None:
        self._project(repo).issues.update(number, {"description": body})

    @forge_call("close an issue")
    def close_issue(self, repo: RepoRef, number: int, comment: str) -> None:
        """Comment first, so the issue never sits closed without its explanation."""
        issues = self._project(repo).issues
        issues.get(number, lazy=True).notes.create({"body": comment})
        issues.update(number, {"state_event": "close"})

    # --- helpers ------------------------------------------------------------------------

    def _project(self, repo: RepoRef) -> Project:
        if repo.forge != "gitlab":
            raise ValueError(f"{repo.key} is a {repo.forge} repository, not a GitLab one")
        return self._gl.projects.get(repo.full_name, lazy=True)  # no request

    def _mr(self, repo: RepoRef, number: int) -> ProjectMergeRequest:
        return self._project(repo).mergerequests.get(number, lazy=True)

    def _read_mr(self, repo: RepoRef, number: int) -> ProjectMergeRequest:
        """Read the merge request, re-reading briefly while GitLab computes mergeability."""
        mr = self._project(repo).mergerequests.get(number)
        for pause in self._mergeable_poll:
            if mr.state != "opened" or mr.detailed_merge_status not in _COMPUTING:
                break
            time.sleep(pause)
            mr = self._project(repo).mergerequests.get(number)
        return mr

    def _failing_statuses(self, repo: RepoRef, sha: str, ignore: Sequence[str]) -> list[str]:
        """Statuses (and CI jobs, which GitLab lists alike) on `sha` not green nor ignored.

        GitLab lists the latest status per name unless asked for all.
        """
        commit = self._project(repo).commits.get(sha, lazy=True)
        return [
            status.name
            for status in commit.statuses.list(iterator=True)
            if status.status not in ("success", "skipped")
            and not getattr(status, "allow_failure", False)  # a job allowed to fail
            and not is_ignored_context(status.name, ignore)
        ]

    def _check_comment_size(self, body: str) -> None:
        if len(body) > self.comment_cap:
            raise ForgeError(
                f"GitLab: note of {len(body)} characters exceeds the cap of {self.comment_cap}"
            )

    def _forge_error(self, what: str, exc: Exception) -> ForgeError | None:
        """python-gitlab's and the transport's exceptions, as `ForgeError` (`forge_call`)."""
        where = f"GitLab ({self.url})"
        if isinstance(exc, GitlabError):
            detail = str(exc.error_message or "no message")
            return ForgeError.of_request(where, what, detail, exc.response_code, self._token)
        if isinstance(exc, requests.RequestException):
            detail = f"{type(exc).__name__}: {exc}"
            return ForgeError.of_request(where, what, detail, None, self._token)
        return None


def _state(state: str) -> Literal["open", "closed", "merged"]:
    """`opened` → open; `locked` (a merge in progress) counts as closed until it lands."""
    if state in ("opened", "merged"):
        return "open" if state == "opened" else "merged"
    return "closed"


def _mergeable(detailed_status: str | None) -> bool | None:
    if detailed_status is None or detailed_status in _COMPUTING:
        return None
    return detailed_status == "mergeable"


def _permission(access_level: int) -> Permission:
    if access_level >= _MAINTAINER:
        return "admin"
    if access_level >= _DEVELOPER:
        return "write"
    return "read" if access_level >= _GUEST else "none"  # Minimal Access (5): none


def _when(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp)


def _pushes(versions: Iterable[Any]) -> list[tuple[datetime, str]]:
    """(created_at, head sha) of each diff version, oldest first."""
    return sorted((_when(v.created_at), v.head_commit_sha) for v in versions)


def _approval_times(notes: Iterable[Any]) -> dict[str, datetime]:
    """Each user's latest "approved this merge request" system note, by lower-cased name."""
    latest: dict[str, datetime] = {}
    for note in notes:
        if getattr(note, "system", False) and note.body == _APPROVED_NOTE:
            user = note.author["username"].casefold()
            latest[user] = max(latest.get(user, _when(note.created_at)), _when(note.created_at))
    return latest


def _head_at(pushes: list[tuple[datetime, str]], when: datetime | None) -> str:
    """The head the merge request had at `when`: the latest version created by then."""
    if when is None:
        return ""
    heads = [sha for created, sha in pushes if created <= when]
    return heads[-1] if heads else ""


def _issue_ref(issue: Any) -> IssueRef:
    return IssueRef(
        number=issue.iid,
        html_url=issue.web_url,
        title=issue.title,
        body=issue.description or "",
        state="open" if issue.state == "opened" else "closed",
    )
