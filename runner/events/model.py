"""Forge-neutral webhook events.

`events/github.py` and `events/gitlab.py` turn a verified webhook payload into
one of these values; nothing past it reads the forge's JSON, and nothing past it reads
a comment's text: a `CommentEvent` carries its parsed command. Only what the PR flow
needs is kept, so the two forges can be mapped onto the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from runner.events.commands import Command, CommandError

# The kind of forge a repository lives on: the one spelling of it everywhere above
# `runner.settings` (which sits below this layer and repeats it, see `PolledRepo.forge`).
ForgeKind = Literal["github", "gitlab"]
PullRequestAction = Literal["opened", "updated", "closed", "ready"]


class MalformedEvent(ValueError):
    """The payload lacks a field we rely on, or has it with the wrong type.

    The web layer answers 400: a forge never sends this, so it is a bug or a forgery.
    """


def url_host(url: str) -> str | None:
    """Lower-cased `host[:port]` of an http(s) URL, without credentials; None if it has none."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a non-numeric port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.hostname + (f":{port}" if port else "")


def canonical_repo_key(host: str, path: str) -> str:
    """The one spelling of a repository's id: `host/owner/name`, host and path lower-cased.

    Locks, per-state mutexes, plans and runs are scoped by it. GitHub and GitLab treat
    `Acme/Infra` and `acme/infra` as one repository, so two spellings of it must
    exclude each other: every path that builds a repository key goes through here.
    """
    path = path.strip("/").removesuffix(".git").lower()
    return f"{host.lower()}/{path}" if host else path


@dataclass(frozen=True)
class RepoRef:
    """The repository the webhook is about (for a PR: the base repository)."""

    forge: ForgeKind
    full_name: str  # "acme/infra"; GitLab: the path with namespace, "group/sub/infra"
    clone_url: str
    html_url: str
    default_branch: str
    # The GitHub App installation the webhook came through (`installation.id`): the
    # forge acts as it for this repository. None for GitLab, tokens, and job rows
    # written before it existed. Not part of the repository's identity.
    installation_id: int | None = field(default=None, compare=False)

    @property
    def host(self) -> str:
        # The forge parsers only build a RepoRef from an html_url with a host.
        return url_host(self.html_url) or ""

    @property
    def key(self) -> str:
        """`github.com/acme/infra`: what allowlists match and locks are scoped by.

        The host comes from html_url so that two GitHub Enterprise instances with an
        `acme/infra` each never share locks or allowlist entries.
        """
        return canonical_repo_key(self.host, self.full_name)


@dataclass(frozen=True)
class PullRequestRef:
    """A pull/merge request at the moment of the event."""

    number: int
    html_url: str
    author: str
    head_sha: str
    head_ref: str
    base_ref: str
    base_sha: str
    # None when the head repository was deleted (a fork removed after opening the PR).
    head_repo_full_name: str | None
    # Code from a fork is untrusted: the PR flow may refuse to plan it automatically.
    # True too when the head repository is unknown, since it cannot be proven the same.
    is_fork: bool
    is_draft: bool


@dataclass(frozen=True)
class PullRequestEvent:
    repo: RepoRef
    pr: PullRequestRef
    action: PullRequestAction
    merged: bool  # only ever True with action "closed"
    merge_commit_sha: str | None  # set only when merged: the commit to apply
    sender: str


@dataclass(frozen=True)
class CommentEvent:
    """A new comment on a pull request (comments on plain issues are ignored)."""

    repo: RepoRef
    pr_number: int
    comment_id: int
    body: str
    author: str
    # The runner's own comments (and other bots') must never trigger commands.
    author_is_bot: bool
    # `body` parsed once, by the forge's event parser (`comment_parser.parse_comment`):
    # None when the comment is not addressed to the runner. The web layer, the job and
    # the PR flow all read this, never the body.
    command: Command | CommandError | None
    # Set when no comment was written: someone clicked "Re-run" on this runner's check
    # run (GitHub), which asks for what `gitops plan -p <project>` would, or "Re-run all
    # checks" on its check suite (`gitops plan`; the suite's id). Nothing to react to.
    check_run_id: int | None = None


@dataclass(frozen=True)
class CheckRunRerun:
    """Someone clicked "Re-run" on a check run (GitHub `check_run` `rerequested`).

    Not work yet: the web layer checks it is one of this runner's own check runs (the
    App's id, a `gitops/plan: ` name) and turns it into the `CommentEvent` of
    `gitops plan -p <project>` by the person who clicked (`events/github.py`).
    """

    repo: RepoRef
    check_run_id: int
    name: str  # `gitops/plan: infra/app`
    app_id: int  # the App that created the check run
    # Open PRs whose head is the run's commit; GitHub lists none for a fork's PR.
    pr_numbers: tuple[int, ...]
    sender: str
    sender_is_bot: bool


@dataclass(frozen=True)
class CheckSuiteRerun:
    """Someone clicked "Re-run all checks" on a commit's check suite (GitHub `check_suite`
    `rerequested`).

    Like `CheckRunRerun`, not work yet: the web layer checks it is this runner's own
    suite (the App's id) and turns it into the `CommentEvent` of `gitops plan` (every
    project) by the person who clicked (`events/github.py`).
    """

    repo: RepoRef
    check_suite_id: int
    app_id: int  # the App whose check runs the suite holds
    # Open PRs whose head is the suite's commit; GitHub lists none for a fork's PR.
    pr_numbers: tuple[int, ...]
    sender: str
    sender_is_bot: bool


# Pushes name their branch as a ref; both forges spell it the same.
BRANCH_REF_PREFIX = "refs/heads/"


@dataclass(frozen=True)
class PushEvent:
    """A push of commits to a branch (GitHub `push`, GitLab `Push Hook`).

    Only the branch and its new head are kept: a push to the default branch of a
    reconciled repository queues its reconcile at once (runner/reconcile/push.py).
    Tag pushes and branch deletions never become a PushEvent.
    """

    repo: RepoRef
    branch: str  # `main`, from `refs/heads/main`
    after: str  # the branch's new head commit
    sender: str


@dataclass(frozen=True)
class PingEvent:
    """Sent when a webhook is created; answered 200 so the forge shows it as working."""

    repo: RepoRef | None  # None for organisation-level hooks
    hook_id: int | None = None
    zen: str = ""


@dataclass(frozen=True)
class IgnoredEvent:
    """A well-formed event the runner has nothing to do for; `reason` goes to logs."""

    reason: str


Event = (
    PullRequestEvent
    | CommentEvent
    | PushEvent
    | CheckRunRerun
    | CheckSuiteRerun
    | PingEvent
    | IgnoredEvent
)
