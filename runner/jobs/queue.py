"""The job queue: one small interface, two implementations, and what both share.

`JobQueue` is all the web layer sees: `submit` an event, `start`/`stop` the workers.
`InProcessQueue` (runner/jobs/inprocess.py) runs jobs on threads of the web process;
`RQQueue` (runner/jobs/rq_queue.py) hands them to RQ workers on any machine. Either
way the job is first persisted in the store (`store.jobs`, format in
runner/jobs/model.py), so queued work survives restarts, and it is run by the same
`JobRunner`: claim with a lease, wait for the PR's turn, call the handler, record the
outcome. See docs/jobs.md.
"""

from __future__ import annotations

import logging
import threading
import traceback
from contextlib import ExitStack
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from runner.engine.project_mutex import MutexBusy, ProjectMutex
from runner.events.model import CommentEvent, PullRequestEvent
from runner.jobs.cancellation import CancelRegistry, LeaseKeeper
from runner.jobs.model import (
    PR_KINDS,
    JobHandler,
    JobPayload,
    UnknownJobFormat,
    WorkEvent,
    decode_job,
    encode_job,
    group_of,
)
from runner.jobs.recovery import is_orphaned, orphan_cutoff
from runner.jobs.registry import handled_kinds
from runner.observability.log_context import log_context
from runner.store.deliveries import DeliveryRef
from runner.store.jobs import JobRecord
from runner.store.owners import new_owner_id
from runner.store.store import Store

log = logging.getLogger(__name__)

# The kinds a plain (PR flow) handler runs. A queue claims the kinds of its handler
# (`registry.handled_kinds`), which leaves jobs of kinds it does not run, such as a newer
# runner's new kinds during a rolling upgrade, to the workers that do.
CLAIMABLE_KINDS = PR_KINDS
# Mutex keys of job groups (a PR's, a repository's reconcile, ...); project keys
# (repo|dir|workspace) never start like this. Named when only PRs had groups.
GROUP_KEY_PREFIX = "pr-group:"


class JobQueue(Protocol):
    """What the web layer (and the CLI) need from a queue."""

    def submit(self, event: JobPayload, *, delivery: DeliveryRef | None = None) -> int:
        """Persist the event (any job payload) as a job and wake a worker; supersede what
        it makes pointless.

        Returns the job id. Once this returns, the job survives a crash of this process.
        With `delivery` (the webhook that carried the event), the delivery is recorded in
        the same transaction as the job; `DuplicateDelivery` if it was recorded before,
        and then nothing is queued. Superseding happens shortly after, not before this
        returns (the webhook must not wait for it; see cancellation.Superseder).
        """
        ...

    def start(self) -> None:
        """Start working (in-process: recover orphaned jobs, start the threads)."""
        ...

    def stop(self, timeout: float | None = None) -> bool:
        """Stop taking jobs; let running ones finish for `timeout` s, then cancel them.

        True when no job of this queue is still running.
        """
        ...

    def running_jobs(self) -> list[int]:
        """Ids of running jobs, for the dashboard."""
        ...


DEFAULT_LEASE_S = 60.0


@dataclass(frozen=True)
class JobTiming:
    """Lease arithmetic. The lease is short, so a dead worker's jobs come back quickly;
    it is renewed four times per lease, so a slow database never costs a live lease."""

    lease_s: float = DEFAULT_LEASE_S
    heartbeat_s: float = 15.0
    poll_s: float = 1.0  # status checks, idle polling, waiting for the PR's turn
    lease_grace_s: float = 30.0  # see recovery.DEFAULT_LEASE_GRACE_S

    @property
    def recovery_every_s(self) -> float:
        return self.lease_s / 2

    @classmethod
    def for_lease(cls, lease_s: float) -> JobTiming:
        """Everything in proportion to the lease (`GITOPS_JOB_LEASE_SECONDS`): renewed
        four times per lease, a grace of half a lease, recovery twice per lease (the
        defaults are exactly this for DEFAULT_LEASE_S)."""
        return cls(lease_s=lease_s, heartbeat_s=lease_s / 4, lease_grace_s=lease_s / 2)


DEFAULT_TIMING = JobTiming()


class Outcome(StrEnum):
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"  # superseded, or taken away after the lease ran out
    RELEASED = "released"  # given back to the queue before it started (shutdown)


def enqueue_job(store: Store, payload: JobPayload, delivery: DeliveryRef | None = None) -> int:
    """Persist `payload` as a queued job (its kind's versioned format, group and dedupe
    key); its id, or the id of the same job already queued or running (dedupe).

    One write transaction, with the webhook `delivery` if given (`DuplicateDelivery`
    when it was recorded before). What the queues' `submit` does while a webhook waits.
    """
    job = encode_job(payload)
    return store.jobs.enqueue(
        job.kind,
        job.payload,
        job.dedupe_key,
        version=job.version,
        group_key=job.group_key,
        delivery=delivery,
    )


def enqueue_event(store: Store, event: WorkEvent, delivery: DeliveryRef | None = None) -> int:
    """`enqueue_job` for a forge event (its PR group); kept for its callers."""
    return enqueue_job(store, event, delivery)


class JobRunner:
    """Runs one claimed job from start to recorded outcome; both queues use it.

    It claims only the kinds its handler runs (`kinds`, default: `handled_kinds`).
    Jobs of one group (a PR's, a repository's reconcile passes) run one at a time and
    in id order, across threads, processes and hosts: the runner holds the group's
    mutex around the handler, and gives its turn to an older job of the group that was
    claimed first but has not got the mutex yet. Jobs without a group just run.
    """

    def __init__(
        self,
        store: Store,
        handler: JobHandler,
        mutex: ProjectMutex,
        *,
        owner_prefix: str,
        timing: JobTiming = DEFAULT_TIMING,
        registry: CancelRegistry | None = None,
        stopping: threading.Event | None = None,
        kinds: tuple[str, ...] | None = None,
    ) -> None:
        self._store = store
        self._handler = handler
        self.kinds = kinds if kinds is not None else handled_kinds(handler)
        self._mutex = mutex
        self._owner_prefix = owner_prefix
        self._timing = timing
        self._registry = registry or CancelRegistry()
        self._stopping = stopping or threading.Event()

    def has_queued(self) -> bool:
        """A cheap read, so idle workers poll without taking the database's write lock."""
        return self._store.jobs.any_queued(self.kinds)

    def run_next(self, label: str) -> Outcome | None:
        """Claim the oldest queued job and run it; None if there was none."""
        owner = new_owner_id(self._owner_prefix, label)
        record = self._store.jobs.claim(owner, self.kinds, self._timing.lease_s)
        return None if record is None else self._run(record, owner)

    def run_id(self, job_id: int, label: str) -> Outcome | None:
        """Run this job if it is still queued; None if it was taken, cancelled or ended."""
        stored = self._store.jobs.get(job_id)
        if stored is None or stored.kind not in self.kinds:
            return None
        owner = new_owner_id(self._owner_prefix, label)
        record = self._store.jobs.claim_id(job_id, owner, self._timing.lease_s)
        return None if record is None else self._run(record, owner)

    def _run(self, record: JobRecord, owner: str) -> Outcome:
        cancel = self._registry.register(record.id)
        timing = self._timing
        keeper = LeaseKeeper(
            self._store,
            record.id,
            owner,
            cancel,
            lease_s=timing.lease_s,
            heartbeat_s=timing.heartbeat_s,
            poll_s=timing.poll_s,
        )
        try:
            with keeper:
                return self._run_leased(record, owner, cancel)
        finally:
            self._registry.unregister(record.id)

    def _run_leased(self, record: JobRecord, owner: str, cancel: threading.Event) -> Outcome:
        try:
            event = decode_job(record.kind, record.payload, record.version)
        except (UnknownJobFormat, ValueError) as error:
            self._store.jobs.fail(record.id, f"unreadable job: {error}", owner)
            return Outcome.FAILED
        group = group_of(event)
        turn = ExitStack() if group is None else self._wait_for_turn(record.id, group, cancel)
        if turn is None:
            return self._give_back(record, owner)
        with turn:
            return self._handle(record, owner, event, cancel)

    def _wait_for_turn(self, job_id: int, group: str, cancel: threading.Event) -> ExitStack | None:
        """Hold the group's mutex, once no older job of the group is waiting for it.

        None when the job was cancelled or the queue is stopping before its turn came.
        """
        poll_s = self._timing.poll_s
        while not (cancel.is_set() or self._stopping.is_set()):
            turn = ExitStack()
            try:
                turn.enter_context(self._mutex.hold(GROUP_KEY_PREFIX + group, timeout=poll_s))
            except MutexBusy:
                continue
            try:
                older = self._older_running_in_group(job_id, group)
            except BaseException:
                turn.close()
                raise
            if not older:
                return turn
            # An older job of this PR was claimed first and waits for the mutex: let it go
            # first (only the order of claims is in the database, not of mutex waiters).
            turn.close()
            cancel.wait(poll_s)
        return None

    def _older_running_in_group(self, job_id: int, group: str) -> bool:
        # An orphaned job (its worker died) would never take its turn: not waited for.
        # Recovery re-queues it; it then runs after this one.
        expired_before = orphan_cutoff(self._timing.lease_grace_s)
        for record in self._store.jobs.running_in_group(group, job_id):
            if is_orphaned(record, expired_before):
                continue
            # Rows from before migration 0004 have no group_key: decoded to tell.
            if record.group_key is None and _group_of(record) != group:
                continue
            return True
        return False

    def _give_back(self, record: JobRecord, owner: str) -> Outcome:
        # Never started: whatever it is, it may run later (elsewhere, or after a restart).
        released = self._store.jobs.recover_job(
            record.id, retry=True, reason="runner stopped before the job started", owner=owner
        )
        return Outcome.RELEASED if released is not None else Outcome.CANCELLED

    def _handle(
        self, record: JobRecord, owner: str, event: JobPayload, cancel: threading.Event
    ) -> Outcome:
        # Every line logged by the job (in this thread) names it and its PR.
        with log_context(job=record.id, **job_log_ids(event)):
            log.info("job %s: running %s", record.id, record.kind)
            try:
                self._handler.handle(event, cancel)
            except Exception as error:
                log.exception("job %s failed", record.id)
                recorded = self._store.jobs.fail(record.id, describe(error), owner)
                return Outcome.FAILED if recorded else Outcome.CANCELLED
        if self._store.jobs.complete(record.id, owner):
            return Outcome.DONE
        return Outcome.CANCELLED


def job_log_ids(event: JobPayload) -> dict[str, object]:
    """The repository and PR a job is about, for its log lines (where it has them)."""
    repo = getattr(event, "repo", None)
    ids: dict[str, object] = {"repo": getattr(repo, "key", None)}
    if isinstance(event, PullRequestEvent):
        ids["pr"] = event.pr.number
    elif isinstance(event, CommentEvent):
        ids["pr"] = event.pr_number
    return ids


def _group_of(record: JobRecord) -> str | None:
    try:
        return group_of(decode_job(record.kind, record.payload, record.version))
    except (UnknownJobFormat, ValueError):
        return None


def describe(error: BaseException) -> str:
    """The error text stored with a failed job: type and message, no traceback."""
    return "".join(traceback.format_exception_only(error)).strip()
