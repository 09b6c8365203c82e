"""Stopping work that no longer matters: superseded autoplans and lost leases.

A new push (pull request `updated`) or a closed PR makes the PR's pending autoplans
pointless. `supersede` cancels the queued ones in the store and marks the running
ones `cancelled` there too. The worker running such a job learns it from the store,
wherever it runs: its `LeaseKeeper` checks the job's row about once a second and sets
the job's `cancel` Event when the row is no longer running under its lease (cancelled,
or taken over after its lease expired). In-process queues also set the Event at once
through their `CancelRegistry`.

The queues do not supersede while a webhook waits: `submit` only persists the job;
a `Superseder` thread runs `supersede` right after, reading just the PR group's active
jobs (`JobStore.active_in_group`). Nothing depends on it being done: a stale autoplan
that runs anyway sees that the PR's head moved on and skips.

Only autoplans are superseded. A comment command or an apply on merge is something a
person asked for; it runs to its end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from runner.events.model import PullRequestEvent
from runner.jobs.model import UnknownJobFormat, WorkEvent, decode_event, kind_of, pr_group
from runner.store.jobs import JobRecord, JobStatus
from runner.store.store import Store

log = logging.getLogger(__name__)

_SUPERSEDING_ACTIONS = frozenset({"updated", "closed"})
_AUTOPLAN_ACTIONS = frozenset({"opened", "updated", "ready"})


def is_autoplan(event: WorkEvent) -> bool:
    """Planning triggered by the PR itself (not by a person's comment)."""
    return isinstance(event, PullRequestEvent) and event.action in _AUTOPLAN_ACTIONS


def supersedes(new: WorkEvent, old: WorkEvent) -> bool:
    """Whether `new` (a push or a close) makes `old` (an autoplan of that PR) pointless."""
    return (
        isinstance(new, PullRequestEvent)
        and new.action in _SUPERSEDING_ACTIONS
        and is_autoplan(old)
        and pr_group(old) == pr_group(new)
    )


@dataclass(frozen=True)
class Superseded:
    queued: list[int] = field(default_factory=list)  # cancelled before they started
    running: list[int] = field(default_factory=list)  # marked cancelled; their workers stop


def is_superseding(event: WorkEvent) -> bool:
    """Whether `event` (a push or a close) can make older autoplans of its PR pointless."""
    return isinstance(event, PullRequestEvent) and event.action in _SUPERSEDING_ACTIONS


def drop_queued(store: Store, group: str, reason: str) -> list[int]:
    """`gitops cancel` (once its author was authorised): the PR group's jobs that have not
    started are cancelled; running ones finish, so an apply never stops half-way. The
    cancel job has no group (jobs/model.py), so it does not wait behind what it drops."""
    queued = [
        record.id
        for kind in ("pull_request", "comment")
        for record in store.jobs.active_in_group(group, kind)
        if record.status == JobStatus.QUEUED
    ]
    return store.jobs.cancel_queued(queued, reason)


def supersede(store: Store, event: WorkEvent, new_job_id: int) -> Superseded:
    """Cancel the autoplans of the PR that `event` (job `new_job_id`) makes pointless.

    Reads only the PR group's active jobs (the indexed `group_key`), not the whole
    queue, so its cost does not grow with the queue.
    """
    result = Superseded()
    if not is_superseding(event):
        return result
    reason = f"superseded by job {new_job_id} (pull request {event.action})"
    candidates = store.jobs.active_in_group(pr_group(event), kind_of(event), new_job_id)
    obsolete = [record for record in candidates if _superseded_by(event, record)]
    # Queued ones first (one statement): a worker freed by cancelling a running one
    # must not claim them.
    queued = [record.id for record in obsolete if record.status == JobStatus.QUEUED]
    result.queued.extend(store.jobs.cancel_queued(queued, reason))
    for record in obsolete:
        # Running, or claimed since it was read: marked cancelled, its worker stops.
        if record.id not in result.queued and store.jobs.cancel_running(record.id, reason):
            result.running.append(record.id)
    return result


def _superseded_by(event: WorkEvent, record: JobRecord) -> bool:
    old = _decode(record)
    return old is not None and supersedes(event, old)


def _decode(record: JobRecord) -> WorkEvent | None:
    try:
        return decode_event(record.kind, record.payload, record.version)
    except (UnknownJobFormat, ValueError):
        return None


class Superseder:
    """Runs `supersede` for newly queued jobs on a thread of its own, off the request path.

    Superseding only saves work: an autoplan that runs anyway finds that its head is
    no longer the PR's head and skips (the PR flow checks), so a webhook need not wait
    for it. Requests of one PR group coalesce: the newest superseding job cancels every
    autoplan an older one would (the older one's own job included, if it was a push).
    After each pass `on_done` gets the result (the in-process queue signals its running
    jobs and wakes its workers). The thread starts with the first request and ends with
    `stop`, which first finishes what is pending. A failed pass is logged and dropped.
    """

    def __init__(self, store: Store, on_done: Callable[[Superseded], None]) -> None:
        self._store = store
        self._on_done = on_done
        self._guard = threading.Condition()
        self._pending: dict[str, tuple[int, WorkEvent]] = {}
        self._thread: threading.Thread | None = None
        self._stopped = False

    def request(self, job_id: int, event: WorkEvent) -> bool:
        """Supersede for job `job_id` soon. False if `event` supersedes nothing."""
        if not is_superseding(event):
            return False
        with self._guard:
            if not self._stopped:
                group = pr_group(event)
                newest = self._pending.get(group)
                if newest is None or newest[0] < job_id:
                    self._pending[group] = (job_id, event)
                self._start_once()
                self._guard.notify()
                return True
        # Stopped (the process is shutting down): no thread is left to do it later.
        self._run(job_id, event)
        return True

    def stop(self, timeout: float | None = None) -> bool:
        """Finish the pending requests, then end the thread; True once it has ended."""
        with self._guard:
            self._stopped = True
            self._guard.notify_all()
            thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _start_once(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="job-supersede", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._guard:
                while not (self._pending or self._stopped):
                    self._guard.wait()
                if not self._pending:
                    return
                batch = sorted(self._pending.values(), key=lambda pending: pending[0])
                self._pending.clear()
            for job_id, event in batch:
                self._run(job_id, event)

    def _run(self, job_id: int, event: WorkEvent) -> None:
        try:
            result = supersede(self._store, event, job_id)
        except Exception:
            log.exception("superseding for job %s failed; older autoplans skip themselves", job_id)
            result = Superseded()
        if result.queued or result.running:
            log.info("job %s superseded jobs %s", job_id, result.queued + result.running)
        try:
            self._on_done(result)
        except Exception:
            log.exception("handling the superseding result of job %s failed", job_id)


class CancelRegistry:
    """The `cancel` Events of the jobs this process runs, by job id."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._events: dict[int, threading.Event] = {}

    def register(self, job_id: int) -> threading.Event:
        with self._guard:
            return self._events.setdefault(job_id, threading.Event())

    def unregister(self, job_id: int) -> None:
        with self._guard:
            self._events.pop(job_id, None)

    def cancel(self, job_ids: list[int]) -> list[int]:
        """Set the Events of those of `job_ids` running here; returns which were."""
        with self._guard:
            found = [job_id for job_id in job_ids if job_id in self._events]
            for job_id in found:
                self._events[job_id].set()
        return found

    def cancel_all(self) -> list[int]:
        with self._guard:
            for event in self._events.values():
                event.set()
            return sorted(self._events)

    def running(self) -> list[int]:
        with self._guard:
            return sorted(self._events)


class LeaseKeeper:
    """While a job runs: renew its lease, and set `cancel` once the job is no longer ours.

    A background thread, for the `with` block. It renews every `heartbeat_s` and reads
    the job's row every `poll_s`; a row that is not running under `owner` any more
    (cancelled by a newer push, or recovered after our lease ran out) sets `cancel`.
    A store that is briefly unreachable is logged and retried, never fatal: the lease
    leaves time for it.
    """

    def __init__(
        self,
        store: Store,
        job_id: int,
        owner: str,
        cancel: threading.Event,
        *,
        lease_s: float,
        heartbeat_s: float,
        poll_s: float,
    ) -> None:
        self._store = store
        self._job_id = job_id
        self._owner = owner
        self._cancel = cancel
        self._lease_s = lease_s
        self._heartbeat_s = heartbeat_s
        self._poll_s = poll_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._keep, name=f"lease-job-{job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join()

    def _keep(self) -> None:
        next_heartbeat = time.monotonic() + self._heartbeat_s
        while not self._done.wait(self._poll_s):
            try:
                if time.monotonic() >= next_heartbeat:
                    next_heartbeat = time.monotonic() + self._heartbeat_s
                    if not self._store.jobs.heartbeat(self._job_id, self._owner, self._lease_s):
                        return self._lost("its lease was lost")
                record = self._store.jobs.get(self._job_id)
            except Exception:
                log.warning("job %s: could not reach the store", self._job_id, exc_info=True)
                continue
            if record is None or record.status != JobStatus.RUNNING:
                return self._lost(f"it is now {record.status.value if record else 'gone'}")
            if record.lease_owner != self._owner:
                return self._lost("another worker holds it")

    def _lost(self, why: str) -> None:
        log.info("job %s: stopping, %s", self._job_id, why)
        self._cancel.set()
