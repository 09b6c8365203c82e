"""Stopping work that no longer matters: superseded autoplans and lost leases.

A new push (pull request `updated`) or a closed PR makes the PR's pending autoplans
pointless. A superseding pass (`supersede_groups`, for any number of PRs at once)
cancels the queued ones in the store and marks the running ones `cancelled` there
too. The worker running such a job learns it from the store, wherever it runs: its
`LeaseKeeper` checks the job's row about once a second and sets the job's `cancel`
Event when the row is no longer running under its lease (cancelled, or taken over
after its lease expired). In-process queues also set the Event at once
through their `CancelRegistry`.

The queues do not supersede while a webhook waits: `submit` only persists the job;
a `Superseder` thread runs the pass right after, for every PR pushed to meanwhile,
reading just those PR groups' active jobs (`JobStore.active_in_groups`). `serve`'s job
process runs the same pass for what it finds in the store. One mechanism, one rule:
the newest push or close of a PR cancels that PR's older autoplans. Nothing depends on
it being done: a stale autoplan that runs anyway sees that the PR's head moved on and
skips.

Only autoplans are superseded. A comment command or an apply on merge is something a
person asked for; it runs to its end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
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


# The newest superseding job of each PR group: group -> (job id, event).
Newest = Mapping[str, tuple[int, WorkEvent]]


@dataclass(frozen=True)
class Superseded:
    queued: list[int] = field(default_factory=list)  # cancelled before they started
    running: list[int] = field(default_factory=list)  # marked cancelled; their workers stop
    # The superseding jobs the pass was for (one per PR group): what a queue wakes
    # workers for once the pass is done.
    superseding: list[int] = field(default_factory=list)


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


def newest_by_group(jobs: Iterable[tuple[int, WorkEvent]]) -> dict[str, tuple[int, WorkEvent]]:
    """Of `jobs`, the newest one per PR group that supersedes (a push or a close): it
    cancels every autoplan an older one would (the older one's own job included)."""
    newest: dict[str, tuple[int, WorkEvent]] = {}
    for job_id, event in jobs:
        if is_superseding(event):
            _keep_newest(newest, job_id, event)
    return newest


def _keep_newest(newest: dict[str, tuple[int, WorkEvent]], job_id: int, event: WorkEvent) -> None:
    group = pr_group(event)
    if group not in newest or newest[group][0] < job_id:
        newest[group] = (job_id, event)


def supersede(store: Store, event: WorkEvent, new_job_id: int) -> Superseded:
    """`supersede_groups` for one job: cancel the autoplans of the PR that `event` (job
    `new_job_id`) makes pointless, now (the queues do it on their Superseder)."""
    return supersede_groups(store, newest_by_group([(new_job_id, event)]))


def supersede_groups(store: Store, newest: Newest) -> Superseded:
    """Cancel, for each group's newest superseding job, the group's older autoplans.

    One indexed read of those PR groups' active jobs (per kind; `group_key`) and one
    write transaction for all the queued ones, whatever the number of PRs: every take
    of SQLite's write lock can make a webhook's write wait (issue 10, measured). Its
    cost does not grow with the queue.
    """
    result = Superseded(superseding=sorted(job_id for job_id, _ in newest.values()))
    obsolete = _obsolete(store, newest)
    if not obsolete:
        return result
    reasons = {group: _reason(*newest[group]) for group in obsolete}
    batches = [
        ([record.id for record in records if record.status == JobStatus.QUEUED], reasons[group])
        for group, records in obsolete.items()
    ]
    # Queued ones first, all in one transaction: a worker freed by cancelling a
    # running one must not claim them.
    result.queued.extend(store.jobs.cancel_queued_batches(batches))
    for group, records in obsolete.items():
        for record in records:
            # Running, or claimed since it was read: marked cancelled, its worker stops.
            if record.id in result.queued:
                continue
            if store.jobs.cancel_running(record.id, reasons[group]):
                result.running.append(record.id)
    return result


def _obsolete(store: Store, newest: Newest) -> dict[str, list[JobRecord]]:
    by_kind: dict[str, list[str]] = {}
    for group, (_job_id, event) in newest.items():
        by_kind.setdefault(kind_of(event), []).append(group)
    obsolete: dict[str, list[JobRecord]] = {}
    for kind, groups in by_kind.items():
        for record in store.jobs.active_in_groups(groups, kind):
            group = record.group_key
            if group is None or group not in newest:
                continue
            job_id, event = newest[group]
            if record.id < job_id and _superseded_by(event, record):
                obsolete.setdefault(group, []).append(record)
    return obsolete


def _superseded_by(event: WorkEvent, record: JobRecord) -> bool:
    try:
        old = decode_event(record.kind, record.payload, record.version)
    except (UnknownJobFormat, ValueError):
        return False
    return supersedes(event, old)


def _reason(job_id: int, event: WorkEvent) -> str:
    action = getattr(event, "action", "event")
    return f"superseded by job {job_id} (pull request {action})"


class Superseder:
    """Runs superseding passes on a thread of its own, off the request path.

    Superseding only saves work: an autoplan that runs anyway finds that its head is
    no longer the PR's head and skips (the PR flow checks), so a webhook need not wait
    for it. Requests coalesce: per PR group only the newest superseding job is kept
    (`newest_by_group`'s rule), and one pass (`supersede_groups`) covers every group
    pending. After each pass `on_done` gets the result (the in-process queue signals its
    running jobs and wakes its workers). The thread starts with the first request and
    ends with `stop`, which first finishes what is pending. A failed pass is logged and
    dropped. `serve`'s job process, which finds new jobs in the store rather than by
    request, runs its passes through `supersede_now` on its own thread.
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
                _keep_newest(self._pending, job_id, event)
                self._start_once()
                self._guard.notify()
                return True
        # Stopped (the process is shutting down): no thread is left to do it later.
        self.supersede_now(newest_by_group([(job_id, event)]))
        return True

    def supersede_now(self, newest: Newest) -> Superseded:
        """One pass for `newest`, on the caller's thread; `on_done` gets its result."""
        try:
            result = supersede_groups(self._store, newest)
        except Exception:
            log.exception("superseding failed; older autoplans skip themselves")
            result = Superseded(superseding=sorted(job_id for job_id, _ in newest.values()))
        if result.queued or result.running:
            log.info(
                "jobs %s superseded jobs %s", result.superseding, result.queued + result.running
            )
        try:
            self._on_done(result)
        except Exception:
            log.exception("handling the superseding result of jobs %s failed", result.superseding)
        return result

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
                pending, self._pending = self._pending, {}
            self.supersede_now(pending)


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
