"""GitHub-shaped JSON for tests: webhook deliveries and the objects inside them.

The same renderers (``user_json``, ``repo_json``, ``pull_json``, ``issue_json``,
``comment_json``) produce both webhook payloads here and REST responses in
``fake_github.py``: GitHub embeds the very same object shapes in both, so one
source keeps the runner's webhook parser and its PyGithub calls seeing
consistent data. Field names and nesting follow GitHub's published examples
(``@octokit/webhooks-examples``); the values are synthetic.

Usage::

    repo = Repo("acme/infra", clone_url="file:///tmp/infra.git")
    pr = Pull(number=7, head_sha="a" * 40, head_ref="feature", base_sha="b" * 40, user="alice")
    payload = pull_request_event("opened", repo, pr, sender="alice")
    response = post_delivery(url, "pull_request", payload, secret="s3cret")
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

Json = dict[str, Any]

# Webhook actions whose pull request must still be open; catching a stale
# snapshot here beats debugging a runner that "ignored" an impossible event.
_OPEN_PR_ACTIONS = frozenset({"opened", "reopened", "synchronize", "ready_for_review"})

# Sub-resource URL fields GitHub puts on every repository object; generated
# from one table so the list stays in one place.
_REPO_URL_TEMPLATES = {
    "collaborators_url": "collaborators{/collaborator}",
    "comments_url": "comments{/number}",
    "commits_url": "commits{/sha}",
    "compare_url": "compare/{base}...{head}",
    "contents_url": "contents/{+path}",
    "hooks_url": "hooks",
    "issue_comment_url": "issues/comments{/number}",
    "issues_url": "issues{/number}",
    "labels_url": "labels{/name}",
    "pulls_url": "pulls{/number}",
    "statuses_url": "statuses/{sha}",
}

_USER_URL_TEMPLATES = {
    "followers_url": "followers",
    "following_url": "following{/other_user}",
    "gists_url": "gists{/gist_id}",
    "starred_url": "starred{/owner}{/repo}",
    "subscriptions_url": "subscriptions",
    "organizations_url": "orgs",
    "repos_url": "repos",
    "events_url": "events{/privacy}",
    "received_events_url": "received_events",
}


def iso_now() -> str:
    """Current UTC time in GitHub's timestamp format (second precision, ``Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stable_id(kind: str, key: object) -> int:
    """A deterministic positive id; ``hash()`` is salted per process, crc32 is not."""
    return zlib.crc32(f"{kind}:{key}".encode()) or 1


def node_id(kind: str, numeric_id: int) -> str:
    """An opaque GraphQL-style node id; only its presence and stability matter."""
    return base64.b64encode(f"{kind}{numeric_id}".encode()).decode()


def fake_sha(*parts: object) -> str:
    """A 40-hex git-like sha derived from ``parts`` (for blobs and synthetic merges)."""
    return hashlib.sha1(":".join(map(str, parts)).encode()).hexdigest()


@dataclass(frozen=True)
class Hosts:
    """Where URLs in rendered JSON point: the REST API root and the web UI root."""

    api: str = "https://api.github.com"
    web: str = "https://github.com"


GITHUB_COM = Hosts()


@dataclass(frozen=True)
class Repo:
    """A repository as the runner sees it; ``clone_url`` is usually a ``file://`` bare repo."""

    full_name: str
    clone_url: str
    default_branch: str = "main"
    private: bool = False
    fork: bool = False
    owner_type: str = "User"

    @property
    def owner(self) -> str:
        return self.full_name.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.full_name.split("/", 1)[1]

    @property
    def id(self) -> int:
        return stable_id("repo", self.full_name)


@dataclass(frozen=True)
class PullFile:
    """One entry of ``GET /pulls/{n}/files``."""

    filename: str
    status: str = "modified"
    additions: int = 1
    deletions: int = 0
    patch: str | None = None
    previous_filename: str | None = None


@dataclass(frozen=True)
class Pull:
    """A pull request snapshot; ``head_repo`` is ``None`` unless the PR comes from a fork.

    ``head_repo_deleted``: the head repository (a fork) was deleted after the PR was
    opened; GitHub then renders ``head.repo`` as ``null``.
    """

    number: int
    head_sha: str
    head_ref: str
    base_sha: str
    base_ref: str = "main"
    user: str = "octocat"
    title: str = "Update infrastructure"
    body: str = ""
    draft: bool = False
    state: str = "open"
    merged: bool = False
    merge_commit_sha: str | None = None
    merged_by: str | None = None
    mergeable: bool | None = True
    mergeable_state: str = "clean"
    head_repo: Repo | None = None
    head_repo_deleted: bool = False
    labels: tuple[str, ...] = ()
    files: tuple[PullFile, ...] = ()
    created_at: str = field(default_factory=iso_now)
    updated_at: str = field(default_factory=iso_now)
    closed_at: str | None = None
    merged_at: str | None = None


@dataclass(frozen=True)
class Issue:
    """A plain issue (the runner's drift reports), not a pull request."""

    number: int
    title: str
    body: str = ""
    user: str = "octocat"
    state: str = "open"
    state_reason: str | None = None
    labels: tuple[str, ...] = ()
    created_at: str = field(default_factory=iso_now)
    updated_at: str = field(default_factory=iso_now)
    closed_at: str | None = None


@dataclass(frozen=True)
class Comment:
    """An issue/PR conversation comment (GitHub's "issue comment")."""

    id: int
    issue_number: int
    body: str
    user: str
    created_at: str = field(default_factory=iso_now)
    updated_at: str = field(default_factory=iso_now)


def user_type(login: str) -> str:
    """GitHub marks App accounts ``Bot``; their logins end in ``[bot]``."""
    return "Bot" if login.endswith("[bot]") else "User"


def user_json(login: str, hosts: Hosts = GITHUB_COM, type_: str | None = None) -> Json:
    """A "simple user" object as embedded in every GitHub resource."""
    uid = stable_id("user", login)
    api = f"{hosts.api}/users/{login}"
    return {
        "login": login,
        "id": uid,
        "node_id": node_id("U", uid),
        "avatar_url": f"https://avatars.githubusercontent.com/u/{uid}?v=4",
        "gravatar_id": "",
        "url": api,
        "html_url": f"{hosts.web}/{login}",
        **{key: f"{api}/{suffix}" for key, suffix in _USER_URL_TEMPLATES.items()},
        "type": type_ or user_type(login),
        "site_admin": False,
    }


def repo_json(repo: Repo, hosts: Hosts = GITHUB_COM) -> Json:
    """A repository object (``repository`` in webhooks, ``GET /repos/{o}/{r}``)."""
    api = f"{hosts.api}/repos/{repo.full_name}"
    html = f"{hosts.web}/{repo.full_name}"
    return {
        "id": repo.id,
        "node_id": node_id("R", repo.id),
        "name": repo.name,
        "full_name": repo.full_name,
        "private": repo.private,
        "visibility": "private" if repo.private else "public",
        "owner": user_json(repo.owner, hosts, repo.owner_type),
        "html_url": html,
        "description": None,
        "fork": repo.fork,
        "url": api,
        **{key: f"{api}/{suffix}" for key, suffix in _REPO_URL_TEMPLATES.items()},
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z",
        "pushed_at": "2024-01-01T00:00:00Z",
        "git_url": f"git://{hosts.web.split('://', 1)[-1]}/{repo.full_name}.git",
        "ssh_url": f"git@{hosts.web.split('://', 1)[-1]}:{repo.full_name}.git",
        "clone_url": repo.clone_url,
        "svn_url": html,
        "homepage": None,
        "size": 0,
        "default_branch": repo.default_branch,
        "archived": False,
        "disabled": False,
        "has_issues": True,
        "open_issues_count": 0,
        "allow_merge_commit": True,
        "allow_squash_merge": True,
        "allow_rebase_merge": True,
        "delete_branch_on_merge": False,
    }


def label_json(repo: Repo, name: str, hosts: Hosts = GITHUB_COM) -> Json:
    """A label object; labels exist implicitly when an issue uses them."""
    lid = stable_id("label", f"{repo.full_name}:{name}")
    return {
        "id": lid,
        "node_id": node_id("LA", lid),
        "url": f"{hosts.api}/repos/{repo.full_name}/labels/{name}",
        "name": name,
        "color": "ededed",
        "default": False,
        "description": None,
    }


def _branch_json(
    repo: Repo, ref: str, sha: str, hosts: Hosts, *, repo_deleted: bool = False
) -> Json:
    """``pull_request.head`` / ``.base``: a ref of a repo at a commit.

    A deleted repository is ``null`` while ref, sha and owner stay, as on GitHub.
    """
    return {
        "label": f"{repo.owner}:{ref}",
        "ref": ref,
        "sha": sha,
        "user": user_json(repo.owner, hosts, repo.owner_type),
        "repo": None if repo_deleted else repo_json(repo, hosts),
    }


def pull_json(repo: Repo, pr: Pull, hosts: Hosts = GITHUB_COM, *, comments: int = 0) -> Json:
    """A full pull request object (webhook ``pull_request`` and ``GET /pulls/{n}``)."""
    pid = stable_id("pull", f"{repo.full_name}#{pr.number}")
    api = f"{hosts.api}/repos/{repo.full_name}"
    html = f"{hosts.web}/{repo.full_name}/pull/{pr.number}"
    links = {
        "self": f"{api}/pulls/{pr.number}",
        "html": html,
        "issue": f"{api}/issues/{pr.number}",
        "comments": f"{api}/issues/{pr.number}/comments",
        "review_comments": f"{api}/pulls/{pr.number}/comments",
        "commits": f"{api}/pulls/{pr.number}/commits",
        "statuses": f"{api}/statuses/{pr.head_sha}",
    }
    return {
        "url": links["self"],
        "id": pid,
        "node_id": node_id("PR", pid),
        "html_url": html,
        "diff_url": f"{html}.diff",
        "patch_url": f"{html}.patch",
        "issue_url": links["issue"],
        "commits_url": links["commits"],
        "review_comments_url": links["review_comments"],
        "review_comment_url": f"{api}/pulls/comments{{/number}}",
        "comments_url": links["comments"],
        "statuses_url": links["statuses"],
        "number": pr.number,
        "state": pr.state,
        "locked": False,
        "title": pr.title,
        "user": user_json(pr.user, hosts),
        "body": pr.body,
        "labels": [label_json(repo, name, hosts) for name in pr.labels],
        "milestone": None,
        "active_lock_reason": None,
        "created_at": pr.created_at,
        "updated_at": pr.updated_at,
        "closed_at": pr.closed_at,
        "merged_at": pr.merged_at,
        "merge_commit_sha": pr.merge_commit_sha,
        "assignee": None,
        "assignees": [],
        "requested_reviewers": [],
        "requested_teams": [],
        "head": _branch_json(
            pr.head_repo or repo,
            pr.head_ref,
            pr.head_sha,
            hosts,
            repo_deleted=pr.head_repo_deleted,
        ),
        "base": _branch_json(repo, pr.base_ref, pr.base_sha, hosts),
        "_links": {name: {"href": href} for name, href in links.items()},
        "author_association": "CONTRIBUTOR",
        "auto_merge": None,
        "draft": pr.draft,
        "merged": pr.merged,
        "mergeable": pr.mergeable,
        "rebaseable": pr.mergeable,
        "mergeable_state": pr.mergeable_state,
        "merged_by": user_json(pr.merged_by, hosts) if pr.merged_by else None,
        "comments": comments,
        "review_comments": 0,
        "maintainer_can_modify": False,
        "commits": 1,
        "additions": sum(f.additions for f in pr.files),
        "deletions": sum(f.deletions for f in pr.files),
        "changed_files": len(pr.files),
    }


def issue_of_pull(pr: Pull) -> Issue:
    """The issue view GitHub keeps for every pull request (same number, title, labels)."""
    return Issue(
        number=pr.number,
        title=pr.title,
        body=pr.body,
        user=pr.user,
        state=pr.state,
        labels=pr.labels,
        created_at=pr.created_at,
        updated_at=pr.updated_at,
        closed_at=pr.closed_at,
    )


def issue_json(
    repo: Repo,
    issue: Issue,
    hosts: Hosts = GITHUB_COM,
    *,
    is_pull_request: bool = False,
    merged_at: str | None = None,
    comments: int = 0,
    closed_by: str | None = None,
) -> Json:
    """An issue object; the ``pull_request`` key marks the issue view of a PR."""
    iid = stable_id("issue", f"{repo.full_name}#{issue.number}")
    api = f"{hosts.api}/repos/{repo.full_name}/issues/{issue.number}"
    data: Json = {
        "url": api,
        "repository_url": f"{hosts.api}/repos/{repo.full_name}",
        "labels_url": f"{api}/labels{{/name}}",
        "comments_url": f"{api}/comments",
        "events_url": f"{api}/events",
        "html_url": f"{hosts.web}/{repo.full_name}/issues/{issue.number}",
        "id": iid,
        "node_id": node_id("I", iid),
        "number": issue.number,
        "title": issue.title,
        "user": user_json(issue.user, hosts),
        "labels": [label_json(repo, name, hosts) for name in issue.labels],
        "state": issue.state,
        "state_reason": issue.state_reason,
        "locked": False,
        "assignee": None,
        "assignees": [],
        "milestone": None,
        "comments": comments,
        "created_at": issue.created_at,
        "updated_at": issue.updated_at,
        "closed_at": issue.closed_at,
        "closed_by": user_json(closed_by, hosts) if closed_by else None,
        "author_association": "CONTRIBUTOR",
        "active_lock_reason": None,
        "body": issue.body,
    }
    if is_pull_request:
        pr_html = f"{hosts.web}/{repo.full_name}/pull/{issue.number}"
        data["html_url"] = pr_html
        data["pull_request"] = {
            "url": f"{hosts.api}/repos/{repo.full_name}/pulls/{issue.number}",
            "html_url": pr_html,
            "diff_url": f"{pr_html}.diff",
            "patch_url": f"{pr_html}.patch",
            "merged_at": merged_at,
        }
    return data


def comment_json(
    repo: Repo,
    comment: Comment,
    hosts: Hosts = GITHUB_COM,
    *,
    user_type_: str | None = None,
    is_pull_request: bool = True,
) -> Json:
    """An issue comment (webhook ``comment`` and ``GET /issues/comments/{id}``)."""
    kind = "pull" if is_pull_request else "issues"
    return {
        "url": f"{hosts.api}/repos/{repo.full_name}/issues/comments/{comment.id}",
        "html_url": (
            f"{hosts.web}/{repo.full_name}/{kind}/{comment.issue_number}#issuecomment-{comment.id}"
        ),
        "issue_url": f"{hosts.api}/repos/{repo.full_name}/issues/{comment.issue_number}",
        "id": comment.id,
        "node_id": node_id("IC", comment.id),
        "user": user_json(comment.user, hosts, user_type_),
        "created_at": comment.created_at,
        "updated_at": comment.updated_at,
        "author_association": "CONTRIBUTOR",
        "body": comment.body,
        "performed_via_github_app": None,
    }


# --- webhook payloads -------------------------------------------------------


def pull_request_event(
    action: str,
    repo: Repo,
    pr: Pull,
    sender: str,
    *,
    before: str | None = None,
    hosts: Hosts = GITHUB_COM,
) -> Json:
    """A ``pull_request`` delivery; ``synchronize`` needs ``before`` (the previous head sha).

    Raises ``ValueError`` when the PR's state cannot produce ``action`` (e.g. ``closed``
    on an open PR), which is always a bug in the test, not in the runner.
    """
    if action == "closed" and pr.state != "closed":
        raise ValueError("a 'closed' event needs a closed PR (close or merge it first)")
    if action in _OPEN_PR_ACTIONS and pr.state != "open":
        raise ValueError(f"a {action!r} event needs an open PR")
    if action == "ready_for_review" and pr.draft:
        raise ValueError("a 'ready_for_review' event needs draft=False")
    payload: Json = {"action": action, "number": pr.number}
    if action == "synchronize":
        if before is None:
            raise ValueError("a 'synchronize' event needs before=<previous head sha>")
        payload |= {"before": before, "after": pr.head_sha}
    return payload | {
        "pull_request": pull_json(repo, pr, hosts),
        "repository": repo_json(repo, hosts),
        "sender": user_json(sender, hosts),
    }


def issue_comment_event(
    action: str,
    repo: Repo,
    issue_number: int,
    body: str,
    commenter: str,
    comment_id: int,
    is_pull_request: bool = True,
    *,
    commenter_type: str | None = None,
    issue_title: str = "Update infrastructure",
    issue_author: str = "octocat",
    issue_state: str = "open",
    previous_body: str | None = None,
    hosts: Hosts = GITHUB_COM,
) -> Json:
    """An ``issue_comment`` delivery (GitHub sends PR conversation comments as these).

    ``comment.user.type`` is ``Bot`` for ``*[bot]`` logins unless ``commenter_type`` says
    otherwise; ``edited`` deliveries carry ``changes.body.from`` when ``previous_body``
    is given.
    """
    issue = Issue(number=issue_number, title=issue_title, user=issue_author, state=issue_state)
    comment = Comment(id=comment_id, issue_number=issue_number, body=body, user=commenter)
    payload: Json = {"action": action}
    if previous_body is not None:
        payload["changes"] = {"body": {"from": previous_body}}
    return payload | {
        "issue": issue_json(repo, issue, hosts, is_pull_request=is_pull_request),
        "comment": comment_json(
            repo, comment, hosts, user_type_=commenter_type, is_pull_request=is_pull_request
        ),
        "repository": repo_json(repo, hosts),
        "sender": user_json(commenter, hosts, commenter_type),
    }


def ping_event(
    repo: Repo | None = None,
    *,
    hook_id: int = 1,
    events: Iterable[str] = ("pull_request", "issue_comment"),
    config_url: str = "https://gitops-runner.example/events",
    sender: str = "octocat",
    hosts: Hosts = GITHUB_COM,
) -> Json:
    """The ``ping`` GitHub sends when a webhook is created (repo hooks carry ``repository``)."""
    hooks_api = f"{hosts.api}/repos/{repo.full_name}/hooks" if repo else f"{hosts.api}/hooks"
    payload: Json = {
        "zen": "Keep it logically awesome.",
        "hook_id": hook_id,
        "hook": {
            "type": "Repository" if repo else "Organization",
            "id": hook_id,
            "name": "web",
            "active": True,
            "events": list(events),
            "config": {"content_type": "json", "url": config_url, "insecure_ssl": "0"},
            "created_at": "2024-01-01T00:00:00Z",
            "updated_at": "2024-01-01T00:00:00Z",
            "url": f"{hooks_api}/{hook_id}",
            "test_url": f"{hooks_api}/{hook_id}/test",
            "ping_url": f"{hooks_api}/{hook_id}/pings",
            "deliveries_url": f"{hooks_api}/{hook_id}/deliveries",
            "last_response": {"code": None, "status": "unused", "message": None},
        },
    }
    if repo is not None:
        payload["repository"] = repo_json(repo, hosts)
    return payload | {"sender": user_json(sender, hosts)}


def push_event(
    repo: Repo,
    ref: str,
    before: str,
    after: str,
    sender: str,
    *,
    deleted: bool = False,
    hosts: Hosts = GITHUB_COM,
) -> Json:
    """A ``push`` delivery (``ref`` like ``refs/heads/main``); commits are left out,
    as GitHub does beyond 20 of them: the runner reads only the ref and the new head."""
    return {
        "ref": ref,
        "before": before,
        "after": "0" * 40 if deleted else after,
        "created": False,
        "deleted": deleted,
        "forced": False,
        "base_ref": None,
        "compare": f"{hosts.web}/{repo.full_name}/compare/{before[:12]}...{after[:12]}",
        "commits": [],
        "head_commit": None,
        "repository": repo_json(repo, hosts),
        "pusher": {"name": sender, "email": f"{sender}@example.com"},
        "sender": user_json(sender, hosts),
    }


# --- signing and delivery ---------------------------------------------------


def encode(payload: Mapping[str, Any]) -> bytes:
    """Serialise a payload the way it goes on the wire; sign exactly these bytes."""
    return json.dumps(payload, separators=(",", ":")).encode()


def sign(body: bytes, secret: str) -> str:
    """``X-Hub-Signature-256`` value: HMAC-SHA256 of the raw body, hex, ``sha256=`` prefix."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery_headers(
    event: str, body: bytes, secret: str | None, delivery_id: str | None = None
) -> dict[str, str]:
    """Headers GitHub sends with a delivery; no signature headers when ``secret`` is None.

    The legacy SHA-1 ``X-Hub-Signature`` is included too because GitHub still sends it,
    so a runner that (wrongly) prefers it is exercised as well.
    """
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/044aadd",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": "1",
        "X-GitHub-Hook-Installation-Target-Type": "repository",
        "X-GitHub-Hook-Installation-Target-ID": "1",
    }
    if secret is not None:
        headers["X-Hub-Signature-256"] = sign(body, secret)
        headers["X-Hub-Signature"] = (
            "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
        )
    return headers


def build_delivery(
    event: str, payload: Mapping[str, Any], secret: str | None, delivery_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of one delivery, for a Flask test client or a raw HTTP post."""
    body = encode(payload)
    return body, delivery_headers(event, body, secret, delivery_id)


def post_delivery(
    url: str,
    event: str,
    payload: Mapping[str, Any],
    secret: str | None,
    *,
    delivery_id: str | None = None,
    timeout: float = 30,
) -> requests.Response:
    """POST a signed delivery to a running webhook endpoint, as GitHub's Hookshot would."""
    body, headers = build_delivery(event, payload, secret, delivery_id)
    return requests.post(url, data=body, headers=headers, timeout=timeout)
