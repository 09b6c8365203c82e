"""A complete little world for pull-request tests.

A real git origin (a working repo pushing to a bare repo used as `file://`
clone URL), a fake GitHub over real HTTP, and the runner's services wired from
settings exactly as `gitops-runner serve` wires them. Tests drive it like people
do: push a branch and open a PR, comment, approve, merge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from runner.commands.pr_flow import PullRequestFlow
from runner.events.github import parse_github_event
from runner.events.model import CommentEvent, PullRequestEvent
from runner.forge.github import GitHubForge
from runner.settings import Settings
from tests.support.fake_github import FakeGitHub
from tests.support.forge_world import Access, ForgeWorld, make_origin, wire_runner
from tests.support.github_payloads import issue_comment_event, pull_request_event
from tests.support.local_server import LocalServer

FULL_NAME = "acme/infra"
WEBHOOK_SECRET = "webhook-secret"
TOKEN = "ghp-test-token-123456"

# Changes the PR tests push: one project (infra/app), and infra/db (which needs approval).
APP_CHANGE = {
    "infra/app/variables.tf": 'variable "app_name" {\n  type    = string\n  default = "app2"\n}\n'
}
DB_CHANGE = {"infra/db/extra.tf": 'output "x" {\n  value = 1\n}\n'}


@dataclass(kw_only=True)
class PullRequestWorld(ForgeWorld):
    """Origin repo + fake GitHub + runner services, for one test."""

    github: FakeGitHub
    # Set when the runner acts as a GitHub App: webhooks then name this installation.
    installation_id: int | None = None
    forge_name: str = "github"
    comment_cap: int = GitHubForge.comment_cap

    @property
    def repo_key(self) -> str:
        return f"github.com/{FULL_NAME}"

    def __enter__(self) -> PullRequestWorld:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """The end of a test's world: the fake GitHub stopped, the store closed."""
        self.github.stop()
        self.services.store.close()

    # ---- people ---------------------------------------------------------------------------

    def open_pr(
        self, branch: str, files: Mapping[str, str], author: str = "alice", *, fork: bool = False
    ) -> int:
        """Push a branch and open a PR; runs the autoplan the webhook would queue.

        `fork=True`: the PR comes from `{author}/infra`, a fork (its commits are pushed
        to the origin too, as GitHub makes a fork PR's head fetchable from the base).
        """
        head = self.push_branch(branch, files)
        number = self.github.open_pull(
            FULL_NAME,
            head_sha=head,
            head_ref=branch,
            base_sha=self.main_sha(),
            user=author,
            files=list(files),
            fork=fork,
        )
        self._branches[number] = branch
        self.deliver_pr("opened", number)
        return number

    def push_to_pr(self, number: int, files: Mapping[str, str]) -> str:
        head = self.push_branch(self._branches[number], files)
        before = self.github.push(FULL_NAME, number, head, files=list(files))
        self.deliver_pr("synchronize", number, before=before)
        return head

    def comment(self, number: int, body: str, user: str = "alice") -> int:
        comment_id = self.github.add_comment(FULL_NAME, number, body, user)
        payload = issue_comment_event(
            "created",
            self.github.repo(FULL_NAME),
            number,
            body,
            user,
            comment_id,
            hosts=self.github.hosts,
        )
        event = parse_github_event("issue_comment", self._from_installation(payload))
        assert isinstance(event, CommentEvent)
        self.handle(event)
        return comment_id

    def approve(self, number: int, reviewer: str = "bob", *, at: str | None = None) -> None:
        """An approving review, given at commit `at` (default: the PR's head now)."""
        self.github.add_review(FULL_NAME, number, reviewer, "APPROVED", commit_id=at)

    def merge(self, number: int) -> str:
        """Merge the PR's branch into main for real (a merge commit), then deliver `closed`."""
        merge_sha = self.merge_without_event(number)
        self.deliver_pr("closed", number)
        return merge_sha

    def merge_without_event(self, number: int) -> str:
        merge_sha = self.merge_branch(number, f"Merge pull request #{number}")
        self.github.merge(FULL_NAME, number, merge_commit_sha=merge_sha)
        return merge_sha

    def close(self, number: int) -> None:
        self.github.close(FULL_NAME, number)
        self.deliver_pr("closed", number)

    def set_permission(self, user: str, access: Access) -> None:
        self.github.set_permission(FULL_NAME, user, access)

    # ---- webhooks -------------------------------------------------------------------------

    def pr_event(self, action: str, number: int, before: str | None = None) -> PullRequestEvent:
        pull = self.github.pull(FULL_NAME, number)
        payload = pull_request_event(
            action,
            self.github.repo(FULL_NAME),
            pull,
            pull.user,
            before=before,
            hosts=self.github.hosts,
        )
        event = parse_github_event("pull_request", self._from_installation(payload))
        assert isinstance(event, PullRequestEvent)
        return event

    def _from_installation(self, payload: dict) -> dict:
        """An App's webhooks carry the installation they were sent for."""
        if self.installation_id is None:
            return payload
        return payload | {"installation": {"id": self.installation_id, "node_id": "MDIz"}}

    def deliver_pr(self, action: str, number: int, before: str | None = None) -> None:
        self.handle(self.pr_event(action, number, before))

    # ---- reading the outcome --------------------------------------------------------------

    def head_sha(self, number: int) -> str:
        return self.github.pull(FULL_NAME, number).head_sha

    def comments(self, number: int) -> list[str]:
        return [comment.body for comment in self.github.comments(FULL_NAME, number)]

    def reactions(self, comment_id: int) -> list[str]:
        return [r.content for r in self.github.reactions(FULL_NAME, comment_id=comment_id)]

    def statuses(self, sha: str) -> dict[str, str]:
        """Latest state per context."""
        latest: dict[str, str] = {}
        for status in self.github.statuses(FULL_NAME, sha):
            latest[status.context] = status.state
        return latest


APP_ID = 31337
APP_INSTALLATION = 4242


def make_app_world(
    root: Path, *, token_lifetime: float = 3600.0, private_key: str | None = None
) -> PullRequestWorld:
    """The world with the runner installed as a GitHub App (no token): a fresh RSA key,
    its public half given to the fake; `private_key` overrides what the runner is given."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_file = root / "app-key.pem"
    root.mkdir(parents=True, exist_ok=True)
    key_file.write_text(private_key or pem)
    world = make_world(root, github_token=None, github_app_id=APP_ID, github_app_key_file=key_file)
    world.github.install_app(
        APP_ID, public, installation_id=APP_INSTALLATION, token_lifetime=token_lifetime
    )
    return world


def make_world(root: Path, config: str = "gitops-runner", **settings: object) -> PullRequestWorld:
    """Build the world under `root`; the caller stops `world.github` (use the fixture)."""
    origin, bare = make_origin(root, config)
    github = FakeGitHub(token=TOKEN)
    github.start()
    github.add_repo(FULL_NAME, clone_url=bare.as_uri())
    for user, permission in (("alice", "write"), ("bob", "write"), ("eve", "read")):
        github.set_permission(FULL_NAME, user, permission)
    values: dict[str, object] = {
        "github_token": TOKEN,
        "github_api_url": github.api_url,
        "github_webhook_secret": WEBHOOK_SECRET,
    }
    resolved, services = wire_runner(root, values | settings)
    return PullRequestWorld(
        root=root,
        github=github,
        installation_id=APP_INSTALLATION if "github_app_id" in settings else None,
        origin=origin,
        bare=bare,
        settings=resolved,
        services=services,
        flow=PullRequestFlow(services),
    )


class ServedRunner:
    """The runner as `serve` runs it (app + in-process queue), on a real HTTP port."""

    def __init__(self, settings: Settings, *, start_workers: bool = True) -> None:
        from runner.web.app import create_app
        from runner.wiring import build_web_services

        self.web = build_web_services(settings)
        self.app = create_app(settings, self.web)
        self._http = LocalServer("gitops-runner")
        self._http.start(self.app)
        self.url = f"{self._http.url}/events"
        if start_workers and self.web.start_workers:
            self.web.start_workers()

    def wait_idle(self, timeout: float = 240.0) -> None:
        """Wait until no job is queued or running (generous: real Terraform runs)."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = [
                job
                for job in self.web.store.jobs.list()
                if job.status.value in ("queued", "running")
            ]
            if not busy:
                return
            time.sleep(0.1)
        raise TimeoutError("jobs still running")

    def stop(self, *, workers: bool = True) -> None:
        if workers and self.web.stop_workers:
            self.web.stop_workers()
        self._http.stop()
        self.web.store.close()
