"""Group commit of webhook writes (runner/store/group_commit.py, JobStore.enqueue with a
delivery): deliveries that arrive together share a transaction, and each is still
stored, refused as a duplicate or failed on its own, never answered before its
transaction has committed. Real threads on the real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

from runner.jobs.payloads import ReconcileJob
from runner.jobs.queue import enqueue_event
from runner.store.deliveries import DeliveryRef, DuplicateDelivery
from runner.store.group_commit import GroupCommit
from runner.store.jobs import JobStatus
from runner.store.store import Store
from tests.support.jobs import REPO, comment_event

T = TypeVar("T")

THREADS = 16


def delivery(name: str) -> DeliveryRef:
    return DeliveryRef(name, "github", "issue_comment")


def at_once(calls: Sequence[Callable[[], T]]) -> list[T | BaseException]:
    """Run `calls` on as many threads, released together; each one's result or error."""
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T | BaseException:
        start.wait()
        try:
            return call()
        except Exception as error:
            return error

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def submit(store: Store, number: int, delivery_id: str) -> Callable[[], int]:
    event = comment_event(REPO, number, f"gitops plan -p p{number}")
    return lambda: enqueue_event(store, event, delivery(delivery_id))


def push(store: Store, sha: str, delivery_id: str) -> Callable[[], int]:
    job = ReconcileJob(repo=REPO.clone_url, trigger="push", sha=sha)
    return lambda: enqueue_event(store, job, DeliveryRef(delivery_id, "github", "push"))


def test_deliveries_arriving_together_are_each_stored_with_their_own_job(
    store: Store, migrated_url: str
) -> None:
    outcomes = at_once([submit(store, n, f"d-{n}") for n in range(THREADS)])

    assert all(isinstance(outcome, int) for outcome in outcomes), outcomes
    assert len(set(outcomes)) == THREADS
    # Stored (committed) when the callers were answered: another connection sees them.
    with Store.open(migrated_url, upgrade=False) as other:
        jobs = other.jobs.list(status=JobStatus.QUEUED)
        assert sorted(job.id for job in jobs) == sorted(outcomes)  # type: ignore[type-var]
        seen = [other.deliveries.record_delivery(f"d-{n}", "github", "x") for n in range(THREADS)]
        assert not any(seen)


def test_the_same_delivery_sent_many_times_at_once_queues_one_job(store: Store) -> None:
    # The attack: a replayed (validly signed) delivery, many copies in one burst, so
    # that several copies land in one shared transaction.
    outcomes = at_once([submit(store, 1, "replayed") for _ in range(THREADS)])

    stored = [outcome for outcome in outcomes if isinstance(outcome, int)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, DuplicateDelivery)]
    assert len(stored) == 1 and len(refused) == THREADS - 1, outcomes
    assert [job.id for job in store.jobs.list()] == stored


def test_a_duplicate_in_a_batch_does_not_cost_the_others_their_jobs(store: Store) -> None:
    submit(store, 0, "seen-before")()
    calls = [submit(store, n, f"new-{n}") for n in range(1, THREADS)]
    outcomes = at_once([submit(store, 0, "seen-before"), *calls])

    assert isinstance(outcomes[0], DuplicateDelivery)
    assert all(isinstance(outcome, int) for outcome in outcomes[1:]), outcomes
    assert len(store.jobs.list()) == THREADS


def test_each_caller_is_answered_with_its_own_job_when_rows_go_in_together(
    store: Store,
) -> None:
    # A batch's jobs go in with one multi-row INSERT: the ids must come back in the
    # order of the rows, or a webhook would be answered with another delivery's job.
    # Pushes to the default branch (a dedupe key: written on their own) are mixed in.
    comments = [submit(store, n, f"own-{n}") for n in range(THREADS // 2)]
    pushes = [push(store, f"sha-{n % 2}", f"push-{n}") for n in range(THREADS // 2)]

    outcomes = at_once([*comments, *pushes])

    ids = [outcome for outcome in outcomes if isinstance(outcome, int)]
    assert len(ids) == THREADS, outcomes
    jobs = [store.jobs.get(job_id) for job_id in ids]
    for number, job in enumerate(jobs[: THREADS // 2]):
        assert job is not None and job.payload["pr_number"] == number
    for number, job in enumerate(jobs[THREADS // 2 :]):
        assert job is not None and job.payload["sha"] == f"sha-{number % 2}"
    assert len(set(ids[THREADS // 2 :])) == 2  # one job per pushed commit


def test_a_failed_transaction_fails_every_caller_in_it_and_the_next_one_works() -> None:
    written: list[list[int]] = []
    fail_next = threading.Event()

    def write(items: Sequence[int]) -> list[int | BaseException]:
        if fail_next.is_set():
            fail_next.clear()
            raise OSError("disk full")
        written.append(list(items))
        return [item * 10 for item in items]

    commit: GroupCommit[int, int] = GroupCommit(write)
    fail_next.set()
    with pytest.raises(OSError, match="disk full"):
        commit.write(1)

    outcomes = at_once([lambda n=n: commit.write(n) for n in range(THREADS)])

    assert outcomes == [n * 10 for n in range(THREADS)]
    assert sorted(item for batch in written for item in batch) == list(range(THREADS))


def test_callers_are_answered_only_after_their_batch_was_written() -> None:
    # A caller must never learn its outcome (the webhook's 202) before the transaction
    # holding its item has committed: the writer here blocks until released.
    release = threading.Event()
    entered = threading.Event()
    done: list[int] = []

    def write(items: Sequence[int]) -> list[int | BaseException]:
        entered.set()
        release.wait(30)
        return list(items)

    commit: GroupCommit[int, int] = GroupCommit(write)
    caller = threading.Thread(target=lambda: done.append(commit.write(7)))
    caller.start()
    assert entered.wait(30)
    assert done == []
    release.set()
    caller.join(30)
    assert done == [7]


def test_each_caller_gets_its_own_outcome_within_a_batch() -> None:
    def write(items: Sequence[int]) -> list[int | BaseException]:
        return [ValueError(f"odd {item}") if item % 2 else item for item in items]

    commit: GroupCommit[int, int] = GroupCommit(write)
    outcomes = at_once([lambda n=n: commit.write(n) for n in range(THREADS)])

    for number, outcome in enumerate(outcomes):
        if number % 2:
            assert isinstance(outcome, ValueError) and str(outcome) == f"odd {number}"
        else:
            assert outcome == number
