"""A PR group's active jobs, read without an id bound: what `gitops cancel` drops.

Real store, both backends (the `store` fixture).
"""

from __future__ import annotations

from runner.jobs.cancellation import drop_queued
from runner.store.jobs import JobStatus
from runner.store.store import Store


def _enqueue(store: Store, group: str | None, kind: str = "pull_request") -> int:
    return store.jobs.enqueue(kind, {}, group_key=group)


def test_without_a_bound_every_active_job_of_the_group_and_kind_is_read(store: Store) -> None:
    done, running, queued = (_enqueue(store, "g#1") for _ in range(3))
    _enqueue(store, "g#2")
    _enqueue(store, "g#1", "comment")
    store.jobs.claim_id(done, "w")
    store.jobs.complete(done)
    store.jobs.claim_id(running, "w")
    newest = _enqueue(store, "g#1")

    active = store.jobs.active_in_group("g#1", "pull_request")

    assert [(record.id, record.status) for record in active] == [
        (running, JobStatus.RUNNING),
        (queued, JobStatus.QUEUED),
        (newest, JobStatus.QUEUED),
    ]
    assert [record.id for record in store.jobs.active_in_group("g#1", "pull_request", newest)] == [
        running,
        queued,
    ]


def test_drop_queued_cancels_every_queued_job_of_the_pr_and_lets_running_ones_finish(
    store: Store,
) -> None:
    running, plan, command = (
        _enqueue(store, "g#1"),
        _enqueue(store, "g#1"),
        _enqueue(store, "g#1", "comment"),
    )
    other_pr = _enqueue(store, "g#2")
    store.jobs.claim_id(running, "w")

    dropped = drop_queued(store, "g#1", "cancelled by alice")

    assert dropped == [plan, command]
    assert store.jobs.get(plan).status is JobStatus.CANCELLED
    assert store.jobs.get(command).error == "cancelled by alice"
    assert store.jobs.get(running).status is JobStatus.RUNNING
    assert store.jobs.get(other_pr).status is JobStatus.QUEUED
