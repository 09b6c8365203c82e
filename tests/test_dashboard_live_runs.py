"""A plan's run is on record, pointing at its growing log, while Terraform still runs.

The dashboard lists a run and streams its log only if the run row exists with its
`log_path` before Terraform is done. These tests run a real plan (files provider,
embedded or installed Terraform) held at Terraform's own state lock, and look at the
store and the log meanwhile.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from runner.config.loader import load_repo_config
from runner.config.model import ProjectConfig
from runner.engine.planner import PlanOptions, PlanTarget
from runner.engine.recording import LiveRuns, record_plan_result
from runner.results.model import PlanResult
from runner.store.runs import RunQuery, RunStatus, Trigger
from runner.wiring import build_services
from tests.support.dashboard import hold_state_lock, release_state_lock
from tests.support.drift_world import World, make_world

WAIT_S = 120  # a ceiling for a loaded machine, not a speed check


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    return make_world(tmp_path, monkeypatch, {"app": "content"})


def test_a_running_plan_is_recorded_with_its_log_before_it_ends(world: World) -> None:
    services = build_services(world.settings, world.store)
    [project] = load_repo_config(world.repo.path).projects
    repo = world.drift_repo().key
    live = LiveRuns(world.store, repo=repo, trigger=Trigger.COMMENT, commit="c0ffee", pr_number=5)
    opened = threading.Event()
    results: list[PlanResult] = []

    def log_opened(project: ProjectConfig, log: str) -> None:
        live.opened(project, log)
        opened.set()

    def plan() -> None:
        options = PlanOptions(log_opened=log_opened)
        target = PlanTarget(project, "test", ("-lock-timeout=120s",))
        results.extend(services.planner.plan_all(world.repo.path, [target], "c0ffee", options))

    state = world.state / "app.tfstate"
    held = hold_state_lock(state)
    planning = threading.Thread(target=plan)
    planning.start()
    try:
        assert opened.wait(WAIT_S)
        [running] = world.store.runs.search(RunQuery(status=RunStatus.RUNNING))
        assert (running.repo, running.pr_number, running.trigger) == (repo, 5, Trigger.COMMENT)
        assert running.log_path is not None
        log = Path(running.log_path)
        # Terraform is waiting for the lock: the log already says what runs (the file
        # itself appears with Terraform's first line, just after the run is recorded).
        assert _wait_for(lambda: log.is_file() and "terraform plan" in log.read_text())
        assert world.store.runs.get_run(running.id).status is RunStatus.RUNNING  # type: ignore[union-attr]
    finally:
        release_state_lock(state, held)
        planning.join()

    [result] = results
    run_id = record_plan_result(world.store, result, repo=repo, trigger=Trigger.COMMENT,
                                run_id=live.take(result))  # fmt: skip
    assert run_id == running.id
    finished = world.store.runs.get_run(run_id)
    assert finished is not None and finished.status is RunStatus.NO_CHANGES
    assert "No changes" in Path(finished.log_path or "").read_text()
    assert len(world.store.runs.search(RunQuery(repo=repo))) == 1  # one run, not two


def test_runs_of_a_cancelled_plan_do_not_stay_running(world: World) -> None:
    [project] = load_repo_config(world.repo.path).projects
    live = LiveRuns(world.store, repo="r", trigger=Trigger.AUTOPLAN, commit="c0ffee")
    live.opened(project, str(world.settings.data_dir / "logs" / "app.log"))

    live.cancel_rest()

    [run] = world.store.runs.search(RunQuery(repo="r"))
    assert run.status is RunStatus.CANCELLED
    assert run.finished_at is not None


def _wait_for(condition, timeout_s: float = WAIT_S) -> bool:  # type: ignore[no-untyped-def]
    event = threading.Event()
    for _ in range(int(timeout_s * 10)):
        if condition():
            return True
        event.wait(0.1)
    return False
