"""GitLab-shaped JSON for tests: webhook deliveries and the objects inside them.

Field names and nesting follow GitLab's "Webhook events" page (Merge request events,
Comment events) and its REST API pages; values are synthetic. The same `project_json`
is embedded in hooks and served by `fake_gitlab.py`, so the runner's parser and its
python-gitlab calls see one project.

Usage::

    project = Project(1, "acme/infra", clone_url="file:///tmp/infra.git")
    mr = MergeRequest(iid=1, project_id=1, source_project_id=1, ...)
    payload = merge_request_hook("open", project, mr, user="alice", web=fake.url)
    post_gitlab_delivery(url, MERGE_REQUEST_HOOK, payload, token="s3cret")
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from tests.support.github_payloads import stable_id

Json = dict[str, Any]

MERGE_REQUEST_HOOK = "Merge Request Hook"
NOTE_HOOK = "Note Hook"


def iso_now() -> str:
    """GitLab's timestamps: UTC with milliseconds (`2024-05-01T10:00:00.123Z`)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Project:
    """A GitLab project; `clone_url` (served as `git_http_url`) is usually a file:// repo."""

    id: int
    path_with_namespace: str
    clone_url: str
    default_branch: str = "main"

    @property
    def name(self) -> str:
        return self.path_with_namespace.rsplit("/", 1)[1]


@dataclass(frozen=True)
class MergeRequest:
    """A merge request as GitLab keeps it; `state` is opened|closed|merged."""

    id: int
    iid: int
    project_id: int
    source_project_id: int
    author: str
    sha: str
    source_branch: str
    target_branch: str
    start_sha: str
    state: str = "opened"
    draft: bool = False
    title: str = "Update infrastructure"
    detailed_merge_status: str = "mergeable"
    merge_commit_sha: str | None = None
    created_at: str = field(default_factory=iso_now)


def user_json(username: str, web: str) -> Json:
    return {
        "id": stable_id("user", username),
        "username": username,
        "name": username.title(),
        "state": "active",
        "avatar_url": f"{web}/uploads/{username}.png",
        "web_url": f"{web}/{username}",
    }


def project_json(project: Project, web: str) -> Json:
    """The project object hooks embed (`project`, `object_attributes.source`/`target`)."""
    web_url = f"{web}/{project.path_with_namespace}"
    return {
        "id": project.id,
        "name": project.name,
        "description": "",
        "web_url": web_url,
        "avatar_url": None,
        "git_ssh_url": f"git@127.0.0.1:{project.path_with_namespace}.git",
        "git_http_url": project.clone_url,
        "namespace": project.path_with_namespace.rsplit("/", 1)[0],
        "visibility_level": 0,
        "path_with_namespace": project.path_with_namespace,
        "default_branch": project.default_branch,
        "ci_config_path": None,
        "homepage": web_url,
        "url": project.clone_url,
        "ssh_url": f"git@127.0.0.1:{project.path_with_namespace}.git",
        "http_url": project.clone_url,
    }


def mr_web_url(project: Project, mr: MergeRequest, web: str) -> str:
    return f"{web}/{project.path_with_namespace}/-/merge_requests/{mr.iid}"


def _mr_attributes(project: Project, source: Project, mr: MergeRequest, web: str) -> Json:
    """`object_attributes` of a Merge Request Hook, and `merge_request` of a Note Hook."""
    return {
        "id": mr.id,
        "iid": mr.iid,
        "target_branch": mr.target_branch,
        "source_branch": mr.source_branch,
        "source_project_id": mr.source_project_id,
        "author_id": stable_id("user", mr.author),
        "assignee_ids": [],
        "reviewer_ids": [],
        "title": mr.title,
        "created_at": mr.created_at,
        "updated_at": iso_now(),
        "state_id": {"opened": 1, "closed": 2, "merged": 3}[mr.state],
        "state": mr.state,
        "blocking_discussions_resolved": True,
        "work_in_progress": mr.draft,
        "draft": mr.draft,
        "first_contribution": False,
        "merge_status": "can_be_merged",
        "detailed_merge_status": mr.detailed_merge_status,
        "target_project_id": mr.project_id,
        "description": "",
        "merge_commit_sha": mr.merge_commit_sha,
        "url": mr_web_url(project, mr, web),
        "source": project_json(source, web),
        "target": project_json(project, web),
        "last_commit": {
            "id": mr.sha,
            "message": "change",
            "title": "change",
            "timestamp": mr.created_at,
            "url": f"{web}/{source.path_with_namespace}/-/commit/{mr.sha}",
            "author": {"name": mr.author, "email": f"{mr.author}@example.com"},
        },
        "labels": [],
    }


def merge_request_hook(
    action: str,
    project: Project,
    mr: MergeRequest,
    *,
    user: str,
    web: str,
    source: Project | None = None,
    oldrev: str | None = None,
    changes: Json | None = None,
) -> Json:
    """A `Merge Request Hook` body; `oldrev` only on an update that moved the branch."""
    attributes = _mr_attributes(project, source or project, mr, web) | {"action": action}
    if oldrev is not None:
        attributes["oldrev"] = oldrev
    return {
        "object_kind": "merge_request",
        "event_type": "merge_request",
        "user": user_json(user, web),
        "project": project_json(project, web),
        "repository": {
            "name": project.name,
            "url": project.clone_url,
            "description": "",
            "homepage": f"{web}/{project.path_with_namespace}",
        },
        "object_attributes": attributes,
        "labels": [],
        "changes": changes or {},
        "assignees": [],
        "reviewers": [],
    }


def note_hook(
    project: Project,
    mr: MergeRequest,
    *,
    note_id: int,
    body: str,
    user: str,
    web: str,
    source: Project | None = None,
    action: str = "create",
) -> Json:
    """A `Note Hook` body for a comment on a merge request."""
    url = mr_web_url(project, mr, web)
    return {
        "object_kind": "note",
        "event_type": "note",
        "user": user_json(user, web),
        "project_id": project.id,
        "project": project_json(project, web),
        "repository": {"name": project.name, "url": project.clone_url, "description": ""},
        "object_attributes": {
            "id": note_id,
            "note": body,
            "noteable_type": "MergeRequest",
            "author_id": stable_id("user", user),
            "created_at": iso_now(),
            "updated_at": iso_now(),
            "project_id": project.id,
            "attachment": None,
            "line_code": None,
            "commit_id": "",
            "noteable_id": mr.id,
            "system": False,
            "st_diff": None,
            "action": action,
            "url": f"{url}#note_{note_id}",
        },
        "merge_request": _mr_attributes(project, source or project, mr, web),
    }


def push_hook(project: Project, ref: str, before: str, after: str, user: str, *, web: str) -> Json:
    """A `Push Hook` body (GitLab's "Push events"); `after` all zeros is a deletion."""
    return {
        "object_kind": "push",
        "event_name": "push",
        "before": before,
        "after": after,
        "ref": ref,
        "ref_protected": True,
        "checkout_sha": after,
        "user_id": stable_id("user", user),
        "user_name": user.title(),
        "user_username": user,
        "user_email": "",
        "project_id": project.id,
        "project": project_json(project, web),
        "repository": {"name": project.name, "url": project.clone_url, "description": ""},
        "commits": [],
        "total_commits_count": 0,
    }


def post_gitlab_delivery(
    url: str,
    event: str,
    payload: Json,
    token: str | None,
    *,
    event_uuid: str | None = None,
    idempotency_key: str | None = None,
) -> requests.Response:
    """POST a delivery as GitLab does: `X-Gitlab-Event`, `X-Gitlab-Event-UUID`, the token."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitLab/17.6.0",
        "X-Gitlab-Event": event,
        "X-Gitlab-Event-UUID": event_uuid or str(uuid.uuid4()),
        "X-Gitlab-Webhook-UUID": str(uuid.uuid4()),
        "X-Gitlab-Instance": url.rsplit("/", 1)[0],
    }
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    if token is not None:
        headers["X-Gitlab-Token"] = token
    return requests.post(url, json=payload, headers=headers, timeout=30)
