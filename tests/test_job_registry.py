"""Every kind of work is a job: the catalogue of kinds, the registry, the elected scheduler.

Against a real store (SQLite and PostgreSQL) and real queues; the handlers here only
record what they were given, since what a PR flow, a drift scan or a reconcile pass
does is tested where it lives. Who may put what in a job is tested as the attack: a job
naming a repository the server does not know is refused by the worker, not run.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from runner.cli import cli
from runner.drift.scheduler import DriftScheduleHandler, DriftScheduler
from runner.drift.service import DriftService
from runner.drift.triggers import DriftScanHandler, UnknownRepository
from runner.engine.project_mutex import FileMutex
from runner.events.model import PullRequestEvent, PullRequestRef
from runner.jobs.inprocess import InProcessQueue
from runner.jobs.model import (
    KINDS,
    PR_KINDS,
    UnknownJobFormat,
    decode_job,
    encode_job,
    select_kinds,
)
from runner.jobs.payloads import DriftScanJob, DriftScheduleJob, ReconcileJob
from runner.jobs.queue import enqueue_job
from runner.jobs.recovery import recover
from runner.jobs.registry import JobRegistry
from runner.jobs.scheduler import JobScheduler
from runner.reconcile.jobs import NotReconciled, ReconcileHandler, ReconcilePolls
from runner.reconcile.reconciler import Reconciler
from runner.settings import Settings
from runner.store.jobs import JobStatus
from runner.store.store import Store
from runner.wiring import build_services
from tests.support.jobs import FAST, REPO

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def pr_event(number: int) -> PullRequestEvent:
    pr = PullRequestRef(
        number=number,
        html_url=f"https://github.com/acme/infra/pull/{number}",
        author="alice",
        head_sha="a" * 40,
        head_ref="change",
        base_ref="main",
        base_sha="b" * 40,
        head_repo_full_name="acme/infra",
        is_fork=False,
        is_draft=False,
    )
    return PullRequestEvent(REPO, pr, "opened", False, None, "alice")


SAMPLES: list[Any] = [
    pr_event(1),
    DriftScanJob(repo="github.com/acme/infra", project="app"),
    DriftScheduleJob(repo="github.com/acme/infra", at=NOW),
    ReconcileJob(repo="file:///srv/infra.git", trigger="push", sha="c" * 40),
]


class Recording:
    """A handler of any kind that records what it ran; `hold` keeps a payload running."""

    def __init__(self) -> None:
        self.started: list[Any] = []
        self.hold: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def handle(self, event: Any, cancel: threading.Event) -> None:
        with self._lock:
            self.started.append(event)
        gate = self.hold.get(getattr(event, "sha", None) or "")
        if gate is not None:
            assert gate.wait(60)

    def is_apply(self, event: Any) -> bool:
        return isinstance(event, ReconcileJob)

    def report_interrupted(self, event: Any) -> None:
        pass


@pytest.fixture
def mutex(tmp_path: Path) -> FileMutex:
    return FileMutex(tmp_path / "locks")


def run_queue(store: Store, handler: Any, mutex: FileMutex) -> InProcessQueue:
    queue = InProcessQueue(store, handler, 2, mutex=mutex, timing=FAST)
    queue.start()
    return queue


def wait_for(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# ---- the catalogue -------------------------------------------------------------------------


@pytest.mark.parametrize("payload", SAMPLES, ids=lambda p: type(p).__name__)
def test_every_kind_round_trips_through_its_json_row(store: Store, payload: Any) -> None:
    job_id = enqueue_job(store, payload)
    record = store.jobs.get(job_id)

    assert record is not None
    assert decode_job(record.kind, record.payload, record.version) == payload
    assert record.group_key == encode_job(payload).group_key


def test_a_drift_scan_row_written_before_the_registry_is_still_read(store: Store) -> None:
    job_id = store.jobs.enqueue("drift_scan", {"repo": None, "project": "app"}, version=1)
    record = store.jobs.get(job_id)
    assert record is not None

    assert decode_job(record.kind, record.payload, record.version) == DriftScanJob(project="app")


@pytest.mark.parametrize(
    ("kind", "payload", "version"),
    [
        ("compliance_report", {}, 1),  # a newer runner's kind
        ("reconcile", {"repo": "x"}, 2),  # a newer version of a known kind
        ("reconcile", {"repo": ["not", "a", "string"]}, 1),  # a payload that does not validate
        ("pull_request", {"repo": {}}, 2),
    ],
)
def test_kinds_versions_and_payloads_it_cannot_read_are_refused(
    kind: str, payload: dict[str, Any], version: int
) -> None:
    with pytest.raises(UnknownJobFormat):
        decode_job(kind, payload, version)


def test_worker_kinds_are_families_or_kinds_and_a_typo_is_refused() -> None:
    assert select_kinds(["drift"]) == ("drift_scan", "drift_schedule")
    assert select_kinds(["pr", "reconcile"]) == (*PR_KINDS, "reconcile")
    assert select_kinds(["drift_scan", " drift "]) == ("drift_scan", "drift_schedule")
    with pytest.raises(ValueError, match="unknown job kind 'drfit'"):
        select_kinds(["drfit"])

    result = CliRunner().invoke(cli, ["worker", "--kinds", "drfit"])

    assert result.exit_code == 2 and "unknown job kind 'drfit'" in result.output


def test_the_registry_knows_only_kinds_of_the_catalogue() -> None:
    with pytest.raises(ValueError, match="no such job kind"):
        JobRegistry({"bitcoin_miner": Recording()})
    registry = JobRegistry(dict.fromkeys(KINDS, Recording()))
    assert registry.only(["reconcile"]).kinds == ("reconcile",)


# ---- who claims what -----------------------------------------------------------------------


def test_a_worker_claims_only_the_kinds_it_runs(store: Store, mutex: FileMutex) -> None:
    pull = enqueue_job(store, pr_event(2))
    reconcile = enqueue_job(store, ReconcileJob(repo="file:///srv/infra.git"))
    # Written by a newer runner during a rolling upgrade: nobody here may claim it.
    future = store.jobs.enqueue("compliance_report", {"scope": "all"}, version=1)
    handler = Recording()

    queue = run_queue(store, JobRegistry({"reconcile": handler}), mutex)  # --kinds reconcile
    try:
        wait_for(lambda: store.jobs.get(reconcile).status is JobStatus.DONE, "the reconcile")  # type: ignore[union-attr]
    finally:
        queue.stop(timeout=10)
    assert store.jobs.get(pull).status is JobStatus.QUEUED  # type: ignore[union-attr]

    pr_only = Recording()
    queue = run_queue(store, pr_only, mutex)  # a PR flow handler of an older version
    try:
        wait_for(lambda: store.jobs.get(pull).status is JobStatus.DONE, "the PR job")  # type: ignore[union-attr]
    finally:
        queue.stop(timeout=10)
    assert store.jobs.get(future).status is JobStatus.QUEUED  # type: ignore[union-attr]
    assert [type(e).__name__ for e in handler.started + pr_only.started] == [
        "ReconcileJob",
        "PullRequestEvent",
    ]


def test_recovery_leaves_a_dead_workers_job_of_another_kind_to_its_workers(store: Store) -> None:
    job_id = enqueue_job(store, DriftScanJob(project="app"))
    dead = "localhost-that-is-not-us:1:1:drift:x."
    assert store.jobs.claim_id(job_id, dead, lease_s=0.0) is not None
    time.sleep(0.01)  # let the zero-second lease end

    left = recover(store, Recording(), lease_grace=0.0, kinds=PR_KINDS)
    assert (left.requeued, left.interrupted) == ([], [])
    assert store.jobs.get(job_id).status is JobStatus.RUNNING  # type: ignore[union-attr]
    taken = recover(store, Recording(), lease_grace=0.0, kinds=("drift_scan",))
    assert taken.requeued == [job_id]


def test_reconcile_passes_of_one_repository_never_overlap(store: Store, mutex: FileMutex) -> None:
    handler = Recording()
    handler.hold["first"] = threading.Event()
    first = enqueue_job(store, ReconcileJob(repo="file:///srv/infra.git", sha="first"))
    second = enqueue_job(store, ReconcileJob(repo="file:///srv/infra.git", sha="second"))
    other = enqueue_job(store, ReconcileJob(repo="file:///srv/other.git", sha="other"))
    queues = [run_queue(store, JobRegistry({"reconcile": handler}), mutex) for _ in range(2)]
    try:
        # Four threads: the first pass runs, the second is claimed and waits its turn, the
        # other repository's pass runs meanwhile.
        wait_for(lambda: store.jobs.get(other).status is JobStatus.DONE, "the other repository")  # type: ignore[union-attr]
        wait_for(lambda: store.jobs.get(second).status is JobStatus.RUNNING, "the second claim")  # type: ignore[union-attr]
        assert [e.sha for e in handler.started if e.repo.endswith("infra.git")] == ["first"]
        handler.hold["first"].set()
        wait_for(lambda: store.jobs.get(second).status is JobStatus.DONE, "the second pass")  # type: ignore[union-attr]
    finally:
        for queue in queues:
            queue.stop(timeout=10)
    assert store.jobs.get(first).status is JobStatus.DONE  # type: ignore[union-attr]
    assert [e.sha for e in handler.started if e.repo.endswith("infra.git")] == ["first", "second"]


# ---- jobs a worker must refuse -------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", repos=())  # type: ignore[call-arg]


def test_a_forged_reconcile_job_for_an_unconfigured_repository_is_refused(
    settings: Settings, tmp_path: Path, mutex: FileMutex
) -> None:
    services = build_services(settings)
    handler = ReconcileHandler(Reconciler(services), settings)
    forged = ReconcileJob(repo=str(tmp_path / "someone-elses-repo"), trigger="push")
    job_id = enqueue_job(services.store, forged)

    queue = run_queue(services.store, JobRegistry({"reconcile": handler}), mutex)
    try:
        wait_for(
            lambda: services.store.jobs.get(job_id).status is JobStatus.FAILED,  # type: ignore[union-attr]
            "the job to be refused",
        )
    finally:
        queue.stop(timeout=10)
    record = services.store.jobs.get(job_id)
    assert record is not None and "is not a reconciled repository" in (record.error or "")
    assert not settings.repos_dir.exists() or not any(settings.repos_dir.iterdir())  # no clone
    with pytest.raises(NotReconciled):
        handler.handle(forged, threading.Event())


def test_forged_drift_jobs_for_unconfigured_repositories_are_refused(settings: Settings) -> None:
    service = DriftService(build_services(settings))

    with pytest.raises(UnknownRepository):
        DriftScanHandler(service).handle(DriftScanJob(repo="/etc"), threading.Event())
    with pytest.raises(LookupError, match="not a configured repository"):
        DriftScheduleHandler(DriftScheduler(service)).handle(
            DriftScheduleJob(repo="/etc", at=NOW), threading.Event()
        )
    assert not settings.repos_dir.exists() or not any(settings.repos_dir.iterdir())


# ---- the elected scheduler -----------------------------------------------------------------


@pytest.fixture
def polled(tmp_path: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        repos=({"url": "file:///srv/infra.git", "poll_interval": 60},),
    )


def test_two_schedulers_on_one_store_submit_once_and_hand_over(
    store: Store, polled: Settings
) -> None:
    def scheduler(name: str) -> JobScheduler:
        return JobScheduler(
            store,
            lambda payload: enqueue_job(store, payload),
            [ReconcilePolls(polled)],
            owner=name,
        )

    first, second = scheduler("web-1"), scheduler("web-2")

    assert len(first.tick(NOW)) == 1
    assert second.tick(NOW) == []  # not the lease holder
    assert first.tick(NOW + timedelta(seconds=10)) == []  # not due again before its interval
    first.stop()  # gives the lease up: the other process takes over at once
    assert len(second.tick(NOW + timedelta(seconds=20))) == 1
    polls = store.jobs.list(kind="reconcile")
    # The second poll, while the first is still queued, is the same job (its dedupe key).
    assert len(polls) == 1 and polls[0].payload == {
        "repo": "file:///srv/infra.git",
        "trigger": "poll",
        "sha": None,
    }
