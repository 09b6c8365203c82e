"""A push to the default branch of a reconciled repository reconciles it at once.

The runner as `serve` runs it (web app, in-process queue, scheduler) on a real HTTP port,
a real git repository it reconciles, the embedded Terraform, and signed `push` webhooks
shaped like GitHub's and GitLab's. The repository's poll interval is an hour: what is
applied within the test was applied because of the push. Pushes that must not reconcile
(another branch, a tag, a deletion, another repository, a forged signature) are
acknowledged and queue nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from runner.events.gitlab import parse_gitlab_event
from runner.events.model import IgnoredEvent, PushEvent
from runner.jobs.payloads import ReconcileJob
from runner.jobs.queue import enqueue_job
from runner.reconcile.jobs import job_for_push
from runner.settings import Settings, load_settings
from runner.store.reconcile import ReconcileStateStore
from runner.store.store import Store
from runner.web.app import create_app
from runner.web.context import WebServices
from tests.support.fake_github import FakeGitHub
from tests.support.git_repo import GitRepo
from tests.support.github_payloads import Repo, build_delivery, post_delivery, push_event
from tests.support.gitlab_payloads import Project, push_hook
from tests.support.pr_world import ServedRunner
from tests.support.tfstate import applied_input

FULL_NAME = "acme/infra"
SECRET = "push-secret"
TOKEN = "ghp-push-token"


def project_tf(state: Path, value: str) -> str:
    return (
        f'terraform {{\n  backend "local" {{ path = "{state}/app.tfstate" }}\n}}\n'
        f'resource "terraform_data" "v" {{\n  input = "{value}"\n}}\n'
    )


@dataclass
class World:
    repo: GitRepo
    state: Path
    github: FakeGitHub
    settings: Settings

    def applied(self) -> str | None:
        return applied_input(self.state / "app.tfstate")

    def commit_on_main(self, value: str) -> str:
        self.repo.write({"app/main.tf": project_tf(self.state, value)})
        return self.repo.commit(f"app = {value}")

    def push_payload(self, ref: str, after: str, **options: Any) -> dict[str, Any]:
        repo = Repo(FULL_NAME, clone_url=self.repo.path.as_uri())
        return push_event(
            repo, ref, "0" * 39 + "1", after, "alice", hosts=self.github.hosts, **options
        )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    state = tmp_path / "state"
    state.mkdir()
    repo = GitRepo.init(tmp_path / "infra")
    repo.write(
        {
            ".gitignore": ".terraform/\n",
            "gitops-runner.yaml": "version: 1\nprojects:\n  - dir: app\n",
        }
    )
    repo.write({"app/main.tf": project_tf(state, "v1")})
    repo.commit("app")
    github = FakeGitHub(token=TOKEN)
    github.start()
    github.add_repo(FULL_NAME, clone_url=repo.path.as_uri())
    settings = load_settings(
        data_dir=tmp_path / "data",
        github_token=TOKEN,
        github_api_url=github.api_url,
        github_webhook_secret=SECRET,
        workers=2,
        parallelism=2,
        repos=[
            {
                "url": str(repo.path),
                "full_name": FULL_NAME,
                "forge": "github",
                "poll_interval": 3600,
            }
        ],
    )
    yield World(repo, state, github, settings)
    github.stop()


def wait_for(condition: Any, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def reconcile_jobs(store: Store) -> list[ReconcileJob]:
    return [ReconcileJob(**job.payload) for job in store.jobs.list(kind="reconcile")]


def test_a_push_to_the_default_branch_applies_the_new_commit_at_once(world: World) -> None:
    runner = ServedRunner(world.settings)
    store = runner.web.store
    try:
        wait_for(lambda: world.applied() == "v1", "the first poll to apply the repository")
        head = world.commit_on_main("v2")

        answer = post_delivery(
            runner.url, "push", world.push_payload("refs/heads/main", head), SECRET
        )

        assert answer.status_code == 202, answer.text
        wait_for(lambda: world.applied() == "v2", "the push to be reconciled")
        runner.wait_idle()
        # The poll comes hourly: the first poll at start-up, then the push, nothing else.
        assert reconcile_jobs(store) == [
            ReconcileJob(repo=str(world.repo.path), trigger="poll"),
            ReconcileJob(repo=str(world.repo.path), trigger="push", sha=head),
        ]
        assert {job.status.value for job in store.jobs.list(kind="reconcile")} == {"done"}
        key = f"{world.settings.forge_hosts()['github']}/{FULL_NAME}"
        bookmark = ReconcileStateStore(store).get(key, "main")
        assert bookmark is not None and bookmark.reconciled_sha == head
    finally:
        runner.stop()


@pytest.fixture
def client(world: World) -> Iterator[tuple[Any, Store]]:
    """The web app alone (nothing runs jobs), to see what each push queues."""
    store = Store.open(world.settings.resolved_database_url)
    services = WebServices(
        store=store, submit=lambda event, delivery=None: enqueue_job(store, event, delivery)
    )
    yield create_app(world.settings, services).test_client(), store
    store.close()


def deliver(
    client: Any, payload: dict[str, Any], secret: str = SECRET, delivery: str | None = None
) -> Any:
    body, headers = build_delivery("push", payload, secret, delivery)
    return client.post("/events", data=body, headers=headers)


def test_pushes_that_must_not_reconcile_are_acknowledged_and_queue_nothing(
    world: World, client: tuple[Any, Store]
) -> None:
    app, store = client
    head = world.repo.head
    other_host = dict(world.push_payload("refs/heads/main", head))
    other_host["repository"] = dict(
        other_host["repository"], html_url=f"https://github.com/{FULL_NAME}"
    )
    ignored = {
        "another branch": world.push_payload("refs/heads/feature", head),
        "a tag": world.push_payload("refs/tags/v1.0", head),
        "a deletion": world.push_payload("refs/heads/main", head, deleted=True),
        # Same owner/name on another host (github.com, not the configured forge): not ours.
        "another repository": other_host,
    }
    for what, payload in ignored.items():
        answer = deliver(app, payload)
        assert (what, answer.status_code, answer.get_json()["status"]) == (what, 200, "ignored")

    forged = deliver(app, world.push_payload("refs/heads/main", head), secret="guessed")

    assert forged.status_code == 401
    assert store.jobs.list() == []


def test_a_redelivered_push_queues_one_reconcile(world: World, client: tuple[Any, Store]) -> None:
    app, store = client
    payload = world.push_payload("refs/heads/main", world.repo.head)

    first = deliver(app, payload, delivery="push-1")
    again = deliver(app, payload, delivery="push-1")

    assert first.status_code == 202 and again.get_json()["status"] == "duplicate"
    assert [job.kind for job in store.jobs.list()] == ["reconcile"]


def test_a_repository_without_a_poll_interval_is_not_reconciled_on_push(world: World) -> None:
    settings = world.settings.model_copy(
        update={
            "repos": tuple(
                r.model_copy(update={"poll_interval": None}) for r in world.settings.repos
            )
        }
    )
    event = PushEvent(repo=_repo_ref(world), branch="main", after=world.repo.head, sender="alice")

    assert job_for_push(event, settings) == "repository is not reconciled"
    assert job_for_push(event, world.settings) == ReconcileJob(
        repo=str(world.repo.path), trigger="push", sha=world.repo.head
    )


def _repo_ref(world: World) -> Any:
    from runner.events.github import parse_github_event

    event = parse_github_event("push", world.push_payload("refs/heads/main", world.repo.head))
    assert isinstance(event, PushEvent)
    return event.repo


def test_gitlab_push_hooks_become_push_events(tmp_path: Path) -> None:
    web = "https://gitlab.example.com"
    project = Project(
        7, "platform/infra", clone_url="https://gitlab.example.com/platform/infra.git"
    )
    sha = "a" * 40

    event = parse_gitlab_event(
        "Push Hook", push_hook(project, "refs/heads/main", "0" * 40, sha, "alice", web=web)
    )

    assert isinstance(event, PushEvent)
    assert (event.repo.key, event.branch, event.after, event.sender) == (
        "gitlab.example.com/platform/infra",
        "main",
        sha,
        "alice",
    )
    deleted = push_hook(project, "refs/heads/main", sha, "0" * 40, "alice", web=web)
    assert isinstance(parse_gitlab_event("Push Hook", deleted), IgnoredEvent)
    settings = load_settings(
        data_dir=tmp_path,
        gitlab_url=web,
        repos=[
            {
                "url": project.clone_url,
                "full_name": "platform/infra",
                "forge": "gitlab",
                "poll_interval": 60,
            }
        ],
    )
    assert job_for_push(event, settings) == ReconcileJob(
        repo=project.clone_url, trigger="push", sha=sha
    )


def test_a_push_webhook_over_http_without_a_signature_is_refused(world: World) -> None:
    runner = ServedRunner(world.settings, start_workers=False)
    try:
        answer = requests.post(
            runner.url,
            json=world.push_payload("refs/heads/main", world.repo.head),
            headers={"X-GitHub-Event": "push", "X-GitHub-Delivery": "unsigned"},
            timeout=30,
        )
        assert answer.status_code == 401
        assert runner.web.store.jobs.list() == []
    finally:
        runner.stop(workers=False)


def test_a_malformed_push_is_refused_naming_the_field(
    world: World, client: tuple[Any, Store]
) -> None:
    app, store = client
    payload = world.push_payload("refs/heads/main", world.repo.head)
    del payload["after"]

    answer = deliver(app, payload)

    assert answer.status_code == 400 and "after" in answer.get_json()["error"]
    assert store.jobs.list() == []
