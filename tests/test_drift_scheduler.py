"""The drift scheduler fires once per deployment, and checks each repository out once a tick.

Once per deployment: separate OS processes, one SQLite database.

Like gunicorn workers (or replicas on one volume), each process builds its own store,
service and scheduler from the same settings; nothing is shared but the database. A
barrier lines the processes up so they tick at the same moment, for the same `now`.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from runner.drift.scheduler import DriftScheduleHandler, DriftScheduler
from runner.drift.service import DriftService
from runner.jobs.payloads import DriftScanJob, DriftScheduleJob
from runner.jobs.queue import enqueue_job
from runner.notify.base import NullNotifier
from runner.settings import Settings
from runner.store.drift import DriftStore
from runner.store.models import utcnow
from runner.store.store import Store
from runner.wiring import build_services
from runner.workspace.working_copy import WorkingCopies
from tests.support.drift_world import World, make_world

NOW = datetime(2024, 12, 2, 13, 59, tzinfo=UTC)
WAIT_S = 300  # generous: each process may plan real projects


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    w = make_world(
        tmp_path,
        monkeypatch,
        {"alpha": "a", "beta": "b"},
        repos=({"url": str(tmp_path / "repo")},),
        drift_schedule="0 * * * *",
    )
    yield w
    w.store.close()


def tick_in_a_process(
    values: dict[str, Any], now: datetime, barrier: Any, results: Any, release: bool
) -> None:
    """What one worker process does: build everything itself, then tick with the others."""
    settings = Settings(**values)
    store = Store.open(settings.resolved_database_url)
    try:
        service = DriftService(build_services(settings, store), notifier=NullNotifier())
        scheduler = DriftScheduler(service, owner=f"process-{os.getpid()}")
        barrier.wait(WAIT_S)
        reports = scheduler.tick(now)
        if release:
            scheduler.stop()  # gives the lease up, as a worker does at exit
        results.put([sorted(r.project for r in report.results) for report in reports])
    finally:
        store.close()


def tick_in_processes(world: World, now: datetime, *, release: bool = False) -> list[list]:
    """Two spawned processes tick at once; returns what each one scanned."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    values = {
        "data_dir": str(world.settings.data_dir),
        "repos": [{"url": str(world.repo.path)}],
        "drift_schedule": world.settings.drift_schedule,
        "parallelism": 2,
    }
    processes = [
        context.Process(target=tick_in_a_process, args=(values, now, barrier, results, release))
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=WAIT_S) for _ in processes]
    except queue.Empty:
        raise AssertionError("a scheduler process did not report back") from None
    finally:
        for process in processes:
            process.join(WAIT_S)
    assert [process.exitcode for process in processes] == [0, 0]
    return sorted(outcomes, key=len)


def stored_results(world: World) -> int:
    return len(DriftStore(world.store).history(world.drift_repo().key))


def test_two_processes_fire_a_slot_exactly_once(world: World) -> None:
    first = tick_in_processes(world, NOW, release=True)

    assert first == [[], [["alpha", "beta"]]]
    assert stored_results(world) == 2

    # The lease is free again, but the slot was claimed: nobody fires it a second time.
    again = tick_in_processes(world, NOW)

    assert again == [[], []]
    assert stored_results(world) == 2


def test_the_next_slot_fires_once_after_the_lease_holder_is_gone(world: World) -> None:
    tick_in_processes(world, NOW)  # the lease stays with a process that has exited

    later = tick_in_processes(world, NOW + timedelta(hours=1))

    assert later == [[], [["alpha", "beta"]]]
    assert stored_results(world) == 4


class CountingCopies(WorkingCopies):
    """Real working copies that count, per repository, the `git fetch`es run and the
    checkouts asked for: what a tick costs the git server and the disk."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.fetches: Counter[str] = Counter()
        self.checkouts: Counter[str] = Counter()

    def _git_fetch(self, remote: Any, refspecs: Sequence[str], **options: Any) -> Any:
        self.fetches[remote.fetch_url] += 1
        return super()._git_fetch(remote, refspecs, **options)

    def checkout(self, repo_url: str, key: str, commit: str, **options: Any) -> Path:
        self.checkouts[repo_url] += 1
        return super().checkout(repo_url, key, commit, **options)


def test_a_tick_fetches_and_checks_out_each_repository_once(world: World) -> None:
    copies = CountingCopies(world.settings.repos_dir)
    services = replace(build_services(world.settings, world.store), working_copies=copies)
    scheduler = DriftScheduler(DriftService(services, notifier=NullNotifier()), owner="only")

    reports = scheduler.tick(NOW)

    # The schedules are read in the checkout the due projects are then planned in.
    assert [sorted(r.project for r in report.results) for report in reports] == [["alpha", "beta"]]
    assert copies.fetches == {str(world.repo.path): 1}
    assert copies.checkouts == {str(world.repo.path): 1}


def test_a_scheduled_tick_is_a_job_that_scans_each_slot_once(world: World) -> None:
    service = DriftService(build_services(world.settings, world.store), notifier=NullNotifier())
    scheduler = DriftScheduler(service, owner="web-1")

    jobs = scheduler.due(NOW)

    # What the web process enqueues: one tick per repository, and not again before tick_s.
    assert jobs == [DriftScheduleJob(repo=world.drift_repo().key, at=NOW)]
    assert scheduler.due(NOW + timedelta(seconds=5)) == []
    # What a worker does with it: the due projects, once per slot however often it runs.
    handler = DriftScheduleHandler(DriftScheduler(service, owner="worker"))
    handler.handle(jobs[0], threading.Event())
    assert stored_results(world) == 2
    handler.handle(jobs[0], threading.Event())
    assert stored_results(world) == 2


def test_finished_ticks_are_pruned_after_a_day_and_other_jobs_kept(world: World) -> None:
    service = DriftService(build_services(world.settings, world.store), notifier=NullNotifier())
    tick = enqueue_job(world.store, DriftScheduleJob(repo=world.drift_repo().key, at=NOW))
    scan = enqueue_job(world.store, DriftScanJob(project="alpha"))
    for job_id in (tick, scan):
        assert world.store.jobs.claim_id(job_id, "worker") is not None
        assert world.store.jobs.complete(job_id, "worker")
    scheduler = DriftScheduler(service, owner="web-1")

    scheduler.due(utcnow() + timedelta(hours=1))  # not a day old yet
    assert world.store.jobs.get(tick) is not None
    scheduler = DriftScheduler(service, owner="web-1")
    scheduler.due(utcnow() + timedelta(days=2))

    assert world.store.jobs.get(tick) is None
    assert world.store.jobs.get(scan) is not None  # a scan someone asked for stays listed
