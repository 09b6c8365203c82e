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

_PR_ACTIONS: dict[str, PullRequestAction] = {
    "opened": "opened",
    "reopened": "opened",  # a reopened PR is planned afresh, like a new one
    "synchronize": "updated",
    "ready_for_review": "ready",
    "closed": "closed",
}


def parse_github_event(event_name: str, payload: dict) -> Event:
    """Map one GitHub delivery onto an Event; raise MalformedEvent on a bad payload."""
    if not isinstance(payload, dict):
        raise MalformedEvent(f"payload: expected a JSON object, got {_type(payload)}")
    if event_name == "pull_request":
        return _pull_request(payload)
    if event_name == "issue_comment":
        return _issue_comment(payload)
    if event_name == "ping":
        return _ping(payload)
    return IgnoredEvent(f"GitHub event {event_name!r} is not handled")


def _pull_request(payload: dict) -> Event:
    action = _str(payload, "action", "")
    mapped = _PR_ACTIONS.get(action)
    if mapped is None:
        return IgnoredEvent(f"pull_request action {action!r} is not handled")
    repo = _repo(_obj(payload, "repository", ""), "repository")
    pr = _obj(payload, "pull_request", "")
    merged = mapped == "closed" and _bool(pr, "merged", "pull_request")
    return PullRequestEvent(
        repo=repo,
        pr=_pr_ref(pr, repo),
        action=mapped,
        merged=merged,
        # GitHub also fills merge_commit_sha with a test merge on open PRs; only a real
        # merge commit may be applied.
        merge_commit_sha=_str(pr, "merge_commit_sha", "pull_request") if merged else None,
        sender=_login(payload, "sender", ""),
    )


def _pr_ref(pr: dict, repo: RepoRef) -> PullRequestRef:
    head = _obj(pr, "head", "pull_request")
    base = _obj(pr, "base", "pull_request")
    head_repo = _optional_obj(head, "repo", "pull_request.head")
    head_full_name = (
        _str(head_repo, "full_name", "pull_request.head.repo") if head_repo is not None else None
    )
    draft = pr.get("draft", False)  # absent on older GitHub Enterprise versions
    if not isinstance(draft, bool):
        raise MalformedEvent(f"pull_request.draft: expected a boolean, got {_type(draft)}")
    return PullRequestRef(
        number=_int(pr, "number", "pull_request"),
        html_url=_str(pr, "html_url", "pull_request"),
        author=_login(pr, "user", "pull_request"),
        head_sha=_str(head, "sha", "pull_request.head"),
        head_ref=_str(head, "ref", "pull_request.head"),
        base_ref=_str(base, "ref", "pull_request.base"),
        base_sha=_str(base, "sha", "pull_request.base"),
        head_repo_full_name=head_full_name,
        # GitHub repository names are case-insensitive.
        is_fork=head_full_name is None or head_full_name.casefold() != repo.full_name.casefold(),
        is_draft=draft,
    )


def _issue_comment(payload: dict) -> Event:
    action = _str(payload, "action", "")
    if action != "created":
        # Editing a comment must not re-run it: an old "apply" would apply a newer plan.
        return IgnoredEvent(f"issue_comment action {action!r} is not handled")
    issue = _obj(payload, "issue", "")
    if issue.get("pull_request") is None:
        return IgnoredEvent("comment on an issue, not on a pull request")
    comment = _obj(payload, "comment", "")
    user = _obj(comment, "user", "comment")
    login = _str(user, "login", "comment.user")
    body = _str(comment, "body", "comment")
    return CommentEvent(
        repo=_repo(_obj(payload, "repository", ""), "repository"),
        pr_number=_int(issue, "number", "issue"),
        comment_id=_int(comment, "id", "comment"),
        body=body,
        author=login,
        # GitHub App accounts have type "Bot" and a "[bot]" login suffix; either suffices.
        author_is_bot=user.get("type") == "Bot" or login.endswith("[bot]"),
        command=parse_comment(body),
    )


def _ping(payload: dict) -> PingEvent:
    repository = _optional_obj(payload, "repository", "")
    hook_id = payload.get("hook_id")
    zen = payload.get("zen")
    return PingEvent(
        repo=_repo(repository, "repository") if repository is not None else None,
        hook_id=hook_id if isinstance(hook_id, int) and not isinstance(hook_id, bool) else None,
        zen=zen if isinstance(zen, str) else "",
    )


def _repo(data: dict, path: str) -> RepoRef:
    html_url = _str(data, "html_url", path)
    if url_host(html_url) is None:
        raise MalformedEvent(f"{path}.html_url: not an http(s) URL: {html_url[:100]!r}")
    full_name = _str(data, "full_name", path)
    if full_name.count("/") != 1 or full_name.startswith("/") or full_name.endswith("/"):
        raise MalformedEvent(f"{path}.full_name: expected 'owner/name', got {full_name[:100]!r}")
    return RepoRef(
        forge="github",
        full_name=full_name,
        clone_url=_str(data, "clone_url", path),
        html_url=html_url,
        default_branch=_str(data, "default_branch", path),
    )


# --- typed access with the failing path in the message -------------------------------------


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _require(data: dict, key: str, path: str) -> Any:
    if key not in data:
        raise MalformedEvent(f"{_at(path, key)}: missing")
    return data[key]


def _obj(data: dict, key: str, path: str) -> dict:
    value = _require(data, key, path)
    if not isinstance(value, dict):
        raise MalformedEvent(f"{_at(path, key)}: expected an object, got {_type(value)}")
    return value


def _optional_obj(data: dict, key: str, path: str) -> dict | None:
    value = data.get(key)
    if value is not None and not isinstance(value, dict):
        raise MalformedEvent(f"{_at(path, key)}: expected an object or null, got {_type(value)}")
    return value


def _str(data: dict, key: str, path: str) -> str:
    value = _require(data, key, path)
    if not isinstance(value, str):
        raise MalformedEvent(f"{_at(path, key)}: expected a string, got {_type(value)}")
    return value


def _int(data: dict, key: str, path: str) -> int:
    value = _require(data, key, path)
    # bool is an int subclass; `true` is not a PR number.
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedEvent(f"{_at(path, key)}: expected an integer, got {_type(value)}")
    return value


def _bool(data: dict, key: str, path: str) -> bool:
    value = _require(data, key, path)
    if not isinstance(value, bool):
        raise MalformedEvent(f"{_at(path, key)}: expected a boolean, got {_type(value)}")
    return value


def _login(data: dict, key: str, path: str) -> str:
    return _str(_obj(data, key, path), "login", _at(path, key))
