"""GitHub webhook payloads → forge-neutral events.

Called after the signature was verified, with the `X-GitHub-Event` header and the
decoded JSON. Events and actions we do not act on become `IgnoredEvent` before the
rest of the payload is inspected, so a new GitHub field or action never breaks the
hook; for the events we do act on, every field read is type-checked and a missing
or mistyped one raises `MalformedEvent` naming its path. A comment's body is parsed
into its command here, the one time it is read.
"""

from __future__ import annotations

from runner.events.comment_parser import parse_comment
from runner.events.model import (
    CommentEvent,
    Event,
    IgnoredEvent,
    MalformedEvent,
    PingEvent,
    PullRequestAction,
    PullRequestEvent,
    PullRequestRef,
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
    return IgnoredEvent(f"GitHub event {event_name!r} is not handled")


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
