"""The elected scheduler: scheduled work becomes jobs, enqueued by one process.

Every web process runs a `JobScheduler`; per source of scheduled work it takes that
source's named lease (`runner/store/leases.py`), and only the holder asks the source
what is due and submits it as jobs. Nothing scheduled runs here: a drift tick or a
reconcile poll is a job like any other, run by the in-process workers or by
`gitops-runner worker` processes. A tick costs a lease renewal and a few inserts, so a
web process stays free to answer webhooks, and a dead holder's lease lapses after
`lease_ttl`, when another process takes over.

Sources keep the lease names of the loops they replaced (`drift-scheduler`,
`reconciler`), so during a rolling upgrade an old process that still scans or
reconciles on its own thread and a new one that enqueues never both do it. Firing
twice is harmless anyway: drift slots are claimed once (`LeaseStore.claim_slot`), and
a job already queued or running absorbs the same job again (its dedupe key).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from runner.jobs.model import JobPayload
from runner.store.leases import LeaseStore
from runner.store.models import utcnow
from runner.store.store import Store

log = logging.getLogger(__name__)

DEFAULT_TICK_S = 5.0
DEFAULT_LEASE_TTL = timedelta(seconds=90)


class ScheduleSource(Protocol):
    """Something with a schedule: says which jobs are due at `now`."""

    lease_name: str

    def due(self, now: datetime) -> Sequence[JobPayload]: ...


Submit = Callable[[JobPayload], int]


class JobScheduler:
    """Ticks in a thread (`start`/`stop`) or on demand (`tick`); see the module docstring."""

    def __init__(
        self,
        store: Store,
        submit: Submit,
        sources: Sequence[ScheduleSource],
        *,
        owner: str | None = None,
        lease_ttl: timedelta = DEFAULT_LEASE_TTL,
        tick_s: float = DEFAULT_TICK_S,
    ) -> None:
        self._leases = LeaseStore(store)
        self._submit = submit
        self._sources = list(sources)
        self.owner = owner or f"scheduler-{uuid.uuid4().hex[:12]}"
        self._ttl = lease_ttl
        self._tick_s = tick_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self, now: datetime | None = None) -> list[int]:
        """Submit what is due at `now` for every source whose lease this process holds;
        the job ids (a job already queued is its existing id)."""
        now = now or utcnow()
        submitted: list[int] = []
        for source in self._sources:
            if not self._leases.acquire(source.lease_name, self.owner, self._ttl, now):
                continue
            try:
                due = source.due(now)
            except Exception:  # one source failing must not starve the others
                log.exception("scheduler: %s failed", source.lease_name)
                continue
            submitted += [self._submit(payload) for payload in due]
        return submitted

    def start(self) -> None:
        """Tick now and then every `tick_s` in a daemon thread, until `stop()`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="job-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop ticking and give the leases up, so another process takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for source in self._sources:
            try:
                self._leases.release(source.lease_name, self.owner)
            except Exception:
                log.exception("scheduler: could not release %s", source.lease_name)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the store away for a moment must not end the loop
                log.exception("scheduler tick failed")
            self._stop.wait(self._tick_s)
