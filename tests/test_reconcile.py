"""Pull-mode reconcile against real git repositories and real Terraform.

Each project holds one built-in `terraform_data` (no provider to start, so passes are
quick) with its state under `state/`, outside any checkout, as a remote backend would
keep it: what an apply did is read back from the state file. A `local-exec` that
exits 1 makes an apply fail after a good plan.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runner.config.model import ProjectConfig
from runner.drift.scan import DriftRepo
from runner.engine.project_mutex import state_key
from runner.engine.services import Services
from runner.events.model import RepoRef
from runner.notify.base import Notifier, NullNotifier
from runner.notify.slack import RetryPolicy, SlackWebhookNotifier
from runner.reconcile.model import PollTarget, ProjectStatus, ReconcileReport
from runner.reconcile.reconciler import Reconciler
from runner.settings import Settings
from runner.store.locks import LockOwner
from runner.store.reconcile import ReconcileStateStore
from runner.store.runs import RunRecord, Trigger
from runner.store.store import Store
from runner.wiring import build_services
from runner.workspace.snapshot import snapshot_directory
from tests.support.fake_github import FakeGitHub
from tests.support.fake_slack import FakeSlack
from tests.support.git_repo import GitRepo
from tests.support.tfstate import applied_input

FULL_NAME = "acme/infra"
TOKEN = "ghp-reconcile-test"
FAST = RetryPolicy(attempts=2, backoff_s=0.01, max_wait_s=0.02)
CLI = [sys.executable, "-m", "runner"]


def project_tf(state: Path, name: str, value: str, *, failing: bool = False) -> str:
    """One terraform_data holding `value`; `failing`: its creation fails (a good plan)."""
    provisioner = '  provisioner "local-exec" {\n    command = "exit 1"\n  }\n' if failing else ""
    return (
        f'terraform {{\n  backend "local" {{ path = "{state}/{name}.tfstate" }}\n}}\n'
        f'resource "terraform_data" "v" {{\n  input = "{value}"\n{provisioner}}}\n'
    )


@dataclass
class World:
    """A repository of projects, not applied yet, and the runner's services."""

    root: Path
    repo: GitRepo
    state: Path
    settings: Settings
    store: Store
    services: Services

    def applied(self, name: str) -> str | None:
        """The value the project's state holds (None: never applied)."""
        return applied_input(self.state / f"{name}.tfstate")

    def write_project(self, name: str, value: str, *, failing: bool = False) -> None:
        self.repo.write({f"{name}/main.tf": project_tf(self.state, name, value, failing=failing)})

    def write_config(self, projects: dict[str, str]) -> None:
        """`projects`: name → extra YAML for the project (e.g. "depends_on: [a]")."""
        lines = []
        for name, extra in projects.items():
            lines.append(f"  - name: {name}\n    dir: {name}")
            if extra:
                lines.append(f"    {extra}")
        self.repo.write({"gitops-runner.yaml": "version: 1\nprojects:\n" + "\n".join(lines) + "\n"})

    def target(self, **repo: object) -> PollTarget:
        return PollTarget(DriftRepo.from_url(str(self.repo.path), **repo), interval_s=5)  # type: ignore[arg-type]

    def reconciler(self, notifier: Notifier | None = None, **kwargs: object) -> Reconciler:
        return Reconciler(
            self.services,
            targets=[self.target()],
            notifier=notifier or NullNotifier(),
            **kwargs,  # type: ignore[arg-type]
        )

    def runs(self, command: str | None = None) -> list[RunRecord]:
        runs = self.store.runs.list_runs(limit=500)
        return [r for r in runs if command is None or r.command == command]


def make_world(root: Path, projects: dict[str, str], **settings: object) -> World:
    """Commit `projects` (name → value) with a config listing them."""
    state = root / "state"
    state.mkdir()
    repo = GitRepo.init(root / "repo")
    repo.write({".gitignore": ".terraform/\n*.tfplan\n.terraform.lock.hcl\n"})
    built = Settings(data_dir=root / "data", parallelism=2, **settings)  # type: ignore[arg-type]
    store = Store.open(built.resolved_database_url)
    w = World(root, repo, state, built, store, build_services(built, store))
    w.write_config({name: "" for name in projects})
    for name, content in projects.items():
        w.write_project(name, content)
    repo.commit("projects")
    return w


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = make_world(tmp_path, {"alpha": "a", "beta": "b"})
    yield w
    w.store.close()


def statuses(report: ReconcileReport) -> dict[str, ProjectStatus]:
    return {p.project: p.status for p in report.projects}


# --- what a pass applies ------------------------------------------------------------------


def test_first_reconcile_applies_every_project(world: World) -> None:
    report = world.reconciler().reconcile_once(world.target())

    assert report.ok and report.base is None
    assert statuses(report) == {"alpha": ProjectStatus.APPLIED, "beta": ProjectStatus.APPLIED}
    assert (world.applied("alpha"), world.applied("beta")) == ("a", "b")
    applies = world.runs("apply")
    assert sorted(r.project for r in applies) == ["alpha", "beta"]
    assert {(r.trigger, r.status.value, r.commit_sha) for r in applies} == {
        (Trigger.RECONCILE, "success", world.repo.head)
    }
    assert len(world.runs("plan")) == 2
    assert world.store.locks.list() == []
    state = ReconcileStateStore(world.store).get(world.target().repo.key, "main")
    assert state is not None and state.reconciled_sha == world.repo.head


def test_a_new_commit_applies_only_the_projects_it_changed(world: World) -> None:
    reconciler = world.reconciler()
    first = reconciler.reconcile_once(world.target())
    world.write_project("beta", "b2")
    world.repo.commit("beta: new content")

    report = reconciler.reconcile_once(world.target())

    assert report.ok and report.base == first.head and report.head == world.repo.head
    assert statuses(report) == {"beta": ProjectStatus.APPLIED}
    assert report.projects[0].reason == "beta: files changed: main.tf"
    assert world.applied("beta") == "b2"
    assert [r.project for r in world.runs("apply")].count("alpha") == 1


def test_no_new_commit_does_nothing(world: World) -> None:
    reconciler = world.reconciler()
    reconciler.reconcile_once(world.target())
    runs_before = len(world.runs())

    report = reconciler.reconcile_once(world.target())

    assert report.up_to_date and report.ok and report.projects == ()
    assert len(world.runs()) == runs_before


def test_a_restart_does_not_apply_again(world: World) -> None:
    world.reconciler().reconcile_once(world.target())
    runs_before = len(world.runs())
    reopened = Store.open(world.settings.resolved_database_url)
    try:
        restarted = Reconciler(build_services(world.settings, reopened), notifier=NullNotifier())
        report = restarted.reconcile_once(world.target())
    finally:
        reopened.close()

    assert report.up_to_date
    assert len(world.runs()) == runs_before


def test_a_project_locked_by_a_pr_is_busy_and_retried_when_free(world: World) -> None:
    key = world.target().repo.key
    world.store.locks.acquire(key, "alpha", "default", LockOwner(pr_number=7, user="alice"))
    reconciler = world.reconciler()

    report = reconciler.reconcile_once(world.target())
    assert report.ok  # busy is not a failure
    assert statuses(report) == {"alpha": ProjectStatus.BUSY, "beta": ProjectStatus.APPLIED}
    assert report.projects[0].detail == "locked by PR #7"
    assert world.applied("alpha") is None
    assert world.store.locks.get(key, "alpha", "default").owner_pr == 7  # untouched

    still = reconciler.reconcile_once(world.target())  # same head: only alpha is retried
    assert still.retry and statuses(still) == {"alpha": ProjectStatus.BUSY}

    world.store.locks.release(key, "alpha", "default", owner_pr=7)
    freed = reconciler.reconcile_once(world.target())
    assert statuses(freed) == {"alpha": ProjectStatus.APPLIED}
    assert world.applied("alpha") == "a"
    assert reconciler.reconcile_once(world.target()).up_to_date
    state = ReconcileStateStore(world.store).get(key, "main")
    assert state is not None and state.reconciled_sha == world.repo.head


# --- failures, Slack and the commit status ------------------------------------------------


def test_a_failed_apply_is_recorded_reported_and_not_retried(tmp_path: Path) -> None:
    with FakeGitHub(token=TOKEN) as github, FakeSlack() as slack:
        w = make_world(
            tmp_path,
            {"ok": "fine"},
            github_token=TOKEN,
            github_api_url=github.api_url,
        )
        try:
            w.write_project("broken", "x", failing=True)
            w.write_project("after", "y")
            w.write_config({"ok": "", "broken": "", "after": "depends_on: [broken]"})
            w.repo.commit("three projects, one cannot be applied")
            github.add_repo(FULL_NAME, clone_url=w.repo.path.as_uri())
            target = w.target(full_name=FULL_NAME)
            notifier = SlackWebhookNotifier(slack.webhook_url, policy=FAST)
            reconciler = w.reconciler(notifier=notifier)

            report = reconciler.reconcile_once(target)

            assert not report.ok
            assert statuses(report) == {
                "ok": ProjectStatus.APPLIED,
                "broken": ProjectStatus.FAILED,
                "after": ProjectStatus.BLOCKED,
            }, report.projects
            assert w.applied("ok") == "fine" and w.applied("after") is None
            (failed_run,) = [r for r in w.runs("apply") if r.project == "broken"]
            assert failed_run.status.value == "failed" and failed_run.error
            (message,) = slack.messages()
            assert message.text.startswith("Apply failed")
            assert "broken/default" in message.block_text and "after/default" in message.block_text
            head_statuses = github.statuses(FULL_NAME, w.repo.head)
            assert [s.context for s in head_statuses] == ["gitops/apply", "gitops/apply"]
            assert [s.state for s in head_statuses] == ["pending", "failure"]

            runs_before = len(w.runs())
            assert reconciler.reconcile_once(target).up_to_date  # waits for a new commit
            assert len(w.runs()) == runs_before and len(slack.messages()) == 1
        finally:
            w.store.close()


def test_success_sets_the_commit_status_and_tells_slack(tmp_path: Path) -> None:
    with FakeGitHub(token=TOKEN) as github, FakeSlack() as slack:
        w = make_world(tmp_path, {"alpha": "a"}, github_token=TOKEN, github_api_url=github.api_url)
        try:
            github.add_repo(FULL_NAME, clone_url=w.repo.path.as_uri())
            reconciler = w.reconciler(notifier=SlackWebhookNotifier(slack.webhook_url, policy=FAST))
            assert reconciler.reconcile_once(w.target(full_name=FULL_NAME)).ok

            (final,) = [s for s in github.statuses(FULL_NAME, w.repo.head) if s.state != "pending"]
            assert (final.context, final.state, final.description) == (
                "gitops/apply",
                "success",
                "1/1 applied",
            )
            (message,) = slack.messages()
            assert (
                message.text.startswith("Apply succeeded") and "alpha/default" in message.block_text
            )
        finally:
            w.store.close()


def test_without_a_forge_token_the_status_is_skipped_quietly(world: World) -> None:
    report = world.reconciler().reconcile_once(world.target(full_name=FULL_NAME))
    assert report.ok and statuses(report)["alpha"] is ProjectStatus.APPLIED


# --- once per deployment -------------------------------------------------------------------


def test_the_lease_makes_two_reconcilers_run_once(world: World) -> None:
    reconcilers = [world.reconciler(owner=f"worker-{i}") for i in range(2)]
    now = datetime(2024, 12, 2, 12, 0, tzinfo=UTC)

    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda r: r.tick(now), reconcilers))

    assert sorted(len(r) for r in reports) == [0, 1]
    assert len(world.runs("apply")) == 2
    assert [r for reconciler in reconcilers for r in reconciler.tick(now)] == []


def test_a_configured_repo_takes_the_pr_flows_lock_whatever_its_spelling() -> None:
    """Attack (row 11): `Acme/Infra` from the payload and `acme/infra` from the config
    used to be two keys, so a PR apply and a correction of one state did not exclude
    each other."""
    ref = RepoRef("github", "Acme/Infra", "file:///x", "https://github.com/Acme/Infra", "main")
    by_url = DriftRepo.from_url("https://GitHub.com/acme/infra.git")
    by_name = DriftRepo.from_url("file:///srv/mirror.git", full_name="ACME/infra")
    project = ProjectConfig(name="app", dir="infra/app", workspace="staging")
    keys = {ref.key, by_url.key, by_name.key}
    assert keys == {"github.com/acme/infra"}
    assert len({state_key(key, project.dir, project.workspace) for key in keys}) == 1


# --- plain directories and the CLI ---------------------------------------------------------

SAMPLE_TF = """variable "size" {
  default = 1
}

resource "terraform_data" "thing" {
  input = { size = var.size, workspace = terraform.workspace }
}
"""


def plain_directory(root: Path) -> Path:
    """Two terraform_data projects, one in two workspaces; not a git repository."""
    directory = root / "plain-infra"
    for name in ("one", "two"):
        (directory / name).mkdir(parents=True)
        (directory / name / "main.tf").write_text(SAMPLE_TF)
    (directory / "gitops-runner.yaml").write_text(
        "version: 1\nprojects:\n  - name: one\n    dir: one\n"
        "  - name: one-staging\n    dir: one\n    workspace: staging\n"
        "  - name: two\n    dir: two\n"
    )
    return directory


def test_a_snapshot_commits_only_when_the_directory_changed(tmp_path: Path) -> None:
    directory = plain_directory(tmp_path)
    (directory / "one" / ".terraform").mkdir()
    (directory / "one" / ".terraform" / "junk").write_text("not in a snapshot")
    (directory / "one" / "old.tfplan").write_text("nor this")

    first = snapshot_directory(directory, tmp_path / "data")
    again = snapshot_directory(directory, tmp_path / "data")
    (directory / "two" / "main.tf").write_text(SAMPLE_TF.replace("default = 1", "default = 2"))
    changed = snapshot_directory(directory, tmp_path / "data")

    assert first.created and not again.created and again.commit == first.commit
    assert changed.created and changed.commit != first.commit
    assert first.state_dirs == ("one", "two")
    files = subprocess.run(
        ["git", "--git-dir", str(first.repo), "ls-tree", "-r", "--name-only", first.commit],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "one/main.tf" in files and "one/gitops_runner_state_override.tf" in files
    assert not [f for f in files if ".terraform/" in f or f.endswith(".tfplan")]


def run_cli(*args: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GITOPS_")}
    clean |= {"GITOPS_DATA_DIR": str(data_dir), **env}
    return subprocess.run([*CLI, *args], env=clean, capture_output=True, text=True, timeout=300)


def test_cli_once_on_a_plain_directory_then_drift_sees_it_in_sync(tmp_path: Path) -> None:
    directory = plain_directory(tmp_path)
    data = tmp_path / "data"

    first = run_cli("reconcile", "--repo", str(directory), "--once", data_dir=data)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "is not a git repository: snapshotted into" in first.stdout
    assert first.stdout.count("applied    ") == 3

    (directory / "two" / "main.tf").write_text(SAMPLE_TF.replace("default = 1", "default = 2"))
    second = run_cli("reconcile", "--repo", str(directory), "--once", data_dir=data)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "applied    two/default" in second.stdout and "one/" not in second.stdout

    # The state lives outside the checkouts: the drift scan's own tree sees it.
    drift = run_cli("drift", "--repo", str(directory), data_dir=data)
    assert drift.returncode == 0, drift.stdout + drift.stderr
    assert drift.stdout.count("in_sync ") == 3


def test_cli_once_on_a_file_url_exits_1_when_a_project_fails(tmp_path: Path) -> None:
    w = make_world(tmp_path, {"alpha": "a"})
    w.store.close()
    once = ("reconcile", "--repo", w.repo.path.as_uri(), "--once")

    ok = run_cli(*once, data_dir=w.settings.data_dir)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "applied    alpha/default" in ok.stdout and w.applied("alpha") == "a"

    w.write_project("broken", "x", failing=True)
    w.write_config({"alpha": "", "broken": ""})
    w.repo.commit("a project that cannot be applied")
    failed = run_cli(*once, data_dir=w.settings.data_dir)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "failed     broken/default" in failed.stdout and "alpha" not in failed.stdout


def test_the_server_reconciles_repos_that_have_a_poll_interval(tmp_path: Path) -> None:
    import time

    from runner.settings import PolledRepo
    from runner.wiring import build_web_services

    w = make_world(tmp_path, {"alpha": "a"})
    polled = PolledRepo(url=str(w.repo.path), poll_interval=5)
    settings = w.settings.model_copy(update={"repos": (polled,)})
    web = build_web_services(settings)
    assert web.start_workers is not None and web.stop_workers is not None
    web.start_workers()

    def applied() -> str | None:
        try:
            return w.applied("alpha")
        except json.JSONDecodeError:
            return None  # Terraform is writing the state right now

    try:
        deadline = time.monotonic() + 120
        while applied() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        web.stop_workers()
        web.store.close()
        w.store.close()
    assert w.applied("alpha") == "a"
