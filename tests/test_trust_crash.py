"""Applies cut short (issue 7, "one guarded path": run record, interrupted-run marking).

An apply that crashes, or whose runner process dies, may have changed real
infrastructure. Before, such a run read "running" forever and nobody was told. Now the
one apply path records the run before Terraform starts and marks it errored when
Terraform blows up, and a restarted runner marks runs of dead processes interrupted.

Everything is real (the store on SQLite and PostgreSQL, the state mutex from
`build_mutex`, a saved plan file with its checksum) except Terraform crashing, which is
one narrow fake.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import pytest

from runner.config.model import ProjectConfig
from runner.engine.apply import ApplyExecutor, ApplyItem, ApplyRequest, LockHolder
from runner.engine.project_mutex import ProjectMutex, build_mutex, state_key
from runner.events.model import canonical_repo_key
from runner.jobs.model import WorkEvent
from runner.jobs.recovery import recover
from runner.results.masking import Masker
from runner.results.model import PlanSummary
from runner.settings import Settings
from runner.store.locks import LockOwner
from runner.store.owners import hostname, process_owner_prefix
from runner.store.runs import RunStatus, Trigger
from runner.store.store import Store
from runner.terraform import Terraform
from runner.terraform.planfile import plan_checksum
from runner.terraform.result import CommandOutcome

REPO = canonical_repo_key("github.com", "acme/infra")
APP = ProjectConfig(name="infra/app", dir="infra/app")
SECRET = "ghp-runner-token-0123456789"


class CrashingTerraform:
    """Terraform that dies in the middle of `apply`, after noting what the store said."""

    def __init__(self, store: Store, crash: BaseException) -> None:
        self._store = store
        self._crash = crash
        self.runs_seen: list[RunStatus] = []

    def apply(
        self,
        workdir: Path,
        planfile: Path,
        log: Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        **_: object,
    ) -> CommandOutcome:
        self.runs_seen = [run.status for run in self._store.runs.list_runs()]
        raise self._crash


class NoJobs:
    """A job handler for a queue with no jobs: recovery must not need it."""

    def handle(self, event: WorkEvent, cancel: threading.Event) -> None:
        raise AssertionError("no job should run")

    def is_apply(self, event: WorkEvent) -> bool:
        raise AssertionError("there are no jobs to judge")

    def report_interrupted(self, event: WorkEvent) -> None:
        raise AssertionError("there are no jobs to report")


def planned_by_pr_7(store: Store, tree: Path) -> ApplyItem:
    """PR #7 planned infra/app: it holds the project lock and a saved plan file."""
    owner = LockOwner(pr_number=7, user="alice")
    assert store.locks.acquire(REPO, APP.dir, APP.workspace, owner).acquired
    plan = tree / APP.dir / "app.tfplan"
    plan.parent.mkdir(parents=True)
    plan.write_bytes(b"a saved plan\x00\x01")
    return ApplyItem(
        project=APP,
        plan_path=plan,
        plan_checksum=plan_checksum(plan),
        commit="c0ffee" * 6 + "c0ff",
        summary=PlanSummary(add=1),
        holder=LockHolder(pr_number=7),
    )


@pytest.mark.parametrize(
    "crash",
    [
        RuntimeError(f"provider plugin crashed (token {SECRET})"),
        KeyboardInterrupt(f"stopped by the operator (token {SECRET})"),
    ],
    ids=["terraform-crash", "interrupt"],
)
def test_an_apply_that_crashes_is_recorded_errored_and_frees_the_state(
    store: Store, tmp_path: Path, crash: BaseException
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    mutex: ProjectMutex = build_mutex(settings, store)
    tree = tmp_path / "checkout"
    item = planned_by_pr_7(store, tree)
    terraform = CrashingTerraform(store, crash)
    executor = ApplyExecutor(
        store,
        lambda version: cast(Terraform, terraform),
        mutex,
        tmp_path / "logs",
        Masker([SECRET]),
    )
    request = ApplyRequest(REPO, tree, (item,), Trigger.COMMENT, "alice", pr_number=7)

    with pytest.raises(type(crash)):
        executor.run(request)

    # The run was on record as running before Terraform started...
    assert terraform.runs_seen == [RunStatus.RUNNING]
    # ...and now says what happened, without the secret in the error.
    (run,) = store.runs.list_runs()
    assert (run.command, run.status, run.pr_number) == ("apply", RunStatus.ERRORED, 7)
    assert run.finished_at is not None
    assert run.error is not None and type(crash).__name__ in run.error
    assert SECRET not in run.error
    # The state is free for the next Terraform run.
    with mutex.hold(state_key(REPO, APP.dir, APP.workspace), wait=False):
        pass
    # The project lock stays with PR #7: people decide what happens next.
    lock = store.locks.get(REPO, APP.dir, APP.workspace)
    assert lock is not None and lock.owner_pr == 7


def a_dead_process_owner() -> str:
    """The owner id a runner process had, once that process has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    # A dead pid has no start time to read; the one it had is any nonzero number.
    return f"{hostname()}:{child.pid}:4242"


def start_apply_run(store: Store, owner: str) -> int:
    return store.runs.start(
        repo=REPO,
        project=APP.name,
        dir=APP.dir,
        workspace=APP.workspace,
        command="apply",
        trigger=Trigger.MERGE,
        pr_number=7,
        owner=owner,
    )


def test_a_restarted_runner_marks_applies_of_dead_processes_interrupted(store: Store) -> None:
    crashed = start_apply_run(store, a_dead_process_owner())
    still_running = start_apply_run(store, process_owner_prefix())
    on_another_host = start_apply_run(store, "another-host:1:4242")

    recover(store, NoJobs())

    run = store.runs.get_run(crashed)
    assert run is not None and run.status is RunStatus.INTERRUPTED
    assert run.finished_at is not None and run.error
    for live_or_unknown in (still_running, on_another_host):
        other = store.runs.get_run(live_or_unknown)
        assert other is not None and other.status is RunStatus.RUNNING
    # Recovering again (another worker starting) changes nothing.
    recover(store, NoJobs())
    assert [r.status for r in store.runs.list_runs()].count(RunStatus.INTERRUPTED) == 1
