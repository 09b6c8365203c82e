"""`InProcessQueue`: jobs run on a pool of threads inside the web process.

The default, for a single node. Several processes (gunicorn workers) may each run one
on the same database: jobs are claimed from the store atomically, so each job runs in
exactly one of them, and the PR-group mutex keeps a PR's jobs one at a time across
all of them. A job waiting for its PR's previous job occupies a thread meanwhile.

A queue has a `QueueRole`. `ALL` (the default) submits and runs in one process.
`gitops-runner serve` with `GITOPS_JOB_PROCESS` (runner/jobs/job_process.py) splits the
two: its web processes only submit (`SUBMIT`: the webhook's one write and a wake-up,
nothing else on their GIL), and one job process runs (`RUN`): woken by the web
processes (runner/jobs/wakeup.py), it finds what was submitted by reading the store
(`JobStore.queued_after`), supersedes and wakes its workers from there. It reads the
store only when woken, and on a slow fallback poll that finds what no wake-up announced
(a lost one, another host's submit, a job re-queued by recovery elsewhere); its workers
sleep until it wakes them.
"""

from __future__ import annotations

import logging
import threading
import time
from enum import StrEnum

from runner.engine.project_mutex import ProjectMutex
from runner.jobs.cancellation import CancelRegistry, Superseded, Superseder, newest_by_group
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
from runner.jobs.wakeup import JobWakeup
from runner.store.deliveries import DeliveryRef
from runner.store.jobs import JobRecord
from runner.store.owners import process_owner_prefix
from runner.store.store import Store

log = logging.getLogger(__name__)

# After stop()'s timeout, handlers get this long to stop Terraform once cancelled.
DEFAULT_INTERRUPT_GRACE_S = 10.0
# stop() lets the superseding thread finish what is pending for at most this long.
_SUPERSEDER_STOP_S = 5.0
# How often a `RUN` queue with a wake-up channel still looks at the store unwoken (one
# cheap read when nothing is queued): what finds the jobs no wake-up announced. A lost
# wake-up costs at most this much delay, nothing next to a plan.
DEFAULT_FALLBACK_POLL_S = 1.0
# The same without a wake-up channel: looking is then the only way to learn of new jobs.
UNWOKEN_POLL_S = 0.05
# Woken sooner than this after its last look, the watcher waits out the rest and takes
# every job stored meanwhile in one look: under a burst of webhooks it supersedes in one
# pass per gap, not one per delivery (each pass takes SQLite's write lock, which the
# webhooks' writes may then wait for; measured). A wake-up after a quiet spell is acted
# on at once.
LOOK_GAP_S = 0.05
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
        wakeup: JobWakeup | None = None,
        fallback_poll_s: float | None = None,
    ) -> None:
        """`worker_id_prefix` starts the lease-owner ids of this queue's claims. Keep the
        default (`host:pid:start`) unless you know better: it is what lets a restarted
        runner recover its dead predecessor's jobs without waiting for their leases.
        `wakeup`: the channel a `SUBMIT` queue wakes the `RUN` queue with (both ends in
        both processes, made before the fork). `fallback_poll_s`: how often a `RUN`
        queue looks at the store unwoken (default: `DEFAULT_FALLBACK_POLL_S` with a
        channel, `UNWOKEN_POLL_S` without)."""
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._store = store
        self._handler = handler
        self._role = role
        self._wakeup = wakeup
        if fallback_poll_s is None:
            fallback_poll_s = UNWOKEN_POLL_S if wakeup is None else DEFAULT_FALLBACK_POLL_S
        self._fallback_poll_s = fallback_poll_s
        # A RUN queue's high-water mark: the newest job id it has looked at.
        self._seen_id = 0
        self._looking = threading.Lock()
        self._workers = workers
        self._timing = timing
        self._interrupt_grace_s = interrupt_grace_s
        self._registry = CancelRegistry()
        self._stopping = threading.Event()
        self._wake = threading.Condition()
        # Counts wake-ups, so one given while a worker was looking is not slept through.
        self._wakes = 0
        # How long an idle worker sleeps unwoken: a RUN queue's watcher wakes its workers
        # for whatever it finds, so they need no poll of their own.
        self._idle_s = None if role is QueueRole.RUN else timing.poll_s
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
            # Committed: the job process finds it in the store, supersedes and runs it.
            if self._wakeup is not None:
                self._wakeup.notify()
            return job_id
        if not self._superseder.request(job_id, event):
            self._wake_workers(1)
        return job_id

    def _superseded(self, result: Superseded) -> None:
        # Jobs running in this process hear it now; elsewhere, from the store within ~1 s.
        self._registry.cancel(result.running)
        self._wake_workers(len(result.superseding))

    def _wake_workers(self, count: int | None) -> None:
        """Wake `count` idle workers (None: all of them)."""
        with self._wake:
            self._wakes += 1
            if count is None:
                self._wake.notify_all()
            else:
                self._wake.notify(count)

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
        self._wake_workers(None)
        if self._wakeup is not None and self._role is QueueRole.RUN:
            self._wakeup.notify()  # the watcher sleeps on the channel: it ends at once
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
            with self._wake:
                seen = self._wakes
            if not self._run_one(label):
                with self._wake:
                    if self._wakes == seen and not self._stopping.is_set():
                        self._wake.wait(self._idle_s)

    def _run_one(self, label: str) -> bool:
        """Claim and run one job; False if there was none (or the store failed)."""
        try:
            if self._role is QueueRole.RUN:
                # What is queued now was looked at (superseded) before it is claimed.
                self._look_for_new_jobs()
            return self._runner.has_queued() and self._runner.run_next(label) is not None
        except Exception:
            # The store was unreachable, or a bug: keep the thread; retry once woken, or
            # after the idle pause.
            log.exception("job worker %s: error; retrying", label)
            return False

    def _watch(self) -> None:
        """`RUN`: find what other processes submitted, supersede, wake the workers.

        What `submit` does after its write when both happen in one process. It looks
        when woken (a web process stored a job) and on the fallback poll, which first
        asks whether anything is queued at all (one read when idle) and then wakes every
        worker: a job the high-water mark missed (PostgreSQL may commit a lower id after
        a higher one was seen; its superseding pass is skipped, which only saves work),
        submitted on another host, or re-queued by another process's recovery.
        """
        last_look = float("-inf")
        while not self._stopping.is_set():
            woken = self._wait_for_news(last_look)
            if self._stopping.is_set():
                return
            last_look = time.monotonic()
            try:
                self._look(woken)
            except Exception:
                log.exception("looking for new jobs failed; retrying")

    def _wait_for_news(self, last_look: float) -> bool:
        """Sleep until woken (True) or the fallback poll is due (False); woken within
        `LOOK_GAP_S` of the last look, also until that gap has passed."""
        if self._wakeup is None:
            self._stopping.wait(self._fallback_poll_s)
            return False
        if not self._wakeup.wait(self._fallback_poll_s):
            return False
        rest = last_look + LOOK_GAP_S - time.monotonic()
        if rest > 0 and not self._stopping.wait(rest):
            # Taken now, before the look: a wake-up sent after this is for a job the
            # look may miss, so it wakes the watcher again.
            self._wakeup.wait(0)
        return True

    def _look(self, woken: bool) -> None:
        if woken:
            self._look_for_new_jobs()
        elif self._runner.has_queued():
            self._look_for_new_jobs()
            self._wake_workers(None)

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
        # All the PRs pushed to since the last look in one pass of the Superseder (one
        # read, one write): fewer takes of the write lock the webhooks need. The pass
        # wakes a worker per superseding job (`_superseded`); the rest are woken here.
        newest = newest_by_group([job for job in map(_decoded, records) if job is not None])
        if newest:
            self._superseder.supersede_now(newest)
        if len(records) > len(newest):
            self._wake_workers(len(records) - len(newest))

    def _maintain(self) -> None:
        while not self._stopping.wait(self._timing.recovery_every_s):
            try:
                self._recover()
            except Exception:
                log.exception("job recovery failed; retrying later")

    def _recover(self) -> None:
        report = recover(self._store, self._handler, self._timing.lease_grace_s, self._runner.kinds)
        if report.requeued:
            self._wake_workers(None)


def _decoded(record: JobRecord) -> tuple[int, WorkEvent] | None:
    """A PR job's event, for superseding; None for other kinds and unreadable ones (a
    newer runner's, during a rolling upgrade: the workers leave those alone anyway)."""
    if record.kind not in PR_KINDS:
        return None
    try:
        return record.id, decode_event(record.kind, record.payload, record.version)
    except (UnknownJobFormat, ValueError):
        return None
