"""GitHub webhook payloads → forge-neutral events.

Called after the signature was verified, with the `X-GitHub-Event` header and the
decoded JSON. Events and actions we do not act on become `IgnoredEvent` before the
rest of the payload is inspected, so a new GitHub field or action never breaks the
hook; for the events we do act on, every field read is type-checked and a missing
or mistyped one raises `MalformedEvent` naming its path. A comment's body is parsed
into its command here, the one time it is read.
"""

from __future__ import annotations

from typing import Any

from runner.events.commands import Command
from runner.events.comment_parser import parse_comment
from runner.events.model import (
    BRANCH_REF_PREFIX,
    CheckRunRerun,
    CheckSuiteRerun,
    CommentEvent,
    Event,
    IgnoredEvent,
    MalformedEvent,
    PingEvent,
    PullRequestAction,
    PullRequestEvent,
    PullRequestRef,
    PushEvent,
    RepoRef,
    url_host,
)
from runner.events.payload import (
    at,
    boolean,
    integer,
    is_json_object,
    obj,
    optional_boolean,
    optional_obj,
    string,
)

_PR_ACTIONS: dict[str, PullRequestAction] = {
    "opened": "opened",
    "reopened": "opened",  # a reopened PR is planned afresh, like a new one
    "synchronize": "updated",
    "ready_for_review": "ready",
    "closed": "closed",
}


def parse_github_event(event_name: str, payload: dict) -> Event:
    """Map one GitHub delivery onto an Event; raise MalformedEvent on a bad payload."""
    payload = is_json_object(payload)
    if event_name == "pull_request":
        return _pull_request(payload)
    if event_name == "issue_comment":
        return _issue_comment(payload)
    if event_name == "ping":
        return _ping(payload)
    if event_name == "check_run":
        return _check_run(payload)
    if event_name == "check_suite":
        return _check_suite(payload)
    if event_name == "push":
        return _push(payload)
    return IgnoredEvent(f"GitHub event {event_name!r} is not handled")


def _push(payload: dict) -> Event:
    """A branch push (tags and deletions are ignored); see `PushEvent`."""
    ref = string(payload, "ref", "")
    if not ref.startswith(BRANCH_REF_PREFIX):
        return IgnoredEvent(f"push to {ref[:100]!r}, not a branch")
    if optional_boolean(payload, "deleted", "", False):
        return IgnoredEvent("branch deleted")
    return PushEvent(
        repo=_repo(obj(payload, "repository", ""), "repository", _installation(payload)),
        branch=ref.removeprefix(BRANCH_REF_PREFIX),
        after=string(payload, "after", ""),
        sender=_login(payload, "sender", ""),
    )


def _pull_request(payload: dict) -> Event:
    action = string(payload, "action", "")
    mapped = _PR_ACTIONS.get(action)
    if mapped is None:
        return IgnoredEvent(f"pull_request action {action!r} is not handled")
    repo = _repo(obj(payload, "repository", ""), "repository", _installation(payload))
    pr = obj(payload, "pull_request", "")
    merged = mapped == "closed" and boolean(pr, "merged", "pull_request")
    return PullRequestEvent(
        repo=repo,
        pr=_pr_ref(pr, repo),
        action=mapped,
        merged=merged,
        # GitHub also fills merge_commit_sha with a test merge on open PRs; only a real
        # merge commit may be applied.
        merge_commit_sha=string(pr, "merge_commit_sha", "pull_request") if merged else None,
        sender=_login(payload, "sender", ""),
    )


def _pr_ref(pr: dict, repo: RepoRef) -> PullRequestRef:
    head = obj(pr, "head", "pull_request")
    base = obj(pr, "base", "pull_request")
    head_repo = optional_obj(head, "repo", "pull_request.head")
    head_full_name = (
        string(head_repo, "full_name", "pull_request.head.repo") if head_repo is not None else None
    )
    draft = optional_boolean(pr, "draft", "pull_request", False)  # absent on older GHES
    return PullRequestRef(
        number=integer(pr, "number", "pull_request"),
        html_url=string(pr, "html_url", "pull_request"),
        author=_login(pr, "user", "pull_request"),
        head_sha=string(head, "sha", "pull_request.head"),
        head_ref=string(head, "ref", "pull_request.head"),
        base_ref=string(base, "ref", "pull_request.base"),
        base_sha=string(base, "sha", "pull_request.base"),
        head_repo_full_name=head_full_name,
        # GitHub repository names are case-insensitive.
        is_fork=head_full_name is None or head_full_name.casefold() != repo.full_name.casefold(),
        is_draft=draft,
    )


def _issue_comment(payload: dict) -> Event:
    action = string(payload, "action", "")
    if action != "created":
        # Editing a comment must not re-run it: an old "apply" would apply a newer plan.
        return IgnoredEvent(f"issue_comment action {action!r} is not handled")
    issue = obj(payload, "issue", "")
    if issue.get("pull_request") is None:
        return IgnoredEvent("comment on an issue, not on a pull request")
    comment = obj(payload, "comment", "")
    user = obj(comment, "user", "comment")
    login = string(user, "login", "comment.user")
    body = string(comment, "body", "comment")
    return CommentEvent(
        repo=_repo(obj(payload, "repository", ""), "repository", _installation(payload)),
        pr_number=integer(issue, "number", "issue"),
        comment_id=integer(comment, "id", "comment"),
        body=body,
        author=login,
        # GitHub App accounts have type "Bot" and a "[bot]" login suffix; either suffices.
        author_is_bot=user.get("type") == "Bot" or login.endswith("[bot]"),
        command=parse_comment(body),
    )


# The runner's check runs that "Re-run" re-plans: `gitops/plan: <project>`.
RERUNNABLE_CHECK_PREFIX = "gitops/plan: "


def _check_run(payload: dict) -> Event:
    action = string(payload, "action", "")
    if action != "rerequested":
        return IgnoredEvent(f"check_run action {action!r} is not handled")
    run = obj(payload, "check_run", "")
    return CheckRunRerun(
        check_run_id=integer(run, "id", "check_run"),
        name=string(run, "name", "check_run"),
        **_rerun_click(payload, "check_run"),
    )


def _rerun_click(payload: dict, kind: str) -> dict[str, Any]:
    """What a `check_run` and a `check_suite` re-run share: where, whose, for which PRs,
    clicked by whom."""
    checks = obj(payload, kind, "")
    pulls = checks.get("pull_requests")
    if not isinstance(pulls, list) or not all(isinstance(pr, dict) for pr in pulls):
        raise MalformedEvent(f"{kind}.pull_requests: expected a list of objects")
    sender = obj(payload, "sender", "")
    login = string(sender, "login", "sender")
    return {
        "repo": _repo(obj(payload, "repository", ""), "repository", _installation(payload)),
        "app_id": integer(obj(checks, "app", kind), "id", f"{kind}.app"),
        "pr_numbers": tuple(integer(pr, "number", f"{kind}.pull_requests[]") for pr in pulls),
        "sender": login,
        "sender_is_bot": sender.get("type") == "Bot" or login.endswith("[bot]"),
    }


def rerun_as_command(event: CheckRunRerun, app_id: int | None) -> CommentEvent | IgnoredEvent:
    """A "Re-run" of this runner's plan check run as the `gitops plan -p <project>` comment
    the person who clicked could have written; anything else is ignored.

    `app_id` is the App this runner is (None: a token, which has no check runs). The
    PR flow then authorises it like a comment: fork PRs and strangers are refused there.
    """
    if refused := _refused_rerun(event, app_id, "check run"):
        return refused
    if not event.name.startswith(RERUNNABLE_CHECK_PREFIX):
        return IgnoredEvent(f"check run {event.name[:100]!r} is not a plan this runner re-runs")
    project = event.name.removeprefix(RERUNNABLE_CHECK_PREFIX)
    command = parse_comment(f"gitops plan -p {project}")
    if not isinstance(command, Command):
        return IgnoredEvent(f"check run {event.name[:100]!r} names no valid project")
    return _as_comment(event, command, event.check_run_id)


def _check_suite(payload: dict) -> Event:
    action = string(payload, "action", "")
    if action != "rerequested":
        return IgnoredEvent(f"check_suite action {action!r} is not handled")
    suite = obj(payload, "check_suite", "")
    return CheckSuiteRerun(
        check_suite_id=integer(suite, "id", "check_suite"),
        **_rerun_click(payload, "check_suite"),
    )


def suite_rerun_as_command(
    event: CheckSuiteRerun, app_id: int | None
) -> CommentEvent | IgnoredEvent:
    """A "Re-run all checks" of this runner's check suite as the `gitops plan` comment
    (every project) the person who clicked could have written; anything else is ignored,
    as in `rerun_as_command`."""
    if refused := _refused_rerun(event, app_id, "check suite"):
        return refused
    return _as_comment(event, Command("plan"), event.check_suite_id)


def _as_comment(
    event: CheckRunRerun | CheckSuiteRerun, command: Command, click_id: int
) -> CommentEvent:
    """The comment the person who clicked could have written, on the PR the click names
    (the lowest number when the commit heads several)."""
    return CommentEvent(
        repo=event.repo,
        pr_number=min(event.pr_numbers),
        comment_id=0,
        body="",
        author=event.sender,
        author_is_bot=False,
        command=command,
        check_run_id=click_id,
    )


def _refused_rerun(
    event: CheckRunRerun | CheckSuiteRerun, app_id: int | None, what: str
) -> IgnoredEvent | None:
    """Why a re-run click is not this runner's to act on; None when it is (who clicked
    is then authorised like a commenter by the PR flow)."""
    if app_id is None or event.app_id != app_id:
        return IgnoredEvent(f"{what} of another app")
    if event.sender_is_bot:
        return IgnoredEvent("re-run by a bot")
    if not event.pr_numbers:
        # GitHub lists no pull request for a fork's head commit, nor once it is closed.
        return IgnoredEvent(f"{what} on no open pull request of this repository")
    return None


def _ping(payload: dict) -> PingEvent:
    repository = optional_obj(payload, "repository", "")
    hook_id = payload.get("hook_id")
    zen = payload.get("zen")
    return PingEvent(
        repo=_repo(repository, "repository") if repository is not None else None,
        hook_id=hook_id if isinstance(hook_id, int) and not isinstance(hook_id, bool) else None,
        zen=zen if isinstance(zen, str) else "",
    )


def _installation(payload: dict) -> int | None:
    """`installation.id`: present when the webhook is a GitHub App's, absent for a repo hook."""
    installation = optional_obj(payload, "installation", "")
    if installation is None:
        return None
    return integer(installation, "id", "installation")


def _repo(data: dict, path: str, installation_id: int | None = None) -> RepoRef:
    html_url = string(data, "html_url", path)
    if url_host(html_url) is None:
        raise MalformedEvent(f"{path}.html_url: not an http(s) URL: {html_url[:100]!r}")
    full_name = string(data, "full_name", path)
    if full_name.count("/") != 1 or full_name.startswith("/") or full_name.endswith("/"):
        raise MalformedEvent(f"{path}.full_name: expected 'owner/name', got {full_name[:100]!r}")
    return RepoRef(
        forge="github",
        full_name=full_name,
        clone_url=string(data, "clone_url", path),
        html_url=html_url,
        default_branch=string(data, "default_branch", path),
        installation_id=installation_id,
    )


def _login(data: dict, key: str, path: str) -> str:
    return string(obj(data, key, path), "login", at(path, key))
