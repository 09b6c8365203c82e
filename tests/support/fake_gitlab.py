"""A stateful fake of the GitLab REST API (v4), served over real HTTP for python-gitlab.

Like `fake_github.py`: the runner talks to GitLab only through python-gitlab, so the
fake serves the wire protocol (`PRIVATE-TOKEN`, URL-encoded project paths, JSON shapes,
`X-Next-Page`/`Link` pagination, `{"message": ...}` errors) on 127.0.0.1. Tests set
state up and read it through Python methods; one lock covers both sides.

GitLab behaviours the runner must cope with are reproduced: approvals are reset by a
push when the project says so, approving writes an "approved this merge request"
system note, each push adds a diff version, and posting a `pending` status over a
`pending` one is refused ("Cannot transition status").

Usage::

    with FakeGitLab(token="glpat-x", login="gitops-bot") as gl:
        gl.add_project("acme/infra", clone_url=f"file://{bare}")
        iid = gl.open_mr("acme/infra", sha=head, source_branch="feature", start_sha=base)
        ...
        assert "Plan" in gl.notes("acme/infra", iid)[-1].body
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from tests.support.gitlab_payloads import (
    Json,
    MergeRequest,
    Project,
    iso_now,
    mr_web_url,
    user_json,
)
from tests.support.local_server import ServedFake

API_PREFIX = "/api/v4"
# Route patterns: a project is one path segment (its id, or its URL-encoded path).
PROJECT = r"/projects/(?P<p>[^/]+)"
MR = PROJECT + r"/merge_requests/(?P<iid>\d+)"
COMMIT = PROJECT + r"/repository/commits/(?P<sha>[0-9a-f]{40})"
ACCESS_LEVELS = {"guest": 10, "planner": 15, "reporter": 20, "developer": 30, "maintainer": 40}
ACCESS_LEVELS["owner"] = 50
_STATUS_STATES = frozenset({"pending", "running", "success", "failed", "canceled", "skipped"})
_APPROVED_NOTE = "approved this merge request"


class ApiError(Exception):
    """Raised inside handlers; rendered as GitLab's `{"message": ...}` body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _not_found(what: str = "Not found") -> ApiError:
    return ApiError(404, f"404 {what}")


@dataclass(frozen=True)
class Note:
    id: int
    body: str
    author: str
    system: bool = False
    created_at: str = field(default_factory=iso_now)


@dataclass(frozen=True)
class Status:
    """A commit status; GitLab's `name` is GitHub's context."""

    id: int
    sha: str
    status: str
    name: str
    description: str | None
    target_url: str | None
    created_at: str = field(default_factory=iso_now)


@dataclass(frozen=True)
class Issue:
    iid: int
    title: str
    description: str
    author: str
    labels: tuple[str, ...] = ()
    state: str = "opened"
    notes: tuple[str, ...] = ()


@dataclass
class _ProjectState:
    project: Project
    members: dict[str, int] = field(default_factory=dict)
    mrs: dict[int, MergeRequest] = field(default_factory=dict)
    notes: dict[int, dict[int, Note]] = field(default_factory=dict)  # by MR iid, note id
    emoji: dict[int, list[tuple[str, str]]] = field(default_factory=dict)  # note id → (user, name)
    approvers: dict[int, list[str]] = field(default_factory=dict)
    versions: dict[int, list[tuple[str, str]]] = field(default_factory=dict)  # (at, sha)
    statuses: dict[str, list[Status]] = field(default_factory=dict)
    issues: dict[int, Issue] = field(default_factory=dict)
    reset_approvals_on_push: bool = True


class FakeGitLab(ServedFake):
    """In-memory GitLab with a real HTTP front; see the module docstring for usage."""

    def __init__(self, token: str = "glpat-test", login: str = "gitops-bot") -> None:
        super().__init__("fake-gitlab")
        self.token = token
        self.login = login
        self._lock = threading.RLock()
        self._ids = itertools.count(5_000_001)
        self._projects: dict[str, _ProjectState] = {}
        self._users: dict[str, int] = {}
        self.app = self._build_app()

    def wsgi_app(self) -> Any:
        return self.app

    # --- setup: projects, people, merge requests -------------------------------------

    def add_project(
        self, path: str, clone_url: str, default_branch: str = "main", *, project_id: int = 0
    ) -> Project:
        project = Project(project_id or next(self._ids), path, clone_url, default_branch)
        with self._lock:
            self._projects[path] = _ProjectState(project)
        return project

    def set_access(self, path: str, username: str, role: str) -> None:
        """Make `username` a member with `role` (guest..owner); unknown users have none."""
        with self._lock:
            self._user_id(username)
            self._state(path).members[username] = ACCESS_LEVELS[role]

    def open_mr(
        self,
        path: str,
        *,
        sha: str,
        source_branch: str,
        start_sha: str,
        author: str = "alice",
        source_project: Project | None = None,
    ) -> int:
        """Open a merge request (from `source_project`, a fork, when given); its iid."""
        with self._lock:
            state = self._state(path)
            iid = max(state.mrs, default=0) + 1
            state.mrs[iid] = MergeRequest(
                id=next(self._ids),
                iid=iid,
                project_id=state.project.id,
                source_project_id=(source_project or state.project).id,
                author=author,
                sha=sha,
                source_branch=source_branch,
                target_branch=state.project.default_branch,
                start_sha=start_sha,
            )
            state.notes[iid] = {}
            state.approvers[iid] = []
            state.versions[iid] = [(iso_now(), sha)]
            return iid

    def push(self, path: str, iid: int, sha: str) -> str:
        """Move the source branch; returns the previous head (the hook's `oldrev`)."""
        with self._lock:
            state = self._state(path)
            before = state.mrs[iid].sha
            state.mrs[iid] = dataclasses.replace(state.mrs[iid], sha=sha)
            state.versions[iid].append((iso_now(), sha))
            if state.reset_approvals_on_push:
                state.approvers[iid] = []
            return before

    def approve(self, path: str, iid: int, username: str) -> None:
        """`username` presses Approve: listed as approver, with GitLab's system note."""
        with self._lock:
            state = self._state(path)
            if username not in state.approvers[iid]:
                state.approvers[iid].append(username)
            self._add_note(state, iid, _APPROVED_NOTE, username, system=True)

    def add_note(self, path: str, iid: int, body: str, author: str) -> int:
        """A person's note on the merge request (the hook is sent by the test)."""
        with self._lock:
            return self._add_note(self._state(path), iid, body, author).id

    def merge(self, path: str, iid: int, merge_commit_sha: str) -> MergeRequest:
        with self._lock:
            return self._update_mr(path, iid, state="merged", merge_commit_sha=merge_commit_sha)

    def close(self, path: str, iid: int) -> MergeRequest:
        """Close without merging."""
        return self._update_mr(path, iid, state="closed")

    def set_merge_status(self, path: str, iid: int, detailed_merge_status: str) -> None:
        self._update_mr(path, iid, detailed_merge_status=detailed_merge_status)

    # --- inspection -------------------------------------------------------------------

    def project(self, path: str) -> Project:
        with self._lock:
            return self._state(path).project

    def mr(self, path: str, iid: int) -> MergeRequest:
        with self._lock:
            return self._state(path).mrs[iid]

    def notes(self, path: str, iid: int) -> list[Note]:
        """The people's and the runner's notes, oldest first (system notes left out)."""
        with self._lock:
            return [n for n in self._state(path).notes[iid].values() if not n.system]

    def emoji(self, path: str, note_id: int) -> list[str]:
        with self._lock:
            return [name for _, name in self._state(path).emoji.get(note_id, [])]

    def statuses(self, path: str, sha: str) -> dict[str, str]:
        """The latest state per status name."""
        with self._lock:
            return {s.name: s.status for s in self._state(path).statuses.get(sha, [])}

    def issues(self, path: str) -> list[Issue]:
        with self._lock:
            return list(self._state(path).issues.values())

    # --- state helpers ------------------------------------------------------------------

    def _state(self, path: str) -> _ProjectState:
        state = self._projects.get(path) or next(
            (s for s in self._projects.values() if str(s.project.id) == path), None
        )
        if state is None:
            raise _not_found("Project Not Found")
        return state

    def _user_id(self, username: str) -> int:
        return self._users.setdefault(username, next(self._ids))

    def _update_mr(self, path: str, iid: int, **changes: Any) -> MergeRequest:
        with self._lock:
            state = self._state(path)
            state.mrs[iid] = dataclasses.replace(state.mrs[iid], **changes)
            return state.mrs[iid]

    def _add_note(
        self, state: _ProjectState, iid: int, body: str, author: str, *, system: bool = False
    ) -> Note:
        note = Note(next(self._ids), body, author, system)
        state.notes[iid][note.id] = note
        return note

    def _mr_or_404(self, state: _ProjectState, iid: str) -> MergeRequest:
        mr = state.mrs.get(int(iid))
        if mr is None:
            raise _not_found()
        return mr

    # --- the HTTP side ------------------------------------------------------------------

    def _build_app(self) -> Flask:
        app = Flask("fake-gitlab")
        routes: list[tuple[str, str, Callable[..., Response]]] = [
            ("GET", r"/user", self._get_user),
            ("GET", r"/users", self._list_users),
            ("GET", PROJECT + r"/members/all/(?P<uid>\d+)", self._get_member),
            ("GET", MR, self._get_mr),
            ("GET", MR + r"/approvals", self._get_approvals),
            ("GET", MR + r"/versions", self._list_versions),
            ("GET", MR + r"/notes", self._list_notes),
            ("POST", MR + r"/notes", self._create_note),
            ("PUT", MR + r"/notes/(?P<nid>\d+)", self._edit_note),
            ("POST", MR + r"/notes/(?P<nid>\d+)/award_emoji", self._award),
            ("POST", PROJECT + r"/statuses/(?P<sha>[0-9a-f]{40})", self._post_status),
            ("GET", COMMIT + "/statuses", self._list_statuses),
            ("GET", PROJECT + r"/issues", self._list_issues),
            ("POST", PROJECT + r"/issues", self._create_issue),
            ("PUT", PROJECT + r"/issues/(?P<iid>\d+)", self._edit_issue),
            ("POST", PROJECT + r"/issues/(?P<iid>\d+)/notes", self._issue_note),
        ]  # fmt: skip
        table = [(method, re.compile(pattern), handler) for method, pattern, handler in routes]

        @app.route(f"{API_PREFIX}/<path:_rest>", methods=["GET", "POST", "PUT", "DELETE"])
        def dispatch(_rest: str) -> Response:
            return self._dispatch(table)

        return app

    def _dispatch(
        self, table: list[tuple[str, re.Pattern[str], Callable[..., Response]]]
    ) -> Response:
        # The raw path keeps `acme%2Finfra` one segment, as GitLab reads it.
        raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or request.path
        path = raw.split("?", 1)[0].removeprefix(API_PREFIX)
        try:
            if request.headers.get("PRIVATE-TOKEN") != self.token:
                raise ApiError(401, "401 Unauthorized")
            for method, pattern, handler in table:
                match = pattern.fullmatch(path)
                if match and method == request.method:
                    args = {k: unquote(v) for k, v in match.groupdict().items()}
                    with self._lock:
                        return handler(**args)
            raise _not_found("Not Found")
        except ApiError as error:
            return _json({"message": error.message}, error.status)
        except HTTPException as error:
            return _json({"message": f"{error.code} {error.name}"}, error.code or 500)

    # users and members

    def _get_user(self) -> Response:
        return _json(
            user_json(self.login, request.host_url.rstrip("/")) | {"id": self._user_id(self.login)}
        )

    def _list_users(self) -> Response:
        name = request.args.get("username", "")
        users = [
            user_json(login, _web()) | {"id": uid}
            for login, uid in self._users.items()
            if login.casefold() == name.casefold()
        ]
        return _paginate(users)

    def _get_member(self, p: str, uid: str) -> Response:
        state = self._state(p)
        login = next((name for name, i in self._users.items() if i == int(uid)), None)
        if login is None or login not in state.members:
            raise _not_found()
        body = user_json(login, _web()) | {"id": int(uid), "access_level": state.members[login]}
        return _json(body)

    # merge requests

    def _get_mr(self, p: str, iid: str) -> Response:
        state = self._state(p)
        return _json(self._mr_json(state, self._mr_or_404(state, iid)))

    def _mr_json(self, state: _ProjectState, mr: MergeRequest) -> Json:
        web = _web()
        return {
            "id": mr.id,
            "iid": mr.iid,
            "project_id": mr.project_id,
            "title": mr.title,
            "state": mr.state,
            "author": user_json(mr.author, web) | {"id": self._user_id(mr.author)},
            "source_branch": mr.source_branch,
            "target_branch": mr.target_branch,
            "source_project_id": mr.source_project_id,
            "target_project_id": mr.project_id,
            "draft": mr.draft,
            "work_in_progress": mr.draft,
            "merge_status": "can_be_merged",
            "detailed_merge_status": mr.detailed_merge_status,
            "sha": mr.sha,
            "merge_commit_sha": mr.merge_commit_sha,
            "squash_commit_sha": None,
            "web_url": mr_web_url(state.project, mr, web),
            "diff_refs": {"base_sha": mr.start_sha, "head_sha": mr.sha, "start_sha": mr.start_sha},
            "created_at": mr.created_at,
            "updated_at": iso_now(),
        }

    def _get_approvals(self, p: str, iid: str) -> Response:
        state = self._state(p)
        mr = self._mr_or_404(state, iid)
        approved_by = [{"user": user_json(u, _web())} for u in state.approvers[mr.iid]]
        return _json(
            {"id": mr.id, "iid": mr.iid, "approved": bool(approved_by), "approved_by": approved_by}
        )

    def _list_versions(self, p: str, iid: str) -> Response:
        state = self._state(p)
        mr = self._mr_or_404(state, iid)
        versions = [
            {
                "id": index + 1,
                "head_commit_sha": sha,
                "base_commit_sha": mr.start_sha,
                "start_commit_sha": mr.start_sha,
                "created_at": at,
                "merge_request_id": mr.id,
                "state": "collected",
                "real_size": "1",
            }
            for index, (at, sha) in enumerate(state.versions[mr.iid])
        ]
        return _paginate(list(reversed(versions)))  # newest first, as GitLab lists them

    def _list_notes(self, p: str, iid: str) -> Response:
        state = self._state(p)
        mr = self._mr_or_404(state, iid)
        notes = [_note_json(n, mr) for n in state.notes[mr.iid].values()]
        if request.args.get("sort", "desc") == "desc":
            notes.reverse()
        return _paginate(notes)

    def _create_note(self, p: str, iid: str) -> Response:
        state = self._state(p)
        mr = self._mr_or_404(state, iid)
        body = _body().get("body")
        if not isinstance(body, str) or not body:
            raise ApiError(400, '400 Bad request - Note {:note=>["can\'t be blank"]}')
        if len(body) > 1_000_000:
            raise ApiError(400, 'Note {:note=>["is too long (maximum is 1000000 characters)"]}')
        return _json(_note_json(self._add_note(state, mr.iid, body, self.login), mr), 201)

    def _edit_note(self, p: str, iid: str, nid: str) -> Response:
        state = self._state(p)
        mr = self._mr_or_404(state, iid)
        note = state.notes[mr.iid].get(int(nid))
        if note is None:
            raise _not_found()
        state.notes[mr.iid][note.id] = dataclasses.replace(note, body=_body()["body"])
        return _json(_note_json(state.notes[mr.iid][note.id], mr))

    def _award(self, p: str, iid: str, nid: str) -> Response:
        state = self._state(p)
        mr = self._mr_or_404(state, iid)
        if int(nid) not in state.notes[mr.iid]:
            raise _not_found()
        name = _body().get("name")
        awarded = state.emoji.setdefault(int(nid), [])
        if (self.login, name) in awarded:
            raise ApiError(404, "404 Award Emoji Name has already been taken")
        awarded.append((self.login, str(name)))
        return _json(
            {"id": next(self._ids), "name": name, "user": user_json(self.login, _web())}, 201
        )

    # statuses

    def _post_status(self, p: str, sha: str) -> Response:
        state = self._state(p)
        data = _body()
        status, name = data.get("state"), data.get("name") or data.get("context") or "default"
        if status not in _STATUS_STATES:
            raise ApiError(400, "400 Bad request - state does not have a valid value")
        current = self.statuses(p, sha).get(name)
        if current == status and status in ("pending", "running"):
            verb = "enqueue" if status == "pending" else "run"
            raise ApiError(400, f"Cannot transition status via :{verb} from :{status}")
        posted = Status(
            next(self._ids), sha, status, name, data.get("description"), data.get("target_url")
        )
        state.statuses.setdefault(sha, []).append(posted)
        return _json(_status_json(posted), 201)

    def _list_statuses(self, p: str, sha: str) -> Response:
        latest = {s.name: s for s in self._state(p).statuses.get(sha, [])}
        return _paginate([_status_json(s) for s in latest.values()])

    # issues

    def _list_issues(self, p: str) -> Response:
        state = self._state(p)
        args = request.args
        wanted = {"opened": ("opened",), "closed": ("closed",)}.get(
            args.get("state", ""), ("opened", "closed")
        )
        issues = [
            i
            for i in state.issues.values()
            if i.state in wanted
            and (not args.get("author_username") or i.author == args["author_username"])
            and (not args.get("search") or args["search"] in i.title + i.description)
        ]
        return _paginate([self._issue_json(state, i) for i in reversed(issues)])

    def _create_issue(self, p: str) -> Response:
        state = self._state(p)
        data = _body()
        iid = max(state.issues, default=0) + 1
        labels = tuple(x for x in str(data.get("labels") or "").split(",") if x)
        issue = Issue(iid, data["title"], data.get("description") or "", self.login, labels)
        state.issues[iid] = issue
        return _json(self._issue_json(state, issue), 201)

    def _edit_issue(self, p: str, iid: str) -> Response:
        state = self._state(p)
        issue = state.issues.get(int(iid))
        if issue is None:
            raise _not_found()
        data = _body()
        changes: dict[str, Any] = {}
        if "description" in data:
            changes["description"] = data["description"]
        if data.get("state_event") in ("close", "reopen"):
            changes["state"] = "closed" if data["state_event"] == "close" else "opened"
        state.issues[issue.iid] = dataclasses.replace(issue, **changes)
        return _json(self._issue_json(state, state.issues[issue.iid]))

    def _issue_note(self, p: str, iid: str) -> Response:
        state = self._state(p)
        issue = state.issues.get(int(iid))
        if issue is None:
            raise _not_found()
        body = _body()["body"]
        state.issues[issue.iid] = dataclasses.replace(issue, notes=(*issue.notes, body))
        note = Note(next(self._ids), body, self.login)
        return _json({"id": note.id, "body": body, "author": user_json(self.login, _web())}, 201)

    def _issue_json(self, state: _ProjectState, issue: Issue) -> Json:
        web = _web()
        return {
            "id": issue.iid + 900_000,
            "iid": issue.iid,
            "project_id": state.project.id,
            "title": issue.title,
            "description": issue.description,
            "state": issue.state,
            "labels": list(issue.labels),
            "author": user_json(issue.author, web),
            "web_url": f"{web}/{state.project.path_with_namespace}/-/issues/{issue.iid}",
        }


# --- module helpers ---------------------------------------------------------------------


def _web() -> str:
    return request.host_url.rstrip("/")


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, mimetype="application/json")


def _body() -> Json:
    data = request.get_json(silent=True)
    if data is None and request.form:
        data = request.form.to_dict()
    if not isinstance(data, dict):
        raise ApiError(400, "400 Bad request")
    return data


def _paginate(items: list[Json]) -> Response:
    """One page, with GitLab's `X-*` pagination headers and a `Link` header."""
    page = max(int(request.args.get("page", 1)), 1)
    per_page = min(max(int(request.args.get("per_page", 20)), 1), 100)
    last = max((len(items) + per_page - 1) // per_page, 1)
    response = _json(items[(page - 1) * per_page : page * per_page])
    response.headers.update(
        {
            "X-Page": str(page),
            "X-Per-Page": str(per_page),
            "X-Total": str(len(items)),
            "X-Total-Pages": str(last),
            "X-Next-Page": str(page + 1) if page < last else "",
            "X-Prev-Page": str(page - 1) if page > 1 else "",
        }
    )
    links = [(rel, n) for rel, n in (("next", page + 1), ("first", 1), ("last", last)) if n <= last]
    if page >= last:
        links = [(rel, n) for rel, n in links if rel != "next"]
    query = request.args.to_dict()
    response.headers["Link"] = ", ".join(
        f'<{request.base_url}?{urlencode(query | {"page": str(n)})}>; rel="{rel}"'
        for rel, n in links
    )
    return response


def _note_json(note: Note, mr: MergeRequest) -> Json:
    return {
        "id": note.id,
        "type": None,
        "body": note.body,
        "author": user_json(note.author, _web()),
        "created_at": note.created_at,
        "updated_at": note.created_at,
        "system": note.system,
        "noteable_id": mr.id,
        "noteable_type": "MergeRequest",
        "noteable_iid": mr.iid,
        "resolvable": False,
    }


def _status_json(status: Status) -> Json:
    return {
        "id": status.id,
        "sha": status.sha,
        "ref": None,
        "status": status.status,
        "name": status.name,
        "description": status.description,
        "target_url": status.target_url,
        "allow_failure": False,
        "created_at": status.created_at,
    }
