"""The pull-request world of `pr_world.py`, on GitLab: merge requests, notes, approvals.

A real git origin (a bare repository served as `file://`, GitLab's `git_http_url`), the
fake GitLab over real HTTP through python-gitlab, and the runner wired from settings
as `serve` wires it. Its verbs are `ForgeWorld`'s (`forge_world.py`), so a story reads
the same on either forge; webhooks are GitLab-shaped and go through `events/gitlab.py`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runner.commands.pr_flow import PullRequestFlow
from runner.events.gitlab import parse_gitlab_event
from runner.events.model import CommentEvent, PullRequestEvent
from runner.forge.gitlab import GitLabForge
from tests.support.fake_gitlab import FakeGitLab
from tests.support.forge_world import Access, ForgeWorld, make_origin, wire_runner
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
ROLE_OF_ACCESS: dict[Access, str] = {"read": "reporter", "write": "developer"}


@dataclass(kw_only=True)
class MergeRequestWorld(ForgeWorld):
    """Origin repo + fake GitLab + runner services, for one test."""

    gitlab: FakeGitLab
    forge_name: str = "gitlab"
    comment_cap: int = GitLabForge.comment_cap
    _sources: dict[int, Project] = field(default_factory=dict)

    @property
    def project(self) -> Project:
        return self.gitlab.project(PROJECT_PATH)

    @property
    def repo_key(self) -> str:
        return f"127.0.0.1:{self.gitlab.url.rsplit(':', 1)[1]}/{PROJECT_PATH}"

    # ---- people ---------------------------------------------------------------------------

    def open_pr(
        self, branch: str, files: Mapping[str, str], author: str = "alice", *, fork: bool = False
    ) -> int:
        """Push a branch and open a merge request; delivers the `open` hook.

        `fork=True`: the source project is `{author}/infra`, a fork (its commits live in
        the origin too, as GitLab makes a fork MR's head fetchable from the target).
        """
        iid = self.open_without_hook(branch, files, author, fork=fork)
        self.deliver_mr("open", iid, user=author)
        return iid

    def open_without_hook(
        self, branch: str, files: Mapping[str, str], author: str = "alice", *, fork: bool = False
    ) -> int:
        """Push a branch and open a merge request; GitLab has not sent the hook yet."""
        head = self.push_branch(branch, files)
        source = self.project
        if fork:
            source = self.gitlab.add_project(f"{author}/infra", clone_url=self.clone_url)
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
        return iid

    def push_to_pr(self, number: int, files: Mapping[str, str]) -> str:
        head = self.push_branch(self._branches[number], files)
        oldrev = self.gitlab.push(PROJECT_PATH, number, head)
        self.deliver_mr("update", number, oldrev=oldrev)
        return head

    def comment(self, number: int, body: str, user: str = "alice") -> int:
        note_id = self.gitlab.add_note(PROJECT_PATH, number, body, user)
        event = parse_gitlab_event(NOTE_HOOK, self.note_payload(number, note_id, body, user))
        assert isinstance(event, CommentEvent)
        self.handle(event)
        return note_id

    def approve(self, number: int, reviewer: str = "bob") -> None:
        self.gitlab.approve(PROJECT_PATH, number, reviewer)

    def merge(self, number: int) -> str:
        """Merge the branch into main for real (a merge commit), then deliver `merge`."""
        branch = self._branches[number]
        merge_sha = self.merge_branch(number, f"Merge branch '{branch}' into 'main'")
        self.gitlab.merge(PROJECT_PATH, number, merge_commit_sha=merge_sha)
        self.deliver_mr("merge", number)
        return merge_sha

    def close(self, number: int) -> None:
        self.gitlab.close(PROJECT_PATH, number)
        self.deliver_mr("close", number)

    def set_permission(self, user: str, access: Access) -> None:
        self.gitlab.set_access(PROJECT_PATH, user, ROLE_OF_ACCESS[access])

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
        self.handle(event)

    # ---- reading the outcome --------------------------------------------------------------

    def head_sha(self, number: int) -> str:
        return self.gitlab.mr(PROJECT_PATH, number).sha

    def comments(self, number: int) -> list[str]:
        return [note.body for note in self.gitlab.notes(PROJECT_PATH, number)]

    def reactions(self, comment_id: int) -> list[str]:
        return self.gitlab.emoji(PROJECT_PATH, comment_id)

    def statuses(self, sha: str) -> dict[str, str]:
        """Latest state per status name (GitLab says `failed` where GitHub says `failure`)."""
        return self.gitlab.statuses(PROJECT_PATH, sha)


def make_mr_world(
    root: Path, config: str = "gitops-runner", **settings: object
) -> MergeRequestWorld:
    """Build the world under `root`; the caller stops `world.gitlab` (use a fixture)."""
    origin, bare = make_origin(root, config)
    gitlab = FakeGitLab(token=GITLAB_TOKEN).start()
    gitlab.add_project(PROJECT_PATH, clone_url=bare.as_uri())
    for user, role in MEMBERS.items():
        gitlab.set_access(PROJECT_PATH, user, role)
    values: dict[str, object] = {
        "gitlab_url": gitlab.url,
        "gitlab_token": GITLAB_TOKEN,
        "gitlab_webhook_secret": GITLAB_SECRET,
    }
    resolved, services = wire_runner(root, values | settings)
    return MergeRequestWorld(
        root=root,
        gitlab=gitlab,
        origin=origin,
        bare=bare,
        settings=resolved,
        services=services,
        flow=PullRequestFlow(services),
    )


def running_mr_world(root: Path, **settings: object) -> Iterator[MergeRequestWorld]:
    """`make_mr_world` for a fixture: yields it, then stops the fake and closes the store."""
    built = make_mr_world(root, **settings)
    try:
        yield built
    finally:
        built.gitlab.stop()
        built.services.store.close()
