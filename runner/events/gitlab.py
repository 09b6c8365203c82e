"""GitLab webhook payloads → forge-neutral events.

Called after `X-Gitlab-Token` was checked, with the `X-Gitlab-Event` header and the
decoded JSON (GitLab's "Webhook events" page documents the shapes). As for GitHub
(`events/github.py`): events and actions the runner does not act on become
`IgnoredEvent` before anything else is read, so GitLab never sees a 4xx for them
(it disables a hook after repeated failures); the fields of the events it acts on are
type-checked (`events/payload.py`); a note's body is parsed into its command here, once.

A merge request is a fork's when its source project is not its target project.
"""

from __future__ import annotations

import re

from runner.events.comment_parser import parse_comment
from runner.events.model import (
    BRANCH_REF_PREFIX,
    CommentEvent,
    Event,
    IgnoredEvent,
    MalformedEvent,
    PullRequestAction,
    PullRequestEvent,
    PullRequestRef,
    PushEvent,
    RepoRef,
    url_host,
)
from runner.events.payload import (
    at,
    integer,
    is_json_object,
    obj,
    optional_boolean,
    optional_obj,
    optional_string,
    string,
)

MERGE_REQUEST_HOOK = "Merge Request Hook"
NOTE_HOOK = "Note Hook"
PUSH_HOOK = "Push Hook"

# Merge request actions → the PR flow's; "update" is decided by `_update_action`.
_MR_ACTIONS: dict[str, PullRequestAction] = {
    "open": "opened",
    "reopen": "opened",  # planned afresh, like a new one
    "close": "closed",
    "merge": "closed",
}
# Project and group access tokens act as bot users named like `project_42_bot_1a2b…`.
_BOT_USERNAME = re.compile(r"^(project|group)_\d+_bot(_[0-9a-f]+)?$")


def parse_gitlab_event(event_name: str, payload: dict) -> Event:
    """Map one GitLab delivery onto an Event; raise MalformedEvent on a bad payload.

    System hooks (an instance-wide hook, `X-Gitlab-Event: System Hook`) are ignored even
    when they carry a merge request: the runner is configured per project or group.
    """
    payload = is_json_object(payload)
    if event_name == MERGE_REQUEST_HOOK:
        return _merge_request(payload)
    if event_name == NOTE_HOOK:
        return _note(payload)
    if event_name == PUSH_HOOK:
        return _push(payload)
    return IgnoredEvent(f"GitLab event {event_name!r} is not handled")


def _push(payload: dict) -> Event:
    """A branch push (tag pushes come as `Tag Push Hook`; a deletion has no new head)."""
    ref = string(payload, "ref", "")
    if not ref.startswith(BRANCH_REF_PREFIX):
        return IgnoredEvent(f"push to {ref[:100]!r}, not a branch")
    after = string(payload, "after", "")
    if set(after) == {"0"}:
        return IgnoredEvent("branch deleted")
    return PushEvent(
        repo=_repo(obj(payload, "project", ""), "project"),
        branch=ref.removeprefix(BRANCH_REF_PREFIX),
        after=after,
        sender=string(payload, "user_username", ""),
    )


def _merge_request(payload: dict) -> Event:
    attributes = obj(payload, "object_attributes", "")
    action = _action(attributes, payload)
    if action is None:
        return IgnoredEvent(
            f"merge request action {attributes.get('action')!r} without a push is not handled"
        )
    repo = _repo(obj(payload, "project", ""), "project")
    merged = string(attributes, "action", "object_attributes") == "merge"
    return PullRequestEvent(
        repo=repo,
        pr=_mr_ref(attributes, _username(payload)),
        action=action,
        merged=merged,
        merge_commit_sha=_merged_commit(attributes) if merged else None,
        sender=_username(payload),
    )


def _action(attributes: dict, payload: dict) -> PullRequestAction | None:
    action = attributes.get("action")
    if action == "update":
        return _update_action(attributes, payload)
    return _MR_ACTIONS.get(action) if isinstance(action, str) else None


def _update_action(attributes: dict, payload: dict) -> PullRequestAction | None:
    """An update is a push only when GitLab sends `oldrev`; a title or label edit is not.

    Marking a draft ready is GitLab's `ready_for_review`: `changes.draft` goes true → false.
    """
    if optional_string(attributes, "oldrev", "object_attributes"):
        return "updated"
    changes = optional_obj(payload, "changes", "") or {}
    draft = optional_obj(changes, "draft", "changes") or {}
    if draft.get("previous") is True and draft.get("current") is False:
        return "ready"
    return None


def _mr_ref(attributes: dict, actor: str) -> PullRequestRef:
    path = "object_attributes"
    source = optional_obj(attributes, "source", path)
    last_commit = obj(attributes, "last_commit", path)
    return PullRequestRef(
        number=integer(attributes, "iid", path),
        html_url=string(attributes, "url", path),
        # The hook names the author by id only; the flow reads the live merge request
        # (with its author) before deciding anything, so the actor stands in here.
        author=actor,
        head_sha=string(last_commit, "id", at(path, "last_commit")),
        head_ref=string(attributes, "source_branch", path),
        base_ref=string(attributes, "target_branch", path),
        # The hook does not carry the target branch's commit; the flow takes it from
        # the live merge request (`diff_refs`).
        base_sha="",
        head_repo_full_name=(
            string(source, "path_with_namespace", at(path, "source")) if source else None
        ),
        is_fork=integer(attributes, "source_project_id", path)
        != integer(attributes, "target_project_id", path),
        is_draft=optional_boolean(
            attributes, "draft", path, optional_boolean(attributes, "work_in_progress", path, False)
        ),
    )


def _merged_commit(attributes: dict) -> str:
    """What the target branch got: the merge commit, a squash commit, or (fast-forward
    merges have neither) the source branch's head itself."""
    for key in ("merge_commit_sha", "squash_commit_sha"):
        sha = optional_string(attributes, key, "object_attributes")
        if sha:
            return sha
    return string(obj(attributes, "last_commit", "object_attributes"), "id", "last_commit")


def _note(payload: dict) -> Event:
    note = obj(payload, "object_attributes", "")
    if note.get("noteable_type") != "MergeRequest":
        return IgnoredEvent("comment on something other than a merge request")
    # Older GitLab versions send no action; only a new note may run a command: an
    # edited old "apply" would apply a newer plan.
    if note.get("action", "create") != "create":
        return IgnoredEvent(f"note action {note.get('action')!r} is not handled")
    if note.get("system") is True:
        return IgnoredEvent("system note")
    author = _username(payload)
    body = string(note, "note", "object_attributes")
    return CommentEvent(
        repo=_repo(obj(payload, "project", ""), "project"),
        pr_number=integer(obj(payload, "merge_request", ""), "iid", "merge_request"),
        comment_id=integer(note, "id", "object_attributes"),
        body=body,
        author=author,
        author_is_bot=_BOT_USERNAME.match(author) is not None,
        command=parse_comment(body),
    )


def _repo(data: dict, path: str) -> RepoRef:
    web_url = string(data, "web_url", path)
    if url_host(web_url) is None:
        raise MalformedEvent(f"{path}.web_url: not an http(s) URL: {web_url[:100]!r}")
    full_name = string(data, "path_with_namespace", path)
    # Subgroups nest: `group/sub/infra` has at least one slash and no empty part.
    if "/" not in full_name or "" in full_name.split("/"):
        raise MalformedEvent(
            f"{path}.path_with_namespace: expected 'group/name', got {full_name[:100]!r}"
        )
    return RepoRef(
        forge="gitlab",
        full_name=full_name,
        clone_url=string(data, "git_http_url", path),
        html_url=web_url,
        default_branch=string(data, "default_branch", path),
    )


def _username(payload: dict) -> str:
    return string(obj(payload, "user", ""), "username", "user")
