"""`InProcessQueue`: jobs run on a pool of threads inside the web process.

The default, for a single node. Several processes (gunicorn workers) may each run one
on the same database: jobs are claimed from the store atomically, so each job runs in
exactly one of them, and the PR-group mutex keeps a PR's jobs one at a time across
all of them. A job waiting for its PR's previous job occupies a thread meanwhile.

A queue has a `QueueRole`. `ALL` (the default) submits and runs in one process.
`gitops-runner serve` with `GITOPS_JOB_PROCESS` (runner/jobs/job_process.py) splits the
two: its web processes only submit (`SUBMIT`: the webhook's one write, nothing else on
their GIL), and one job process runs (`RUN`): it finds what was submitted by reading
the store (`JobStore.queued_after`), supersedes and wakes its workers from there.
"""

from __future__ import annotations

import logging
import threading
import time
from enum import StrEnum

from runner.engine.project_mutex import ProjectMutex
from runner.jobs.cancellation import CancelRegistry, Superseded, Superseder
from runner.jobs.model import (
    PR_KINDS,
    JobHandler,
    JobPayload,
    UnknownJobFormat,
    WorkEvent,
    decode_event,
)
from runner.jobs.queue import DEFAULT_TIMING, JobRunner, JobTiming, enqueue_job
from runner.jobs.recovery import recover
from runner.jobs.supersede_batch import newest_by_group, supersede_groups
from runner.store.deliveries import DeliveryRef
from runner.store.jobs import JobRecord
from runner.store.owners import process_owner_prefix
from runner.store.store import Store

log = logging.getLogger(__name__)

# After stop()'s timeout, handlers get this long to stop Terraform once cancelled.
DEFAULT_INTERRUPT_GRACE_S = 10.0
# stop() lets the superseding thread finish what is pending for at most this long.
_SUPERSEDER_STOP_S = 5.0
# How often a `RUN` queue looks for jobs submitted by other processes: a small indexed
# read; the delay it adds before a job starts is nothing next to a plan.
DEFAULT_WATCH_S = 0.05
# Jobs read per look: a backlog (after a restart) is taken in steps of this many.
_WATCH_BATCH = 500


class QueueRole(StrEnum):
    """What an `InProcessQueue` does in its process (see the module docstring)."""

    ALL = "all"  # submit, supersede and run here
    SUBMIT = "submit"  # store jobs only; a job process runs them
    RUN = "run"  # run (and supersede) the jobs other processes store


class InProcessQueue:
    """N daemon threads claiming jobs from the store; see the module docstring."""

    def __init__(
        self,
        store: Store,
        handler: JobHandler,
        workers: int,
        worker_id_prefix: str | None = None,
        *,
        mutex: ProjectMutex,
        timing: JobTiming = DEFAULT_TIMING,
        interrupt_grace_s: float = DEFAULT_INTERRUPT_GRACE_S,
        role: QueueRole = QueueRole.ALL,
        watch_s: float = DEFAULT_WATCH_S,
    ) -> None:
        """`worker_id_prefix` starts the lease-owner ids of this queue's claims. Keep the
        default (`host:pid:start`) unless you know better: it is what lets a restarted
        runner recover its dead predecessor's jobs without waiting for their leases.
        `watch_s`: how often a `RUN` queue looks for new jobs in the store."""
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._store = store
        self._handler = handler
        self._role = role
        self._watch_s = watch_s
        # A RUN queue's high-water mark: the newest job id it has looked at.
        self._seen_id = 0
        self._looking = threading.Lock()
        self._workers = workers
        self._timing = timing
        self._interrupt_grace_s = interrupt_grace_s
        self._registry = CancelRegistry()
        self._stopping = threading.Event()
        self._wake = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._runner = JobRunner(
            store,
            handler,
            mutex,
            owner_prefix=worker_id_prefix or process_owner_prefix(),
            timing=timing,
            registry=self._registry,
            stopping=self._stopping,
        )
        self._superseder = Superseder(store, self._superseded)

    def submit(self, event: JobPayload, *, delivery: DeliveryRef | None = None) -> int:
        """Persist the job (one transaction, with `delivery`) and return; see JobQueue.

        A push or close wakes a worker only once its superseding pass is done, so the
        worker does not first claim an older autoplan that is about to be cancelled.
        """
        job_id = enqueue_job(self._store, event, delivery)
        if self._role is QueueRole.SUBMIT:
            # The job process finds it in the store, supersedes and runs it.
            return job_id
        if not self._superseder.request(job_id, event):
            self._wake_one()
        return job_id

    def _superseded(self, result: Superseded) -> None:
        # Jobs running in this process hear it now; elsewhere, from the store within ~1 s.
        self._registry.cancel(result.running)
        self._wake_one()

    def _wake_one(self) -> None:
        with self._wake:
            self._wake.notify()

    def start(self) -> None:
        """Recover what a previous run left behind, then start the threads (once).

        A `SUBMIT` queue starts nothing: its jobs run in the job process."""
        if self._threads or self._role is QueueRole.SUBMIT:
            return
        try:
            self._recover()
        except Exception:
            # The recovery thread tries again; the web service need not wait for it.
            log.exception("job recovery at start-up failed; retrying later")
        self._threads = [
            threading.Thread(
                target=self._work, args=(f"w{n}",), name=f"job-worker-{n}", daemon=True
            )
            for n in range(self._workers)
        ]
        self._threads.append(
            threading.Thread(target=self._maintain, name="job-recovery", daemon=True)
        )
        if self._role is QueueRole.RUN:
            self._threads.append(
                threading.Thread(target=self._watch, name="job-watch", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        grace = _SUPERSEDER_STOP_S if timeout is None else min(timeout, _SUPERSEDER_STOP_S)
        self._superseder.stop(grace)
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        if not self._join(timeout):
            cancelled = self._registry.cancel_all()
            log.warning("stopping: interrupting jobs %s", cancelled)
            self._join(self._interrupt_grace_s)
        return not any(thread.is_alive() for thread in self._threads)

    def running_jobs(self) -> list[int]:
        return self._registry.running()

    def _join(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def _work(self, label: str) -> None:
        while not self._stopping.is_set():
            try:
                if self._role is QueueRole.RUN:
                    # What is queued now was looked at (superseded) before it is claimed.
                    self._look_for_new_jobs()
                ran = self._runner.has_queued() and self._runner.run_next(label) is not None
            except Exception:
                # The store was unreachable, or a bug: keep the thread, retry after a pause.
                log.exception("job worker %s: error; retrying", label)
                ran = False
            if not ran:
                with self._wake:
                    if not self._stopping.is_set():
                        self._wake.wait(self._timing.poll_s)

    def _watch(self) -> None:
        """`RUN`: find what other processes submitted, supersede, wake the workers.

        What `submit` does after its write when both happen in one process. A job missed
        here (PostgreSQL may commit a lower id after a higher one was seen) is still
        claimed by the workers' own poll; only its superseding pass is skipped, which
        only saves work (an autoplan that runs anyway sees the PR's head moved on).
        """
        while not self._stopping.wait(self._watch_s):
            try:
                self._look_for_new_jobs()
            except Exception:
                log.exception("looking for new jobs failed; retrying")

    def _look_for_new_jobs(self) -> None:
        # One look at a time (the watcher and workers about to claim): each new job is
        # passed on once, in id order.
        with self._looking:
            while True:
                records = self._store.jobs.queued_after(self._seen_id, _WATCH_BATCH)
                if not records:
                    return
                self._seen_id = records[-1].id
                self._supersede_and_wake(records)
                if len(records) < _WATCH_BATCH:
                    return

    def _supersede_and_wake(self, records: list[JobRecord]) -> None:
        # All the PRs pushed to since the last look in one read and one write
        # (supersede_batch.py): fewer takes of the write lock the webhooks need.
        newest = newest_by_group([job for job in map(_decoded, records) if job is not None])
        if newest:
            superseded = supersede_groups(self._store, newest)
            if superseded.queued or superseded.running:
                log.info("superseded jobs %s", superseded.queued + superseded.running)
            self._registry.cancel(superseded.running)
        with self._wake:
            self._wake.notify(len(records))

    def _maintain(self) -> None:
        while not self._stopping.wait(self._timing.recovery_every_s):
            try:
                self._recover()
            except Exception:
                log.exception("job recovery failed; retrying later")

    def _recover(self) -> None:
        report = recover(self._store, self._handler, self._timing.lease_grace_s, self._runner.kinds)
        if report.requeued:
            with self._wake:
                self._wake.notify_all()


def _decoded(record: JobRecord) -> tuple[int, WorkEvent] | None:
    """A PR job's event, for superseding; None for other kinds and unreadable ones (a
    newer runner's, during a rolling upgrade: the workers leave those alone anyway)."""
    if record.kind not in PR_KINDS:
        return None
    try:
        return record.id, decode_event(record.kind, record.payload, record.version)
    except (UnknownJobFormat, ValueError):
        return None
