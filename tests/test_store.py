"""The store on SQLite and PostgreSQL: migrations, runs/plans, deliveries, jobs, comments."""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, inspect, text
from sqlalchemy.exc import DBAPIError, OperationalError

import runner.store.db as store_db
import runner.store.jobs as store_jobs
from runner.results.model import PlanSummary, ResourceChange
from runner.store import JobStatus, RunStatus, Store, Trigger, default_database_url, migrate
from runner.store.db import (
    alembic_config,
    current_revision,
    head_revision,
    make_engine,
    normalize_url,
)
from runner.store.deliveries import DeliveryRef, DuplicateDelivery
from runner.store.models import Base
from runner.terraform.planfile import plan_checksum

REPO = "github.com/acme/infra"
SHA_A = "a" * 40
SHA_B = "b" * 40
_WAIT_S = 120  # upper bound so a broken test fails instead of hanging; never asserted on

TABLES = {"alembic_version", "runs", "plans", "locks", "deliveries", "jobs", "comments"}


# --- plumbing and migrations -------------------------------------------------------------


def test_default_database_url_is_a_sqlite_file_in_the_data_dir(tmp_path: Path) -> None:
    assert default_database_url(tmp_path) == f"sqlite:///{tmp_path}/gitops-runner.db"


@pytest.mark.parametrize(
    "url",
    ["postgresql://u:p@db:5432/runner", "postgres://u:p@db:5432/runner"],
)
def test_plain_postgresql_urls_use_psycopg3(url: str) -> None:
    normalized = normalize_url(url)
    assert normalized.drivername == "postgresql+psycopg"
    assert normalized.render_as_string(hide_password=False) == (
        "postgresql+psycopg://u:p@db:5432/runner"
    )


def test_explicit_driver_is_kept() -> None:
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"
    assert normalize_url("postgresql+psycopg://h/db").drivername == "postgresql+psycopg"


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    finally:
        engine.dispose()


def test_sqlite_syncs_at_checkpoints_not_at_every_commit(sqlite_url: str) -> None:
    """synchronous=NORMAL in WAL mode: see docs/store.md for the trade-off."""
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    finally:
        engine.dispose()


def test_sqlite_parent_directory_is_created(tmp_path: Path) -> None:
    url = default_database_url(tmp_path / "nested" / "data")
    with Store.open(url) as store:
        assert store.deliveries.record_delivery("d-1", "github", "push")
    assert (tmp_path / "nested" / "data" / "gitops-runner.db").is_file()


def test_migrations_apply_and_rerunning_is_a_noop(db_url: str) -> None:
    assert current_revision(db_url) is None
    migrate(db_url)
    assert current_revision(db_url) == head_revision()

    engine = make_engine(db_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO deliveries (delivery_id, forge, event, received_at)"
                    " VALUES ('kept', 'github', 'push', CURRENT_TIMESTAMP)"
                )
            )
        migrate(db_url)  # again: nothing to do, data untouched
        assert current_revision(db_url) == head_revision()
        assert set(inspect(engine).get_table_names()) >= TABLES
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM deliveries")).scalar() == 1
    finally:
        engine.dispose()


def test_models_match_the_migrations(migrated_url: str) -> None:
    """A model change without a migration (or the reverse) shows up here."""
    engine = make_engine(migrated_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(db_url: str) -> None:
    migrate(db_url)
    command.downgrade(alembic_config(db_url), "base")
    assert current_revision(db_url) is None
    migrate(db_url)
    assert current_revision(db_url) == head_revision()


def _migrate_in_process(url: str, barrier: Any, results: Any) -> None:
    try:
        barrier.wait(timeout=_WAIT_S)
        migrate(url)
        results.put(None)
    except BaseException as error:
        results.put(repr(error))


def test_concurrent_migrate_from_several_processes(db_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    results = context.Queue()
    processes = [
        context.Process(target=_migrate_in_process, args=(db_url, barrier, results))
        for _ in range(3)
    ]
    for process in processes:
        process.start()
    errors = [results.get(timeout=_WAIT_S) for _ in processes]
    for process in processes:
        process.join(timeout=_WAIT_S)
    assert errors == [None, None, None]
    assert current_revision(db_url) == head_revision()


def _connection_identity(store: Store) -> object:
    """Which server connection the pool hands out (PostgreSQL: its backend pid)."""
    if store.dialect != "postgresql":
        return None
    with store.read() as session:
        return session.execute(text("SELECT pg_backend_pid()")).scalar()


def _record_in_forked_child(store: Store, results: Any) -> None:
    try:
        recorded = store.deliveries.record_delivery("from-child", "github", "push")
        results.put((recorded, _connection_identity(store)))
    except BaseException as error:
        results.put((repr(error), None))


def test_forked_child_gets_its_own_connections(store: Store) -> None:
    """RQ forks a process per job: the child must not reuse the parent's pooled connection."""
    assert store.deliveries.record_delivery("from-parent", "github", "push")
    parent_connection = _connection_identity(store)  # now pooled, ready for reuse
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_record_in_forked_child, args=(store, results))
    child.start()
    recorded, child_connection = results.get(timeout=_WAIT_S)
    child.join(timeout=_WAIT_S)

    assert recorded is True
    assert child.exitcode == 0
    if store.dialect == "postgresql":
        assert child_connection != parent_connection
    assert _connection_identity(store) == parent_connection  # the parent's still works
    assert not store.deliveries.record_delivery("from-child", "github", "push")
    assert store.deliveries.record_delivery("parent-again", "github", "push")


def test_in_memory_sqlite_store_works() -> None:
    with Store.open("sqlite://") as store:
        assert store.deliveries.record_delivery("d", "github", "push")
        assert not store.deliveries.record_delivery("d", "github", "push")


# --- runs and plans ----------------------------------------------------------------------


def _start(store: Store, **overrides: Any) -> int:
    values: dict[str, Any] = {
        "repo": REPO,
        "pr_number": 12,
        "project": "prod",
        "dir": "envs/prod",
        "workspace": "default",
        "command": "plan",
        "trigger": Trigger.AUTOPLAN,
        "commit_sha": SHA_A,
        "author": "alice",
    }
    values.update(overrides)
    return store.runs.start(**values)


def test_run_round_trip(store: Store) -> None:
    run_id = _start(store, log_path="/data/logs/1.log")
    started = store.runs.get_run(run_id)
    assert started is not None
    assert started.status is RunStatus.RUNNING
    assert started.trigger is Trigger.AUTOPLAN
    assert started.finished_at is None
    assert started.summary is None
    assert started.started_at.tzinfo is UTC

    summary = PlanSummary(add=3, change=1, destroy=2, replace=1, import_=4, drifted=5)
    finished = store.runs.finish(run_id, "success", summary)

    assert store.runs.get_run(run_id) == finished
    assert finished.status is RunStatus.SUCCESS
    assert finished.summary == summary
    assert finished.finished_at is not None and finished.finished_at >= finished.started_at
    assert finished.log_path == "/data/logs/1.log"  # kept when finish() gives none
    assert (finished.repo, finished.pr_number, finished.project) == (REPO, 12, "prod")
    assert (finished.dir, finished.workspace, finished.command) == ("envs/prod", "default", "plan")
    assert (finished.commit_sha, finished.author) == (SHA_A, "alice")


def test_failed_run_keeps_error_and_log(store: Store) -> None:
    run_id = _start(store, pr_number=None, trigger="schedule", command="drift")
    record = store.runs.finish(run_id, RunStatus.ERRORED, error="boom", log_path="/l/2.log")
    assert (record.status, record.error, record.log_path) == (RunStatus.ERRORED, "boom", "/l/2.log")
    assert record.pr_number is None
    assert record.summary is None


def test_run_status_is_validated(store: Store) -> None:
    with pytest.raises(ValueError):
        _start(store, status="success")
    run_id = _start(store)
    with pytest.raises(ValueError):
        store.runs.finish(run_id, "running")
    with pytest.raises(ValueError):
        store.runs.finish(run_id, "not-a-status")
    with pytest.raises(ValueError):
        _start(store, trigger="telepathy")
    with pytest.raises(KeyError):
        store.runs.finish(999_999, "success")
    assert store.runs.get_run(999_999) is None


def test_list_runs_newest_first_with_filters(store: Store) -> None:
    ids = [_start(store, pr_number=pr) for pr in (1, 2, 1)]
    other = _start(store, repo="github.com/acme/other")

    assert [run.id for run in store.runs.list_runs()] == [other, *reversed(ids)]
    assert [run.id for run in store.runs.list_runs(REPO)] == list(reversed(ids))
    assert [run.id for run in store.runs.list_runs(REPO, pr_number=1)] == [ids[2], ids[0]]
    assert len(store.runs.list_runs(limit=2)) == 2


def _plan(store: Store, tmp_path: Path, commit: str, project: str = "prod", **run: Any) -> int:
    run_id = _start(store, commit_sha=commit, project=project, dir=f"envs/{project}", **run)
    plan_file = tmp_path / f"{project}-{commit[:7]}-{run_id}.tfplan"
    plan_file.write_bytes(f"plan {project} {commit} {run_id}".encode())
    changes = (
        ResourceChange("aws_s3_bucket.logs", ("create",)),
        ResourceChange("aws_iam_role.app", ("delete", "create")),
    )
    return store.runs.record_plan(
        run_id, path=str(plan_file), checksum=plan_checksum(plan_file), changes=changes
    )


def test_plan_round_trip(store: Store, tmp_path: Path) -> None:
    plan_id = _plan(store, tmp_path, SHA_A)
    plan = store.runs.get_plan(plan_id)

    assert plan is not None
    assert (plan.repo, plan.pr_number, plan.project, plan.dir) == (REPO, 12, "prod", "envs/prod")
    assert (plan.workspace, plan.commit_sha) == ("default", SHA_A)
    assert plan.changes == (
        ResourceChange("aws_s3_bucket.logs", ("create",)),
        ResourceChange("aws_iam_role.app", ("delete", "create")),
    )
    assert plan.discarded_at is None
    assert plan.file_matches()
    Path(plan.path).write_bytes(b"tampered")
    assert not plan.file_matches()
    Path(plan.path).unlink()
    assert not plan.file_matches()


def test_record_plan_validates_checksum_and_commit(store: Store) -> None:
    run_id = _start(store, commit_sha=None)
    with pytest.raises(ValueError, match="checksum"):
        store.runs.record_plan(run_id, path="/p", checksum="nope")
    with pytest.raises(ValueError, match="commit"):
        store.runs.record_plan(run_id, path="/p", checksum="0" * 64)
    plan_id = store.runs.record_plan(run_id, path="/p", checksum="0" * 64, commit_sha=SHA_B)
    assert store.runs.get_plan(plan_id).commit_sha == SHA_B


def test_latest_plans_are_the_newest_per_project(store: Store, tmp_path: Path) -> None:
    _plan(store, tmp_path, SHA_A, "prod")
    newer_prod = _plan(store, tmp_path, SHA_A, "prod")
    staging = _plan(store, tmp_path, SHA_A, "staging")
    _plan(store, tmp_path, SHA_A, "prod", pr_number=99)  # another PR

    latest = store.runs.latest_plans(REPO, 12)

    assert [plan.id for plan in latest] == [newer_prod, staging]


def test_discard_plans_keeps_those_at_the_new_commit(store: Store, tmp_path: Path) -> None:
    _plan(store, tmp_path, SHA_A, "prod")
    _plan(store, tmp_path, SHA_A, "staging")
    fresh = _plan(store, tmp_path, SHA_B, "prod")
    other_pr = _plan(store, tmp_path, SHA_A, "prod", pr_number=99)

    assert store.runs.discard_plans(REPO, 12, except_commit=SHA_B) == 2
    assert [plan.id for plan in store.runs.latest_plans(REPO, 12)] == [fresh]
    assert store.runs.discard_plans(REPO, 12, except_commit=SHA_B) == 0  # already discarded

    assert store.runs.discard_plans(REPO, 12) == 1
    assert store.runs.latest_plans(REPO, 12) == []
    discarded = store.runs.get_plan(fresh)
    assert discarded is not None and discarded.discarded_at is not None
    assert [plan.id for plan in store.runs.latest_plans(REPO, 99)] == [other_pr]


def test_live_plan_checksums_are_the_plans_not_discarded(store: Store, tmp_path: Path) -> None:
    """What the plan store must keep past its retention: a closed PR's plans go."""
    closed = store.runs.get_plan(_plan(store, tmp_path, SHA_A, "prod"))
    applied = store.runs.get_plan(_plan(store, tmp_path, SHA_A, "staging", pr_number=7))
    pending = store.runs.get_plan(_plan(store, tmp_path, SHA_A, "prod", pr_number=99))
    assert closed and applied and pending
    store.runs.discard_plans(REPO, 12)
    store.runs.discard_plan(applied.id)

    assert store.runs.live_plan_checksums() == {pending.checksum}


# --- deliveries --------------------------------------------------------------------------


def test_delivery_is_new_once(store: Store) -> None:
    assert store.deliveries.record_delivery("72d3162e-cc78", "github", "pull_request")
    assert not store.deliveries.record_delivery("72d3162e-cc78", "github", "pull_request")
    assert store.deliveries.record_delivery("another", "gitlab", "Merge Request Hook")


def test_delivery_dedupe_survives_a_restart(migrated_url: str) -> None:
    with Store.open(migrated_url) as before:
        assert before.deliveries.record_delivery("d-42", "github", "push")
    with Store.open(migrated_url) as after:
        assert not after.deliveries.record_delivery("d-42", "github", "push")


def test_concurrent_duplicate_deliveries_are_new_exactly_once(store: Store) -> None:
    barrier = threading.Barrier(8)

    def deliver(_: int) -> bool:
        barrier.wait(timeout=_WAIT_S)
        return store.deliveries.record_delivery("same", "github", "issue_comment")

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(deliver, range(8)))
    assert outcomes.count(True) == 1


def test_prune_deliveries(store: Store) -> None:
    store.deliveries.record_delivery("old", "github", "push")
    assert store.deliveries.prune(datetime.now(UTC) - timedelta(days=1)) == 0
    assert store.deliveries.prune(datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert store.deliveries.record_delivery("old", "github", "push")


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(Exception, match="naive"):
        store.deliveries.prune(datetime.now())  # the point of the test


# --- jobs --------------------------------------------------------------------------------


def test_job_lifecycle(store: Store) -> None:
    job_id = store.jobs.enqueue("plan", {"repo": REPO, "pr": 12, "projects": ["prod"]})
    queued = store.jobs.get(job_id)
    assert queued is not None
    assert (queued.status, queued.attempts, queued.version) == (JobStatus.QUEUED, 0, 1)
    assert queued.payload == {"repo": REPO, "pr": 12, "projects": ["prod"]}

    claimed = store.jobs.claim("worker-1", lease_s=60)
    assert claimed is not None and claimed.id == job_id
    assert (claimed.status, claimed.lease_owner, claimed.attempts) == (
        JobStatus.RUNNING,
        "worker-1",
        1,
    )
    assert claimed.lease_expires_at is not None and claimed.started_at is not None
    assert claimed.lease_expires_at > claimed.started_at
    assert store.jobs.claim("worker-2") is None

    assert store.jobs.heartbeat(job_id, "worker-1", lease_s=120)
    assert not store.jobs.complete(job_id, worker_id="worker-2")  # not its job
    assert store.jobs.complete(job_id, worker_id="worker-1")
    done = store.jobs.get(job_id)
    assert done is not None and done.status is JobStatus.DONE and done.finished_at is not None
    assert not store.jobs.complete(job_id)  # only running jobs finish
    assert not store.jobs.heartbeat(job_id, "worker-1")


def test_failed_and_cancelled_jobs(store: Store) -> None:
    failing = store.jobs.enqueue("apply", {"n": 1})
    cancelled = store.jobs.enqueue("apply", {"n": 2})
    store.jobs.claim("w")
    assert store.jobs.fail(failing, "terraform exited 1")
    assert store.jobs.cancel(cancelled)
    assert not store.jobs.cancel(failing)  # already finished

    assert [(job.id, job.status, job.error) for job in store.jobs.list()] == [
        (failing, JobStatus.FAILED, "terraform exited 1"),
        (cancelled, JobStatus.CANCELLED, None),
    ]
    assert [job.id for job in store.jobs.list(status="failed")] == [failing]
    assert store.jobs.claim("w") is None


def test_claim_takes_oldest_of_the_requested_kinds(store: Store) -> None:
    plan = store.jobs.enqueue("plan", {})
    drift = store.jobs.enqueue("drift", {})
    plan_2 = store.jobs.enqueue("plan", {})

    assert store.jobs.claim("w", kinds=["drift"]).id == drift
    assert store.jobs.claim("w", kinds={"plan", "apply"}).id == plan
    assert store.jobs.claim("w").id == plan_2
    assert store.jobs.list(kind="plan", status=JobStatus.RUNNING)[0].id == plan


def test_dedupe_key_while_the_job_is_active(store: Store) -> None:
    first = store.jobs.enqueue("plan", {"v": 1}, dedupe_key="plan:acme/infra#12")
    assert store.jobs.enqueue("plan", {"v": 2}, dedupe_key="plan:acme/infra#12") == first
    store.jobs.claim("w")
    assert store.jobs.enqueue("plan", {"v": 3}, dedupe_key="plan:acme/infra#12") == first
    store.jobs.complete(first)

    second = store.jobs.enqueue("plan", {"v": 4}, dedupe_key="plan:acme/infra#12")
    assert second != first
    assert store.jobs.enqueue("plan", {"v": 5}) not in (first, second)  # no key, no dedupe
    assert store.jobs.get(first).payload == {"v": 1}


def test_concurrent_enqueue_with_same_dedupe_key_creates_one_job(store: Store) -> None:
    barrier = threading.Barrier(8)

    def enqueue(index: int) -> int:
        barrier.wait(timeout=_WAIT_S)
        return store.jobs.enqueue("plan", {"i": index}, dedupe_key="k")

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(enqueue, range(8)))
    assert len(ids) == 1
    assert len(store.jobs.list()) == 1


def test_claims_from_many_threads_never_share_a_job(store: Store) -> None:
    job_ids = {store.jobs.enqueue("plan", {"n": n}) for n in range(60)}
    workers = 8
    barrier = threading.Barrier(workers)

    def drain(worker: int) -> list[int]:
        barrier.wait(timeout=_WAIT_S)
        taken = []
        while (job := store.jobs.claim(f"worker-{worker}")) is not None:
            taken.append(job.id)
        return taken

    with ThreadPoolExecutor(max_workers=workers) as pool:
        per_worker = list(pool.map(drain, range(workers)))

    claims = Counter(job_id for taken in per_worker for job_id in taken)
    assert set(claims) == job_ids
    assert all(count == 1 for count in claims.values())
    assert all(job.attempts == 1 for job in store.jobs.list(status="running"))


def _claim_in_process(url: str, worker: str, barrier: Any, results: Any) -> None:
    store = Store.open(url, upgrade=False)
    taken: list[int] = []
    try:
        barrier.wait(timeout=_WAIT_S)
        while (job := store.jobs.claim(worker)) is not None:
            taken.append(job.id)
        results.put((taken, None))
    except BaseException as error:
        results.put((taken, repr(error)))
    finally:
        store.close()


def test_claims_from_several_processes_never_share_a_job(store: Store, migrated_url: str) -> None:
    job_ids = {store.jobs.enqueue("plan", {"n": n}) for n in range(60)}
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    results = context.Queue()
    processes = [
        context.Process(target=_claim_in_process, args=(migrated_url, f"p{n}", barrier, results))
        for n in range(3)
    ]
    for process in processes:
        process.start()
    reports = [results.get(timeout=_WAIT_S) for _ in processes]
    for process in processes:
        process.join(timeout=_WAIT_S)

    assert [error for _, error in reports if error] == []
    claims = Counter(job_id for taken, _ in reports for job_id in taken)
    assert set(claims) == job_ids
    assert all(count == 1 for count in claims.values())


def test_queued_jobs_survive_a_restart(migrated_url: str) -> None:
    with Store.open(migrated_url) as before:
        job_id = before.jobs.enqueue("plan", {"pr": 12}, dedupe_key="plan#12")
    with Store.open(migrated_url) as after:
        job = after.jobs.claim("new-worker")
        assert job is not None and job.id == job_id and job.payload == {"pr": 12}


def test_expired_lease_is_requeued_or_interrupted_by_kind(store: Store) -> None:
    plan = store.jobs.enqueue("plan", {})
    apply = store.jobs.enqueue("apply", {})
    fresh = store.jobs.enqueue("plan", {})
    store.jobs.claim("dead-worker", lease_s=60)
    store.jobs.claim("dead-worker", lease_s=60)
    store.jobs.claim("live-worker", lease_s=3600)

    # Judged as of a moment past the short leases: no sleeping, no clock games.
    later = datetime.now(UTC) + timedelta(minutes=5)
    recovered = store.jobs.requeue_expired(later, retry_kinds={"plan"})

    assert [(job.id, job.status) for job in recovered] == [
        (plan, JobStatus.QUEUED),
        (apply, JobStatus.INTERRUPTED),
    ]
    assert store.jobs.get(fresh).status is JobStatus.RUNNING
    assert "lease expired" in (store.jobs.get(apply).error or "")
    # The dead worker's late outcome is refused; the job is someone else's now.
    assert not store.jobs.complete(plan, worker_id="dead-worker")
    again = store.jobs.claim("new-worker")
    assert again is not None and again.id == plan and again.attempts == 2
    assert store.jobs.requeue_expired(later, retry_kinds={"plan"}) == []


def test_requeue_gives_up_after_max_attempts(store: Store) -> None:
    job_id = store.jobs.enqueue("plan", {})
    later = datetime.now(UTC) + timedelta(minutes=5)
    for _ in range(2):
        store.jobs.claim("w", lease_s=1)
        store.jobs.requeue_expired(later, retry_kinds={"plan"}, max_attempts=2)
    job = store.jobs.get(job_id)
    assert job is not None and job.status is JobStatus.INTERRUPTED and job.attempts == 2


def test_job_left_running_is_recovered_after_restart(migrated_url: str) -> None:
    with Store.open(migrated_url) as before:
        mine = before.jobs.enqueue("plan", {})
        theirs = before.jobs.enqueue("plan", {})
        before.jobs.claim("host-a:123", lease_s=3600)
        before.jobs.claim("host-b:456", lease_s=3600)
        # ... the process dies here, nothing is completed ...

    with Store.open(migrated_url) as after:
        recovered = after.jobs.recover_after_restart("host-a:", retry_kinds={"plan"})
        assert [(job.id, job.status) for job in recovered] == [(mine, JobStatus.QUEUED)]
        assert after.jobs.get(theirs).status is JobStatus.RUNNING

        everything = after.jobs.recover_after_restart()
        assert [(job.id, job.status) for job in everything] == [(theirs, JobStatus.INTERRUPTED)]


def test_prune_finished_jobs(store: Store) -> None:
    done = store.jobs.enqueue("plan", {})
    store.jobs.enqueue("plan", {})
    store.jobs.claim("w")
    store.jobs.complete(done)
    assert store.jobs.prune(datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert [job.status for job in store.jobs.list()] == [JobStatus.QUEUED]


# --- comments ----------------------------------------------------------------------------


def test_comments_are_marked_outdated_once(store: Store) -> None:
    old = store.comments.record(REPO, 12, 1001, "plan", SHA_A)
    assert store.comments.record(REPO, 12, "1001", "plan", SHA_A) == old  # idempotent
    store.comments.record(REPO, 12, 1002, "apply", SHA_A)
    current = store.comments.record(REPO, 12, 1003, "plan", SHA_B)

    outdated = store.comments.mark_outdated(REPO, 12, "plan", current_commit=SHA_B)

    assert [(c.id, c.comment_id) for c in outdated] == [(old, "1001")]
    assert outdated[0].outdated_at is not None
    assert store.comments.mark_outdated(REPO, 12, "plan", current_commit=SHA_B) == []
    assert [c.id for c in store.comments.list(REPO, 12, kind="plan")] == [old, current]
    assert len(store.comments.list(REPO, 12)) == 3


# --- one write per webhook: delivery + job, group key, writer lock -----------------------


def _commits(store: Store) -> list[int]:
    """A list that grows by one at every COMMIT of `store`'s engine."""
    commits: list[int] = []
    event.listen(store.engine, "commit", lambda _connection: commits.append(1))
    return commits


def test_enqueue_with_a_delivery_records_both_in_one_transaction(store: Store) -> None:
    commits = _commits(store)

    job_id = store.jobs.enqueue(
        "pull_request", {"n": 1}, group_key="g#1", delivery=DeliveryRef("d-1", "github", "pr")
    )

    assert len(commits) == 1
    record = store.jobs.get(job_id)
    assert record is not None and record.group_key == "g#1"
    assert record.status is JobStatus.QUEUED
    assert not store.deliveries.record_delivery("d-1", "github", "pr")  # it was recorded


def test_a_duplicate_delivery_enqueues_nothing(store: Store) -> None:
    delivery = DeliveryRef("d-dup", "github", "pull_request")
    first = store.jobs.enqueue("pull_request", {"n": 1}, delivery=delivery)

    with pytest.raises(DuplicateDelivery):
        store.jobs.enqueue("pull_request", {"n": 2}, delivery=delivery)

    assert [record.id for record in store.jobs.list()] == [first]


def test_a_delivery_recorded_on_its_own_is_a_duplicate_for_enqueue(store: Store) -> None:
    assert store.deliveries.record_delivery("d-old", "github", "pull_request")
    with pytest.raises(DuplicateDelivery):
        store.jobs.enqueue("pull_request", {}, delivery=DeliveryRef("d-old", "github", "x"))
    assert store.jobs.list() == []


def test_a_failed_job_insert_leaves_no_delivery_behind(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The INSERT of the job fails after the delivery's: both roll back together.
    monkeypatch.setattr(store_jobs, "_INSERT_JOB", text("INSERT INTO no_such_table VALUES (1)"))
    with pytest.raises(DBAPIError):
        store.jobs.enqueue("pull_request", {}, delivery=DeliveryRef("d-f", "github", "pr"))
    monkeypatch.undo()

    assert store.deliveries.record_delivery("d-f", "github", "pr")  # not recorded before


def test_delivery_dedupe_with_jobs_survives_a_restart(migrated_url: str) -> None:
    delivery = DeliveryRef("d-restart", "github", "pull_request")
    with Store.open(migrated_url) as before:
        job_id = before.jobs.enqueue("pull_request", {}, delivery=delivery)
    with Store.open(migrated_url) as after:
        with pytest.raises(DuplicateDelivery):
            after.jobs.enqueue("pull_request", {}, delivery=delivery)
        assert [record.id for record in after.jobs.list()] == [job_id]


def test_concurrent_enqueues_of_one_delivery_create_one_job(store: Store) -> None:
    barrier = threading.Barrier(8)

    def enqueue(index: int) -> int | None:
        barrier.wait(timeout=_WAIT_S)
        try:
            delivery = DeliveryRef("same", "github", "pull_request")
            return store.jobs.enqueue("pull_request", {"i": index}, delivery=delivery)
        except DuplicateDelivery:
            return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(enqueue, range(8)))
    assert len([job for job in outcomes if job is not None]) == 1
    assert len(store.jobs.list()) == 1


def test_dedupe_key_with_deliveries(store: Store) -> None:
    first = store.jobs.enqueue("plan", {}, "plan#1", delivery=DeliveryRef("a", "github", "x"))
    # Another delivery for the same active work: recorded, and resolved to the same job.
    assert store.jobs.enqueue("plan", {}, "plan#1", delivery=DeliveryRef("b", "github", "x")) == (
        first
    )
    assert not store.deliveries.record_delivery("b", "github", "x")
    with pytest.raises(DuplicateDelivery):
        store.jobs.enqueue("plan", {}, "plan#1", delivery=DeliveryRef("a", "github", "x"))


def test_active_jobs_of_a_group_and_cancelling_queued_ones(store: Store) -> None:
    def enqueue(group: str | None, kind: str = "pull_request") -> int:
        return store.jobs.enqueue(kind, {}, group_key=group)

    done, running, queued = enqueue("g#1"), enqueue("g#1"), enqueue("g#1")
    other_group, other_kind, no_group = enqueue("g#2"), enqueue("g#1", "comment"), enqueue(None)
    store.jobs.claim_id(done, "w")
    store.jobs.complete(done)
    store.jobs.claim_id(running, "w")
    newest = enqueue("g#1")

    active = store.jobs.active_in_group("g#1", "pull_request", newest)
    assert [(record.id, record.status) for record in active] == [
        (running, JobStatus.RUNNING),
        (queued, JobStatus.QUEUED),
    ]
    assert store.jobs.cancel_queued([running, queued], "superseded") == [queued]
    assert store.jobs.get(queued).error == "superseded"
    assert store.jobs.get(running).status is JobStatus.RUNNING
    assert store.jobs.cancel_queued([], "nothing") == []
    untouched = (other_group, other_kind, no_group, newest)
    assert all(store.jobs.get(job).status is JobStatus.QUEUED for job in untouched)


def test_running_jobs_of_a_group_include_those_without_a_group(store: Store) -> None:
    ids = {
        name: store.jobs.enqueue("pull_request", {}, group_key=group)
        for name, group in [("mine", "g#1"), ("legacy", None), ("other", "g#2"), ("queued", "g#1")]
    }
    for name in ("mine", "legacy", "other"):
        store.jobs.claim_id(ids[name], "w")
    newest = store.jobs.enqueue("pull_request", {}, group_key="g#1")

    running = store.jobs.running_in_group("g#1", newest)

    assert [record.id for record in running] == [ids["mine"], ids["legacy"]]
    assert store.jobs.running_in_group("g#1", ids["legacy"]) == running[:1]


def test_any_queued(store: Store) -> None:
    assert not store.jobs.any_queued()
    job_id = store.jobs.enqueue("plan", {})
    assert store.jobs.any_queued()
    store.jobs.claim_id(job_id, "w")
    assert not store.jobs.any_queued()


def test_group_key_migration_keeps_existing_jobs(db_url: str) -> None:
    migrate(db_url, "0003")
    engine = make_engine(db_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO jobs (kind, version, payload, status, attempts, created_at)"
                    " VALUES ('pull_request', 1, '{}', 'queued', 0, CURRENT_TIMESTAMP)"
                )
            )
    finally:
        engine.dispose()
    with Store.open(db_url) as store:
        [record] = store.jobs.list()
        assert record.group_key is None
        assert record.status is JobStatus.QUEUED


def test_threads_of_one_process_take_turns_at_writing(sqlite_url: str) -> None:
    """Many threads writing at once all succeed, queued on the process's writer lock."""
    with Store.open(sqlite_url) as store:

        def write(index: int) -> int:
            return store.jobs.enqueue("plan", {"i": index}, group_key=f"g#{index % 3}")

        with ThreadPoolExecutor(max_workers=16) as pool:
            ids = list(pool.map(write, range(400)))
        assert len(set(ids)) == 400


def test_writer_lock_gives_up_like_sqlite_busy_timeout(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_db, "SQLITE_BUSY_TIMEOUT_MS", 100)
    with Store.open(sqlite_url) as store:
        holding, release = threading.Event(), threading.Event()

        def hold() -> None:
            with store.write():
                holding.set()
                release.wait(_WAIT_S)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            holding.wait(_WAIT_S)
            with pytest.raises(OperationalError, match="database is locked"):
                store.deliveries.record_delivery("blocked", "github", "push")
        finally:
            release.set()
            holder.join(_WAIT_S)
        assert store.deliveries.record_delivery("after", "github", "push")


def _take_lock_in_forked_child(lock: Any, results: Any) -> None:
    with lock:
        results.put(True)


def test_forked_child_gets_the_writer_lock_back_unlocked(sqlite_url: str) -> None:
    """A child forked while a parent thread holds the lock must not inherit it held.

    (Only the Python lock: forking while a SQLite transaction is open is unsafe anyway.)
    """
    engine = make_engine(sqlite_url)
    lock = store_db._process_writer_lock(engine)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            holding.set()
            release.wait(_WAIT_S)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        holding.wait(_WAIT_S)
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        child = context.Process(target=_take_lock_in_forked_child, args=(lock, results))
        child.start()
        assert results.get(timeout=_WAIT_S) is True
        child.join(timeout=_WAIT_S)
        assert child.exitcode == 0
    finally:
        release.set()
        holder.join(_WAIT_S)
        engine.dispose()


def test_job_counts_by_status(store) -> None:
    first = store.jobs.enqueue("comment", {"n": 1})
    store.jobs.enqueue("comment", {"n": 2})
    store.jobs.cancel(first)

    assert store.jobs.count("queued") == 1
    assert store.jobs.count("cancelled") == 1
    assert store.jobs.count("running") == 0
