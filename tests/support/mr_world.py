"""The pull-request world of `pr_world.py`, on GitLab: merge requests, notes, approvals.

A real git origin (a bare repository served as `file://`, GitLab's `git_http_url`), the
fake GitLab over real HTTP through python-gitlab, and the runner wired from settings
as `serve` wires it. Its verbs are the GitHub world's (`open_pr`, `comment`, `approve`,
`merge`, `comments`, `statuses`), so a story reads the same on either forge; webhooks
are GitLab-shaped and go through `events/gitlab.py`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runner.commands.pr_flow import PullRequestFlow
from runner.engine.services import Services
from runner.events.gitlab import parse_gitlab_event
from runner.events.model import CommentEvent, PullRequestEvent
from runner.settings import Settings, load_settings
from runner.wiring import build_services
from tests.support.fake_gitlab import FakeGitLab
from tests.support.git_repo import GitRepo, sample_repo
from tests.support.gitlab_payloads import (
    MERGE_REQUEST_HOOK,
    NOTE_HOOK,
    Json,
    Project,
    merge_request_hook,
    note_hook,
)

PROJECT_PATH = "acme/platform/infra"  # a subgroup: GitLab paths nest
GITLAB_TOKEN = "glpat-test-token-123456"
GITLAB_SECRET = "gitlab-webhook-secret"
# GitLab roles of the people in the stories.
MEMBERS = {"alice": "developer", "bob": "developer", "olga": "maintainer", "eve": "reporter"}


@dataclass
class MergeRequestWorld:
    """Origin repo + fake GitLab + runner services, for one test."""

    root: Path
    gitlab: FakeGitLab
    origin: GitRepo
    bare: Path
    settings: Settings
    services: Services
    flow: PullRequestFlow
    _branches: dict[int, str] = field(default_factory=dict)
    _sources: dict[int, Project] = field(default_factory=dict)

    @property
    def project(self) -> Project:
        return self.gitlab.project(PROJECT_PATH)

    @property
    def repo_key(self) -> str:
        return f"127.0.0.1:{self.gitlab.url.rsplit(':', 1)[1]}/{PROJECT_PATH}"

    # ---- people ---------------------------------------------------------------------------

    def push_branch(self, branch: str, files: Mapping[str, str]) -> str:
        """Commit `files` on `branch` (created from main if new) and push it."""
        if branch not in [head.name for head in self.origin.repo.heads]:
            self.origin.branch(branch, from_="main")
        self.origin.checkout(branch)
        self.origin.write(files)
        sha = self.origin.commit(f"change on {branch}")
        self.origin.push("origin", branch)
        self.origin.checkout("main")
        return sha

    def open_pr(
        self, branch: str, files: Mapping[str, str], author: str = "alice", *, fork: bool = False
    ) -> int:
        """Push a branch and open a merge request; delivers the `open` hook.

        `fork=True`: the source project is `{author}/infra`, a fork (its commits live in
        the origin too, as GitLab makes a fork MR's head fetchable from the target).
        """
        head = self.push_branch(branch, files)
        source = self.project
        if fork:
            source = self.gitlab.add_project(f"{author}/infra", clone_url=self.bare.as_uri())
        iid = self.gitlab.open_mr(
            PROJECT_PATH,
            sha=head,
            source_branch=branch,
            start_sha=self.main_sha(),
            author=author,
            source_project=source,
        )
        self._branches[iid] = branch
        self._sources[iid] = source
        self.deliver_mr("open", iid, user=author)
        return iid

    def open_fork_pr(self, branch: str, files: Mapping[str, str], author: str = "mallory") -> int:
        return self.open_pr(branch, files, author, fork=True)

    def push_to_pr(self, iid: int, files: Mapping[str, str]) -> str:
        head = self.push_branch(self._branches[iid], files)
        oldrev = self.gitlab.push(PROJECT_PATH, iid, head)
        self.deliver_mr("update", iid, oldrev=oldrev)
        return head

    def comment(self, iid: int, body: str, user: str = "alice") -> int:
        note_id = self.gitlab.add_note(PROJECT_PATH, iid, body, user)
        event = parse_gitlab_event(NOTE_HOOK, self.note_payload(iid, note_id, body, user))
        assert isinstance(event, CommentEvent)
        self.flow.handle(event, threading.Event())
        return note_id

    def approve(self, iid: int, reviewer: str = "bob") -> None:
        self.gitlab.approve(PROJECT_PATH, iid, reviewer)

    def merge(self, iid: int) -> str:
        """Merge the branch into main for real (a merge commit), then deliver `merge`."""
        branch = self._branches[iid]
        self.origin.checkout("main")
        self.origin.repo.git.merge("--no-ff", "-m", f"Merge branch '{branch}' into 'main'", branch)
        self.origin.push("origin", "main")
        self.gitlab.merge(PROJECT_PATH, iid, merge_commit_sha=self.origin.head)
        self.deliver_mr("merge", iid)
        return self.origin.head

    # ---- webhooks -------------------------------------------------------------------------

    def mr_payload(self, action: str, iid: int, *, user: str = "alice", oldrev: str = "") -> Json:
        return merge_request_hook(
            action,
            self.project,
            self.gitlab.mr(PROJECT_PATH, iid),
            user=user,
            web=self.gitlab.url,
            source=self._sources.get(iid),
            oldrev=oldrev or None,
        )

    def note_payload(self, iid: int, note_id: int, body: str, user: str) -> Json:
        return note_hook(
            self.project,
            self.gitlab.mr(PROJECT_PATH, iid),
            note_id=note_id,
            body=body,
            user=user,
            web=self.gitlab.url,
            source=self._sources.get(iid),
        )

    def deliver_mr(self, action: str, iid: int, *, user: str = "alice", oldrev: str = "") -> None:
        payload = self.mr_payload(action, iid, user=user, oldrev=oldrev)
        event = parse_gitlab_event(MERGE_REQUEST_HOOK, payload)
        assert isinstance(event, PullRequestEvent)
        self.flow.handle(event, threading.Event())

    # ---- reading the outcome --------------------------------------------------------------

    def main_sha(self) -> str:
        return self.origin.repo.commit("main").hexsha

    def head_sha(self, iid: int) -> str:
        return self.gitlab.mr(PROJECT_PATH, iid).sha

    def comments(self, iid: int) -> list[str]:
        return [note.body for note in self.gitlab.notes(PROJECT_PATH, iid)]

    def last_comment(self, iid: int) -> str:
        return self.comments(iid)[-1]

    def statuses(self, sha: str) -> dict[str, str]:
        """Latest state per status name (GitLab says `failed` where GitHub says `failure`)."""
        return self.gitlab.statuses(PROJECT_PATH, sha)


def make_mr_world(root: Path, **settings: object) -> MergeRequestWorld:
    """Build the world under `root`; the caller stops `world.gitlab` (use a fixture)."""
    origin = sample_repo(root / "origin", "gitops-runner")
    bare = origin.bare_clone(root / "origin.git")
    origin.add_remote("origin", str(bare))
    gitlab = FakeGitLab(token=GITLAB_TOKEN).start()
    gitlab.add_project(PROJECT_PATH, clone_url=bare.as_uri())
    for user, role in MEMBERS.items():
        gitlab.set_access(PROJECT_PATH, user, role)
    values: dict[str, object] = {
        "data_dir": root / "data",
        "gitlab_url": gitlab.url,
        "gitlab_token": GITLAB_TOKEN,
        "gitlab_webhook_secret": GITLAB_SECRET,
        "parallelism": 2,
    }
    resolved = load_settings(**(values | settings))
    services = build_services(resolved)
    return MergeRequestWorld(
        root=root,
        gitlab=gitlab,
        origin=origin,
        bare=bare,
        settings=resolved,
        services=services,
        flow=PullRequestFlow(services),
    )
