"""`InProcessQueue`: jobs run on a pool of threads inside the web process.

The default, for a single node. Several processes (gunicorn workers) may each run one
on the same database: jobs are claimed from the store atomically, so each job runs in
exactly one of them, and the PR-group mutex keeps a PR's jobs one at a time across
all of them. A job waiting for its PR's previous job occupies a thread meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time

from runner.engine.project_mutex import ProjectMutex
from runner.jobs.cancellation import CancelRegistry, Superseded, Superseder
from runner.jobs.model import JobHandler, JobPayload
from runner.jobs.queue import DEFAULT_TIMING, JobRunner, JobTiming, enqueue_job
from runner.jobs.recovery import recover
from runner.store.deliveries import DeliveryRef
from runner.store.owners import process_owner_prefix
from runner.store.store import Store

log = logging.getLogger(__name__)

# After stop()'s timeout, handlers get this long to stop Terraform once cancelled.
DEFAULT_INTERRUPT_GRACE_S = 10.0
# stop() lets the superseding thread finish what is pending for at most this long.
_SUPERSEDER_STOP_S = 5.0


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
    ) -> None:
        """`worker_id_prefix` starts the lease-owner ids of this queue's claims. Keep the
        default (`host:pid:start`) unless you know better: it is what lets a restarted
        runner recover its dead predecessor's jobs without waiting for their leases."""
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._store = store
        self._handler = handler
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
        """Recover what a previous run left behind, then start the threads (once)."""
        if self._threads:
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
                ran = self._runner.has_queued() and self._runner.run_next(label) is not None
            except Exception:
                # The store was unreachable, or a bug: keep the thread, retry after a pause.
                log.exception("job worker %s: error; retrying", label)
                ran = False
            if not ran:
                with self._wake:
                    if not self._stopping.is_set():
                        self._wake.wait(self._timing.poll_s)

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
