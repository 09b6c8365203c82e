"""The one interface between the runner and a code-hosting forge (GitHub, GitLab).

Everything above this module is forge-blind: it asks for a pull request, posts a
comment, sets a commit status. `forge/github.py` and `forge/gitlab.py` are the
two implementations; `build_forge(settings, forge_name)` picks one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, Protocol, TypeVar, cast

from runner.events.model import ForgeKind, RepoRef


class ForgeNotConfigured(ValueError):
    """The runner got work for a forge it has no credentials (or no support) for."""


Permission = Literal["admin", "write", "read", "none"]
# The permissions that may change infrastructure: apply, unlock, plan with flags, approve.
WRITE_PERMISSIONS: frozenset[Permission] = frozenset({"admin", "write"})


def same_user(login: str, other: str) -> bool:
    """Whether two logins name one account: GitHub and GitLab ignore their case."""
    return login.casefold() == other.casefold()


# Commit status contexts: part of the user-facing contract (docs/commands.md).
PLAN_CONTEXT = "gitops/plan"
APPLY_CONTEXT = "gitops/apply"
POLICY_CONTEXT = "gitops/policy"


def project_context(base: str, project: str) -> str:
    """Per-project status context, e.g. `gitops/plan: app`."""
    return f"{base}: {project}"


def is_ignored_context(context: str, ignore: Sequence[str]) -> bool:
    """Whether a status is one `is_mergeable` leaves out: an entry of `ignore`, or one
    of its per-project variants (`gitops/apply` covers `gitops/apply: app`, not
    `gitops/applyx`)."""
    return any(context == prefix or context.startswith(prefix + ":") for prefix in ignore)


def cap_text(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, ending with `…` when cut (status descriptions)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class CommitState(StrEnum):
    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"


class ReportState(StrEnum):
    """Where one project's run stands, in check-run terms (statuses map it onto theirs)."""

    IN_PROGRESS = "in_progress"
    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"  # done, nothing to do: a plan without changes
    CANCELLED = "cancelled"  # superseded by a newer push before it finished


_STATUS_OF_REPORT = {
    ReportState.IN_PROGRESS: CommitState.PENDING,
    ReportState.SUCCESS: CommitState.SUCCESS,
    ReportState.FAILURE: CommitState.FAILURE,
    ReportState.NEUTRAL: CommitState.SUCCESS,
    ReportState.CANCELLED: CommitState.ERROR,
}


@dataclass(frozen=True)
class ProjectReport:
    """One project's result of one command on one commit, as the forge shows it.

    A check run on GitHub when the runner is an App (title, summary line, the whole
    output); a commit status elsewhere (title only). Built by `commands/feedback.py`.
    """

    context: str  # `gitops/plan: infra/app`: the check run's or the status's name
    state: ReportState
    title: str  # one line: Terraform's summary sentence, or what failed
    body: str = ""  # Markdown: the project's full output; shown by check runs only
    details_url: str = ""


def report_as_status(forge: Forge, repo: RepoRef, sha: str, report: ProjectReport) -> str:
    """`report_project` for forges that show it as a commit status; no link of its own."""
    state = _STATUS_OF_REPORT[report.state]
    forge.set_status(repo, sha, report.context, state, report.title, report.details_url)
    return ""


class ForgeError(Exception):
    """A forge API call failed for good (after whatever retries the implementation does).

    One exception type for every forge, so callers handle "GitHub said no" and "GitLab
    is down" alike. The message names the operation and the forge's answer and never
    contains credentials, so it is safe to log and to show in a PR comment.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status, None when no response came (network)

    @classmethod
    def of_request(
        cls, forge: str, what: str, detail: str, status: int | None, token: str
    ) -> ForgeError:
        """`GitHub (url): could not post a comment: HTTP 502: …`, with the token scrubbed."""
        code = f"HTTP {status}" if status is not None else "no response"
        message = f"{forge}: could not {what}: {code}: {detail}"
        return cls(message.replace(token, "***") if token else message, status=status)


_F = TypeVar("_F", bound=Callable[..., Any])


def forge_call(what: str) -> Callable[[_F], _F]:
    """Turn a client library's exceptions into a `ForgeError` naming `what` failed.

    It wraps whole methods because the clients are lazy: requests happen on attribute
    access, anywhere in the method body. The forge says which exceptions are its
    client's, in `self._forge_error(what, exc)`: a `ForgeError`, or None to let the
    exception through (a bug is not a forge failure).
    """

    def decorate(method: _F) -> _F:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except ForgeError:
                raise  # already named by an inner call
            except Exception as exc:
                error = self._forge_error(what, exc)
                if error is None:
                    raise
                raise error from exc

        return cast(_F, wrapper)

    return decorate


@dataclass(frozen=True)
class PullRequestInfo:
    """The live state of a pull/merge request, read from the forge when deciding."""

    number: int
    html_url: str
    author: str
    head_sha: str
    head_ref: str
    base_ref: str
    base_sha: str
    state: Literal["open", "closed", "merged"]
    draft: bool = False
    mergeable: bool | None = None  # None: the forge has not computed it yet
    # The head branch lives in another repository (or one since deleted): its code and
    # config are a stranger's. Defaults to True so a forge that cannot tell fails closed.
    is_fork: bool = True


@dataclass(frozen=True)
class Approval:
    """A reviewer's standing approval of a pull request, and the commit it was given at.

    The forge says who approves (its own rules on later reviews); whether an approval
    counts (at the head, by a writer, not by the author) is decided by the caller
    (`commands/apply_requirements.py`), so every forge is judged alike.
    """

    user: str
    commit_sha: str


@dataclass(frozen=True)
class IssueRef:
    """An issue the runner opened (drift reports)."""

    number: int
    html_url: str
    title: str
    body: str
    state: Literal["open", "closed"]


class Forge(Protocol):
    """What the runner needs from a forge. Implementations talk real HTTP."""

    name: ForgeKind
    comment_cap: int  # the largest comment body the forge accepts, in characters

    def pull_request(self, repo: RepoRef, number: int) -> PullRequestInfo: ...

    def post_comment(self, repo: RepoRef, number: int, body: str) -> int: ...

    def edit_comment(self, repo: RepoRef, number: int, comment_id: int, body: str) -> None: ...

    def react(self, repo: RepoRef, number: int, comment_id: int, reaction: str) -> None:
        """Acknowledge a command comment ("eyes"), so the user knows it was seen."""
        ...

    def set_status(
        self,
        repo: RepoRef,
        sha: str,
        context: str,
        state: CommitState,
        description: str,
        target_url: str = "",
    ) -> None: ...

    # Whether `report_project` shows a project's whole output (GitHub check runs), so the
    # plan comment can be a short summary linking to it.
    shows_reports: bool

    def report_project(self, repo: RepoRef, sha: str, report: ProjectReport) -> str:
        """Show one project's result on `sha`: a check run, or a commit status (see
        `report_as_status`). Returns a link to it, "" when it has none of its own."""
        ...

    def permission(self, repo: RepoRef, user: str) -> Permission: ...

    def approvals(self, repo: RepoRef, number: int) -> list[Approval]:
        """The approvals standing now: one per user whose latest deciding review approves."""
        ...

    def is_mergeable(self, repo: RepoRef, number: int, ignore_contexts: Sequence[str]) -> bool:
        """Whether the forge would let the PR merge, not counting our own apply status."""
        ...

    def bot_login(self) -> str:
        """The runner's own user, so its comments never trigger commands."""
        ...

    def find_open_issue(self, repo: RepoRef, title: str) -> IssueRef | None: ...

    def open_issue(
        self, repo: RepoRef, title: str, body: str, labels: Sequence[str] = ()
    ) -> IssueRef: ...

    def update_issue(self, repo: RepoRef, number: int, body: str) -> None: ...

    def close_issue(self, repo: RepoRef, number: int, comment: str) -> None: ...
