"""The answer to a drift scan asked of a server with a job queue: a new scan is queued,
the same scan asked again is that job, in whatever state it has reached.

Real store and git repository; the queue's own write (`enqueue_job`), no worker, so
the job stays where the test puts it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.drift.service import DriftService
from runner.drift.triggers import DriftScans
from runner.jobs.model import JobPayload
from runner.jobs.queue import enqueue_job
from runner.settings import Settings
from runner.store.jobs import JobStatus
from runner.store.store import Store
from runner.wiring import build_services
from tests.support.git_repo import GitRepo


@pytest.fixture
def scans(tmp_path: Path) -> Iterator[tuple[DriftScans, Store]]:
    repo = GitRepo.init(tmp_path / "repo")
    repo.write({"gitops-runner.yaml": "version: 1\nprojects:\n  - name: alpha\n    dir: alpha\n"})
    repo.commit("config")
    settings = Settings(data_dir=tmp_path / "data", repos=({"url": str(repo.path)},))  # type: ignore[arg-type]
    store = Store.open(settings.resolved_database_url)

    def submit(payload: JobPayload) -> int:
        return enqueue_job(store, payload)

    yield DriftScans(DriftService(build_services(settings, store)), submit_job=submit), store
    store.close()


def test_a_scan_asked_again_is_the_same_job_in_its_current_state(
    scans: tuple[DriftScans, Store],
) -> None:
    drift, store = scans

    first = drift.submit(project="alpha")
    again = drift.submit(project="alpha")
    store.jobs.claim_id(first.id, "worker-1")
    while_running = drift.submit(project="alpha")
    store.jobs.complete(first.id, "worker-1")
    after = drift.submit(project="alpha")

    assert (first.status, first.started) == (JobStatus.QUEUED, True)
    assert (again.id, again.status, again.started) == (first.id, JobStatus.QUEUED, False)
    assert (while_running.id, while_running.status, while_running.started) == (
        first.id,
        JobStatus.RUNNING,
        False,
    )
    assert after.id != first.id and (after.status, after.started) == (JobStatus.QUEUED, True)
