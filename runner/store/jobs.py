"""The persisted job table: queued work survives a restart, and a job runs at most once at a time.

Workers claim jobs with a lease. Claiming is atomic: on PostgreSQL the candidate row
is taken with `SELECT … FOR UPDATE SKIP LOCKED` (concurrent claimers skip it instead
of waiting); on SQLite the claim runs in a `BEGIN IMMEDIATE` transaction, which holds
the database's single write lock, so claims are simply serialised. A worker extends
its lease with `heartbeat`; a job whose lease ran out belongs to a dead worker and is
found by `requeue_expired` (or `recover_after_restart` at start-up).

The payload format is explicit and versioned: each row stores the `version` of the
payload it was written with, so a newer runner can read (or refuse) older jobs.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from runner.store.db import Database
from runner.store.deliveries import (
    DeliveryRef,
    DuplicateDelivery,
    add_deliveries,
    add_delivery,
    known_deliveries,
)
from runner.store.group_commit import GroupCommit
from runner.store.models import ACTIVE_JOB_STATUSES, Job, utcnow
from runner.store.write_lock import shared_write_lock

JOB_FORMAT_VERSION = 1
# Long enough for a typical Terraform step; workers heartbeat for longer ones.
DEFAULT_LEASE_S = 600.0
DEFAULT_MAX_ATTEMPTS = 3
# See enqueue(): on PostgreSQL another transaction can insert a dedupe key between our
# lookup and our INSERT (or release it again); then we try again, a bounded number of times.
_MAX_ENQUEUE_ROUNDS = 50

log = logging.getLogger(__name__)

# What a webhook writes: the job's row and the delivery that carried it.
_WebhookWrite = tuple[dict[str, Any], DeliveryRef]
# Per item of a batch: its job id, or the error its caller gets.
_Outcomes = list[int | BaseException]


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # its worker died; not retried automatically
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class JobRecord:
    id: int
    kind: str
    version: int
    payload: dict[str, Any]
    status: JobStatus
    dedupe_key: str | None
    group_key: str | None  # the PR group; None for jobs written before migration 0004
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    error: str | None


# Built once: the webhook and superseding paths run these many times a second, and
# building a statement costs more CPU than SQLite needs to run it.
_JOBS = Job.__table__
_INSERT_JOB = insert(_JOBS)
# Many rows in one statement, their ids returned in the order of the rows given.
_INSERT_JOBS_RETURNING_IDS = insert(_JOBS).returning(_JOBS.c.id, sort_by_parameter_order=True)
_ANY_QUEUED = select(_JOBS.c.id).where(_JOBS.c.status == JobStatus.QUEUED.value).limit(1)
_ANY_QUEUED_OF_KINDS = _ANY_QUEUED.where(_JOBS.c.kind.in_(bindparam("kinds", expanding=True)))
_OLDEST_QUEUED = (
    select(_JOBS)
    .where(_JOBS.c.status == JobStatus.QUEUED.value)
    .order_by(_JOBS.c.id)
    .limit(1)
    .with_for_update(skip_locked=True)
)
_OLDEST_QUEUED_OF_KINDS = _OLDEST_QUEUED.where(_JOBS.c.kind.in_(bindparam("kinds", expanding=True)))
_QUEUED_BY_ID = (
    select(_JOBS)
    .where(_JOBS.c.id == bindparam("job_id"), _JOBS.c.status == JobStatus.QUEUED.value)
    .with_for_update(skip_locked=True)
)
# UPDATEs without .values(): the columns set are the keys of the parameters passed.
_UPDATE_BY_ID = update(_JOBS).where(_JOBS.c.id == bindparam("job_id"))
_UPDATE_RUNNING = _UPDATE_BY_ID.where(_JOBS.c.status == JobStatus.RUNNING.value)
_UPDATE_RUNNING_OWNED = _UPDATE_RUNNING.where(_JOBS.c.lease_owner == bindparam("owner"))
_RUNNING_IN_GROUP = (
    select(_JOBS)
    .where(
        _JOBS.c.status == JobStatus.RUNNING.value,
        _JOBS.c.id < bindparam("before_id"),
        or_(_JOBS.c.group_key == bindparam("group_key"), _JOBS.c.group_key.is_(None)),
    )
    .order_by(_JOBS.c.id)
)
# New work for a job process that does not see the submits (runner/jobs/job_process.py):
# a range of the primary key, so its cost does not grow with the table.
_QUEUED_AFTER = (
    select(_JOBS)
    .where(_JOBS.c.id > bindparam("after_id"), _JOBS.c.status == JobStatus.QUEUED.value)
    .order_by(_JOBS.c.id)
    .limit(bindparam("limit"))
)
_STILL_QUEUED = (
    select(_JOBS.c.id)
    .where(
        _JOBS.c.id.in_(bindparam("ids", expanding=True)),
        _JOBS.c.status == JobStatus.QUEUED.value,
    )
    .with_for_update()
)
_CANCEL_ONE_QUEUED = (
    update(_JOBS)
    .where(_JOBS.c.id == bindparam("job_id"), _JOBS.c.status == JobStatus.QUEUED.value)
    .values(
        status=JobStatus.CANCELLED.value,
        finished_at=bindparam("finished_at", type_=_JOBS.c.finished_at.type),
        error=bindparam("error"),
    )
)
_ACTIVE_IN_GROUPS = (
    select(_JOBS)
    .where(
        _JOBS.c.group_key.in_(bindparam("group_keys", expanding=True)),
        _JOBS.c.status.in_(ACTIVE_JOB_STATUSES),
        _JOBS.c.kind == bindparam("kind"),
    )
    .order_by(_JOBS.c.id)
)


class JobStore:
    """Enqueue, claim, finish and recover persisted jobs."""

    def __init__(self, db: Database) -> None:
        self._db = db
        # Writers of other processes (serve's job process) wait on a file lock, not in
        # SQLite's sleeping busy handler (write_lock.py).
        self._shared_write_lock = shared_write_lock(db.engine)
        self._webhook_writes: GroupCommit[_WebhookWrite, int] = GroupCommit(self._insert_webhooks)

    @contextmanager
    def _write_connection(self) -> Iterator[Connection]:
        with self._shared_write_lock, self._db.write_connection() as connection:
            yield connection

    @contextmanager
    def _write_session(self) -> Iterator[Session]:
        with self._shared_write_lock, self._db.write() as session:
            yield session

    def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any],
        dedupe_key: str | None = None,
        *,
        version: int = JOB_FORMAT_VERSION,
        group_key: str | None = None,
        delivery: DeliveryRef | None = None,
    ) -> int:
        """Persist a job as queued and return its id.

        With a `dedupe_key`, at most one queued-or-running job has that key (a unique
        partial index enforces it across processes); enqueueing again returns the
        existing job's id instead of creating a second one.

        `group_key` (the job's PR group) lets `active_in_group` find the job without
        decoding payloads. With a `delivery`, the webhook delivery is recorded in the
        same transaction as the job: one write (one commit) per webhook, and either both
        are stored or neither. A delivery recorded before raises `DuplicateDelivery` and
        nothing is enqueued.
        """
        row = {
            "kind": kind,
            "version": version,
            "payload": json.dumps(dict(payload), sort_keys=True, separators=(",", ":")),
            "status": JobStatus.QUEUED.value,
            "dedupe_key": dedupe_key,
            "group_key": group_key,
            "attempts": 0,
            "created_at": utcnow(),
        }
        if delivery is not None:
            # The webhook's write: shares a transaction with the webhooks arriving
            # together (group_commit.py); returns once that transaction has committed.
            return self._webhook_writes.write((row, delivery))
        return self._insert_retrying(row, None)

    def _insert_retrying(self, row: dict[str, Any], delivery: DeliveryRef | None) -> int:
        conflict: IntegrityError | None = None
        for _ in range(_MAX_ENQUEUE_ROUNDS):
            try:
                return self._insert(row, delivery)
            except IntegrityError as error:
                if row["dedupe_key"] is None:
                    raise
                # PostgreSQL: another transaction inserted the key after our lookup.
                conflict = error
        assert conflict is not None
        raise conflict

    def _insert(self, row: dict[str, Any], delivery: DeliveryRef | None) -> int:
        # Prebuilt Core statements on a Core connection, no ORM Session: this is the
        # webhook's only write, and a Session costs more CPU than SQLite does.
        with self._write_connection() as connection:
            return _insert_in(connection, row, delivery)

    def _insert_webhooks(self, items: Sequence[_WebhookWrite]) -> _Outcomes:
        """The group commit's batch: every delivery with its job, in one transaction.

        Each item's outcome is its own: a duplicate delivery (stored before, or earlier
        in the batch) is refused and writes nothing, the others are stored. Should the
        shared transaction fail (PostgreSQL: another process stored one of these
        deliveries or dedupe keys meanwhile, which aborts the whole transaction), the
        items are written one transaction each, exactly as without grouping.
        """
        if len(items) > 1:
            try:
                return self._insert_together(items)
            except SQLAlchemyError:
                log.debug("grouped webhook write failed; writing one by one", exc_info=True)
        return [self._outcome_of_one(row, delivery) for row, delivery in items]

    def _insert_together(self, items: Sequence[_WebhookWrite]) -> _Outcomes:
        # The new deliveries and their jobs go in with one multi-row INSERT per table,
        # not two statements per webhook (on PostgreSQL each one is a round trip). A job
        # with a dedupe key may resolve to an active job of its key: written on its own.
        outcomes: dict[int, int | BaseException] = {}
        together: list[int] = []  # positions in `items`, in the order they arrived
        with self._write_connection() as connection:
            stored = known_deliveries(connection, [delivery for _, delivery in items])
            for position, (row, delivery) in enumerate(items):
                if delivery.delivery_id in stored:
                    outcomes[position] = DuplicateDelivery(delivery.delivery_id)
                elif row["dedupe_key"] is not None:
                    outcomes[position] = _insert_in(connection, row, delivery)
                else:
                    together.append(position)
                stored.add(delivery.delivery_id)
            if together:
                add_deliveries(connection, [items[position][1] for position in together])
                ids = connection.scalars(
                    _INSERT_JOBS_RETURNING_IDS, [items[position][0] for position in together]
                ).all()
                outcomes.update(zip(together, ids, strict=True))
        # Only now, after the commit, does any caller learn its outcome.
        return [outcomes[position] for position in range(len(items))]

    def _outcome_of_one(self, row: dict[str, Any], delivery: DeliveryRef) -> int | BaseException:
        try:
            return self._insert_retrying(row, delivery)
        except Exception as error:
            return error

    def claim(
        self,
        worker_id: str,
        kinds: Collection[str] | None = None,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> JobRecord | None:
        """Take the oldest queued job (of `kinds`) for `worker_id`, or None if there is none.

        Two concurrent claimers never get the same job.
        """
        if kinds is None:
            return self._take(_OLDEST_QUEUED, {}, worker_id, lease_s)
        return self._take(_OLDEST_QUEUED_OF_KINDS, {"kinds": list(kinds)}, worker_id, lease_s)

    def claim_id(
        self, job_id: int, worker_id: str, lease_s: float = DEFAULT_LEASE_S
    ) -> JobRecord | None:
        """Take this job if it is still queued; None if it was taken, cancelled or finished.

        For queues whose messages name their job (RQ): a message delivered twice, or for
        a job cancelled meanwhile, then does nothing.
        """
        return self._take(_QUEUED_BY_ID, {"job_id": job_id}, worker_id, lease_s)

    def _take(
        self, statement: Select[Any], values: dict[str, Any], worker_id: str, lease_s: float
    ) -> JobRecord | None:
        # Core statements: every job pays for its claim, on the same GIL as the webhooks.
        now = utcnow()
        with self._write_connection() as connection:
            row = connection.execute(statement, values).first()
            if row is None:
                return None
            claimed = {
                "status": JobStatus.RUNNING.value,
                "lease_owner": worker_id,
                "lease_expires_at": now + timedelta(seconds=lease_s),
                "started_at": now,
                "attempts": row.attempts + 1,
                "error": None,
            }
            connection.execute(_UPDATE_BY_ID, claimed | {"job_id": row.id})
        return dataclasses.replace(_record(row), **claimed | {"status": JobStatus.RUNNING})

    def heartbeat(self, job_id: int, worker_id: str, lease_s: float = DEFAULT_LEASE_S) -> bool:
        """Extend a running job's lease; False means the lease was lost (stop working on it)."""
        values = {"lease_expires_at": utcnow() + timedelta(seconds=lease_s)}
        return self._transition(job_id, worker_id, values)

    def complete(self, job_id: int, worker_id: str | None = None) -> bool:
        """Mark a running job done. With `worker_id`, only if that worker still holds it."""
        return self._finish(job_id, worker_id, JobStatus.DONE, error=None)

    def fail(self, job_id: int, error: str, worker_id: str | None = None) -> bool:
        """Mark a running job failed with an error message (no automatic retry)."""
        return self._finish(job_id, worker_id, JobStatus.FAILED, error=error)

    def cancel(self, job_id: int) -> bool:
        """Cancel a job that has not started yet; False if it already started or ended."""
        statement = (
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
            .values(status=JobStatus.CANCELLED.value, finished_at=utcnow())
        )
        with self._write_session() as session:
            return session.execute(statement).rowcount > 0

    def cancel_queued(self, job_ids: Collection[int], reason: str) -> builtins.list[int]:
        """Cancel those of `job_ids` that have not started yet, in one write transaction
        (`cancel_queued_batches` with one reason).

        Returns the ids it cancelled; the others had started or ended meanwhile. For
        `gitops cancel`: one PR's queued jobs.
        """
        return self.cancel_queued_batches([(job_ids, reason)])

    def cancel_queued_batches(
        self, batches: Collection[tuple[Collection[int], str]]
    ) -> builtins.list[int]:
        """`cancel_queued` for several (job ids, reason) pairs in one write transaction:
        a job process superseding for many PRs at once takes the write lock once, not
        once per PR (each take can make a webhook's write wait). The ids it cancelled."""
        reasons = {job_id: reason for ids, reason in batches for job_id in ids}
        if not reasons:
            return []
        now = utcnow()
        with self._write_connection() as connection:
            # Two statements whatever the number of PRs: which are still queued (locked
            # on PostgreSQL, so no claim takes one meanwhile), then one executemany.
            queued = sorted(connection.scalars(_STILL_QUEUED, {"ids": list(reasons)}))
            if queued:
                rows = [
                    {"job_id": job_id, "finished_at": now, "error": reasons[job_id]}
                    for job_id in queued
                ]
                connection.execute(_CANCEL_ONE_QUEUED, rows)
        return queued

    def cancel_running(self, job_id: int, reason: str) -> bool:
        """Cancel a running job (superseded work); False if it is not running.

        Its worker finds out on its next heartbeat (False) or status check and stops;
        its `complete`/`fail` then change nothing, the job stays `cancelled`.
        """
        values = {
            "status": JobStatus.CANCELLED.value,
            "finished_at": utcnow(),
            "lease_expires_at": None,
            "error": reason,
        }
        return self._transition(job_id, None, values)

    def _finish(
        self, job_id: int, worker_id: str | None, status: JobStatus, error: str | None
    ) -> bool:
        values = {
            "status": status.value,
            "finished_at": utcnow(),
            "lease_expires_at": None,
            "error": error,
        }
        return self._transition(job_id, worker_id, values)

    def _transition(self, job_id: int, worker_id: str | None, values: dict[str, Any]) -> bool:
        # Guarded on status (and owner): a worker whose lease expired and whose job was
        # handed to another worker must not overwrite that worker's outcome.
        # Prebuilt Core UPDATEs (the columns set are the keys of `values`): the ORM's
        # bulk-update path costs more CPU than the statement.
        if worker_id is None:
            statement, guard = _UPDATE_RUNNING, {"job_id": job_id}
        else:
            statement, guard = _UPDATE_RUNNING_OWNED, {"job_id": job_id, "owner": worker_id}
        with self._write_connection() as connection:
            return connection.execute(statement, values | guard).rowcount > 0

    def requeue_expired(
        self,
        now: datetime | None = None,
        *,
        retry_kinds: Collection[str] = (),
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> builtins.list[JobRecord]:
        """Find running jobs whose lease ran out (their worker died) and recover them.

        Jobs of `retry_kinds` (idempotent work such as a plan) go back to the queue
        while they have attempts left; every other one becomes `interrupted`, so that
        a half-done apply is reported to a human instead of silently run twice.
        Returns the recovered jobs in their new state.
        """
        cutoff = now or utcnow()
        condition = Job.lease_expires_at < cutoff
        return self._recover(condition, _kind_in(retry_kinds), max_attempts, "lease expired")

    def recover_after_restart(
        self,
        owner_prefix: str | None = None,
        *,
        retry_kinds: Collection[str] = (),
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> builtins.list[JobRecord]:
        """At start-up, recover jobs a previous run of this node left `running`.

        Leases may not have expired yet, but the workers are known to be gone. With
        `owner_prefix` (e.g. the host name, if worker ids start with it) only this
        node's jobs are touched; without it, every running job is (single-node setup).
        Recovery is as in `requeue_expired`.
        """
        condition: ColumnElement[bool] = true()
        if owner_prefix is not None:
            condition = Job.lease_owner.startswith(owner_prefix, autoescape=True)
        return self._recover(condition, _kind_in(retry_kinds), max_attempts, "runner restarted")

    def recover_job(
        self,
        job_id: int,
        *,
        retry: bool,
        reason: str,
        owner: str | None = None,
        expired_before: datetime | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> JobRecord | None:
        """Recover one running job whose worker is gone, deciding for this job alone.

        For callers that know what a kind cannot tell (the job queue asks its handler
        whether a job may run twice). `retry`: back to the queue while it has attempts
        left, else `interrupted`. The job is only touched while still running and, if
        given, still held by `owner` / with a lease that ended before `expired_before`,
        checked atomically with the change. None if it no longer qualifies.
        """
        condition: ColumnElement[bool] = Job.id == job_id
        if owner is not None:
            condition = and_(condition, Job.lease_owner == owner)
        if expired_before is not None:
            condition = and_(condition, Job.lease_expires_at < expired_before)
        recovered = self._recover(condition, lambda _kind: retry, max_attempts, reason)
        return recovered[0] if recovered else None

    def _recover(
        self,
        condition: ColumnElement[bool],
        retry: Callable[[str], bool],
        max_attempts: int,
        reason: str,
    ) -> builtins.list[JobRecord]:
        statement = (
            select(Job)
            .where(Job.status == JobStatus.RUNNING.value, condition)
            .order_by(Job.id)
            .with_for_update(skip_locked=True)
        )
        now = utcnow()
        with self._write_session() as session:
            rows = session.scalars(statement).all()
            for row in rows:
                previous_owner = row.lease_owner
                row.lease_owner = None
                row.lease_expires_at = None
                if retry(row.kind) and row.attempts < max_attempts:
                    row.status = JobStatus.QUEUED.value
                    row.error = f"requeued: {reason} (worker {previous_owner})"
                else:
                    row.status = JobStatus.INTERRUPTED.value
                    row.finished_at = now
                    row.error = f"interrupted: {reason} (worker {previous_owner})"
            return [_record(row) for row in rows]

    def get(self, job_id: int) -> JobRecord | None:
        with self._db.read() as session:
            row = session.get(Job, job_id)
            return _record(row) if row is not None else None

    def count(self, status: JobStatus | str) -> int:
        """How many jobs have `status` (metrics: no row is loaded or decoded)."""
        statement = (
            select(func.count()).select_from(Job).where(Job.status == JobStatus(status).value)
        )
        with self._db.read() as session:
            return session.scalar(statement) or 0

    def list(
        self,
        status: JobStatus | str | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> builtins.list[JobRecord]:
        """Jobs oldest first, optionally of one status / kind (dashboard, recovery, tests)."""
        statement = select(Job).order_by(Job.id)
        if status is not None:
            statement = statement.where(Job.status == JobStatus(status).value)
        if kind is not None:
            statement = statement.where(Job.kind == kind)
        if limit is not None:
            statement = statement.limit(limit)
        with self._db.read() as session:
            return [_record(row) for row in session.scalars(statement)]

    def active_with_key(self, dedupe_key: str) -> int | None:
        """The queued or running job with this dedupe key, if there is one."""
        with self._db.read() as session:
            return session.scalar(_active_with_key(dedupe_key))

    def any_queued(self, kinds: Collection[str] | None = None) -> bool:
        """Whether some job (of `kinds`) waits to be claimed: the idle workers' poll, a
        read that neither takes the write lock nor decodes a payload."""
        with self._db.read_connection() as connection:
            if kinds is None:
                return connection.execute(_ANY_QUEUED).first() is not None
            found = connection.execute(_ANY_QUEUED_OF_KINDS, {"kinds": list(kinds)})
            return found.first() is not None

    def queued_after(self, after_id: int, limit: int = 500) -> builtins.list[JobRecord]:
        """Queued jobs with an id above `after_id`, oldest first, at most `limit`: what
        was submitted since a job process last looked (see runner/jobs/job_process.py)."""
        values = {"after_id": after_id, "limit": limit}
        with self._db.read_connection() as connection:
            return [_record(row) for row in connection.execute(_QUEUED_AFTER, values)]

    def running_in_group(self, group_key: str, before_id: int) -> builtins.list[JobRecord]:
        """Running jobs older than `before_id` of a PR group, oldest first, for the
        per-PR order. Jobs without a group (written before migration 0004) are included:
        the caller decodes them, since missing one would break the order. Running jobs
        are few (one per worker), so the `IS NULL` costs nothing here."""
        values = {"group_key": group_key, "before_id": before_id}
        with self._db.read_connection() as connection:
            return [_record(row) for row in connection.execute(_RUNNING_IN_GROUP, values)]

    def active_in_group(
        self, group_key: str, kind: str, before_id: int | None = None
    ) -> builtins.list[JobRecord]:
        """Queued and running jobs of `kind` in a PR group that are older than `before_id`
        (None: all of them).

        An indexed read of one PR's few jobs, for superseding; oldest first. Jobs without
        a group (written before migration 0004, or by an older runner during a rolling
        upgrade) are not found: superseding only saves work, such a job runs and skips.
        (An `OR group_key IS NULL` would make SQLite scan every queued job instead.)
        """
        active = self.active_in_groups([group_key], kind)
        return [job for job in active if before_id is None or job.id < before_id]

    def active_in_groups(self, group_keys: Collection[str], kind: str) -> builtins.list[JobRecord]:
        """`active_in_group` for several PR groups in one indexed read, oldest first."""
        if not group_keys:
            return []
        values = {"group_keys": list(group_keys), "kind": kind}
        with self._db.read_connection() as connection:
            return [_record(row) for row in connection.execute(_ACTIVE_IN_GROUPS, values)]

    def prune(self, older_than: datetime, kinds: Collection[str] | None = None) -> int:
        """Delete finished jobs (of `kinds`) that ended before `older_than`; how many."""
        statement = delete(Job).where(
            Job.status.not_in(ACTIVE_JOB_STATUSES), Job.finished_at < older_than
        )
        if kinds is not None:
            statement = statement.where(Job.kind.in_(list(kinds)))
        with self._write_session() as session:
            return session.execute(statement).rowcount


def _insert_in(connection: Connection, row: dict[str, Any], delivery: DeliveryRef | None) -> int:
    """The delivery (if any) and the job, in `connection`'s write transaction."""
    if delivery is not None:
        add_delivery(connection, delivery)
    if row["dedupe_key"] is not None:
        # Looked up inside the write transaction, so the delivery is recorded with the
        # job it resolves to. On SQLite the write lock makes lookup and INSERT atomic;
        # on PostgreSQL a concurrent INSERT of the same key fails ours with
        # IntegrityError and enqueue() tries again.
        existing = connection.scalar(_active_with_key(row["dedupe_key"]))
        if existing is not None:
            return existing
    return connection.execute(_INSERT_JOB, row).inserted_primary_key[0]


def _active_with_key(dedupe_key: str) -> Select[tuple[int]]:
    return select(Job.id).where(Job.dedupe_key == dedupe_key, Job.status.in_(ACTIVE_JOB_STATUSES))


def _kind_in(kinds: Collection[str]) -> Callable[[str], bool]:
    chosen = frozenset(kinds)
    return lambda kind: kind in chosen


def _record(row: Job | Row[Any]) -> JobRecord:
    return JobRecord(
        id=row.id,
        kind=row.kind,
        version=row.version,
        payload=json.loads(row.payload),
        status=JobStatus(row.status),
        dedupe_key=row.dedupe_key,
        group_key=row.group_key,
        attempts=row.attempts,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        lease_owner=row.lease_owner,
        lease_expires_at=row.lease_expires_at,
        error=row.error,
    )
