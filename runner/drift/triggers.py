"""Drift scans on demand (`POST /api/drift`): recorded as jobs, run in the background.

A scan takes minutes, a request must not: `submit` records the scan as a row of the
`jobs` table (kind `drift_scan`) and returns its id at once, so the id means the same
in every gunicorn worker and replica (`GET /api/drift/scans/<id>`, `/api/jobs`), and the
history survives restarts. The same scan asked for again while it runs gets the same
id (a dedupe key), so a button pressed twice plans once.

The process that accepted the request claims the row at once and runs it in a thread
of its own. Claimed at once because nobody else would run it: the PR job workers only
claim PR kinds, and a row left `queued` would keep their idle polling busy. While a
scan runs, a `LeaseKeeper` renews its lease; if the process dies, job recovery finds
the row and marks it interrupted (a scan is never re-run behind people's backs: asking
again is one request). At most `max_running` scans run per process; more are refused
(`ScansBusy`) rather than queued in memory, where a restart would lose them.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from runner.jobs.cancellation import LeaseKeeper
from runner.jobs.queue import DEFAULT_TIMING, JobTiming
from runner.store.jobs import JobRecord, JobStatus
from runner.store.owners import new_owner_id, process_owner_prefix
from runner.store.store import Store

if TYPE_CHECKING:
    from runner.drift.service import DriftService
    from runner.results.drift import DriftReport, DriftResult

log = logging.getLogger(__name__)

DRIFT_SCAN_KIND = "drift_scan"
DRIFT_SCAN_VERSION = 1
DEFAULT_MAX_RUNNING = 2
MAX_PROJECT_NAME = 200


class ScanRefused(ValueError):
    """The scan cannot be accepted as asked (the message says why, for the API answer)."""


class UnknownRepository(ScanRefused):
    """Only repositories of the server config are scanned on request.

    A URL or path from an unauthenticated request would otherwise make the runner
    clone and plan (run providers of) any repository anyone names.
    """


class ScansBusy(RuntimeError):
    """This process already runs as many scans as it may; ask again later."""


class ScansStopped(RuntimeError):
    """The process is shutting down and starts no new scan."""


@dataclass(frozen=True)
class ScanRequest:
    """What to scan: a configured repository (its key) or all, one project or all."""

    repo: str | None = None
    project: str | None = None

    def payload(self) -> dict[str, Any]:
        return {"repo": self.repo, "project": self.project}

    @property
    def dedupe_key(self) -> str:
        return f"drift-scan:{self.repo or '*'}:{self.project or '*'}"

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> ScanRequest:
        return cls(repo=payload.get("repo"), project=payload.get("project"))


@dataclass(frozen=True)
class ScanTicket:
    """The answer to a trigger: the job id, its state, and whether this call started it."""

    id: int
    status: JobStatus
    started: bool  # False: the same scan was already running (or just finished)
    request: ScanRequest


@dataclass(frozen=True)
class ScanStatus:
    """A drift scan job as the API shows it."""

    id: int
    status: JobStatus
    request: ScanRequest
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None

    @classmethod
    def of(cls, record: JobRecord) -> ScanStatus:
        payload = record.payload if isinstance(record.payload, dict) else {}
        return cls(
            id=record.id,
            status=record.status,
            request=ScanRequest.from_payload(payload),
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            error=record.error,
        )


def drift_scan_status(store: Store, scan_id: int) -> ScanStatus | None:
    """A scan job by id, from the store (so every process answers the same)."""
    record = store.jobs.get(scan_id)
    if record is None or record.kind != DRIFT_SCAN_KIND:
        return None
    return ScanStatus.of(record)


def recent_drift_scans(store: Store, limit: int = 20) -> list[ScanStatus]:
    """The newest scan jobs first."""
    records = store.jobs.list(kind=DRIFT_SCAN_KIND)
    return [ScanStatus.of(record) for record in reversed(records[-limit:])]


class DriftScans:
    """Accepts scan requests and runs them in background threads of this process."""

    def __init__(
        self,
        service: DriftService,
        *,
        max_running: int = DEFAULT_MAX_RUNNING,
        timing: JobTiming = DEFAULT_TIMING,
        owner_prefix: str | None = None,
    ) -> None:
        self._service = service
        self._store = service.store
        self._timing = timing
        self._prefix = owner_prefix or process_owner_prefix()
        self._slots = threading.BoundedSemaphore(max_running)
        self._lock = threading.Lock()
        self._threads: dict[int, tuple[threading.Thread, str]] = {}
        self._stopped = False

    # ---- what the web layer calls --------------------------------------------------

    def submit(self, repo: str | None = None, project: str | None = None) -> ScanTicket:
        """Record the scan and start it in the background; returns without waiting for it.

        Raises ScanRefused (bad repository or project), ScansBusy, ScansStopped.
        """
        request = self.request(repo, project)
        if not self._slots.acquire(blocking=False):
            raise ScansBusy("drift scans are already running in this process; try again later")
        try:
            return self._submit(request)
        except BaseException:
            self._slots.release()
            raise

    def latest(self, repo: str | None = None) -> list[DriftResult]:
        """The newest stored result of every project (of one repository)."""
        key = self._configured_key(repo) if repo else None
        return self._service.latest(key or repo)

    def request(self, repo: str | None, project: str | None) -> ScanRequest:
        """Validate a request against the server config; repositories by URL, key or name."""
        if project is not None and not (0 < len(project.strip()) <= MAX_PROJECT_NAME):
            raise ScanRefused("project must be a non-empty project name")
        configured = self._service.resolve_repos(None)
        if not configured:
            raise UnknownRepository(
                "no repositories are configured for drift scans (`repos:` in the server config)"
            )
        if repo is None:
            return ScanRequest(None, project)
        key = self._configured_key(repo)
        if key is None:
            names = ", ".join(sorted(r.name for r in configured))
            raise UnknownRepository(f"{repo!r} is not a configured repository (known: {names})")
        return ScanRequest(key, project)

    def stop(self, timeout: float = 10.0) -> None:
        """Start no new scan; give running ones `timeout` seconds, then mark them failed.

        A scan cannot be interrupted half-way safely (it may be auto-correcting); one
        still running when the process exits is recorded as failed here, and a process
        killed outright leaves it to job recovery.
        """
        with self._lock:
            self._stopped = True
            running = dict(self._threads)
        for thread, _owner in running.values():
            thread.join(timeout)
        for job_id, (thread, owner) in running.items():
            if thread.is_alive():
                self._store.jobs.fail(job_id, "the runner stopped during the scan", owner)

    # ---- internals -----------------------------------------------------------------

    def _configured_key(self, repo: str) -> str | None:
        for candidate in self._service.resolve_repos(None):
            if repo in (candidate.url, candidate.key, candidate.full_name):
                return candidate.key
        return None

    def _submit(self, request: ScanRequest) -> ScanTicket:
        jobs = self._store.jobs
        job_id = jobs.enqueue(
            DRIFT_SCAN_KIND,
            request.payload(),
            dedupe_key=request.dedupe_key,
            version=DRIFT_SCAN_VERSION,
        )
        owner = new_owner_id(self._prefix, "drift")
        with self._lock:
            if self._stopped:
                jobs.cancel(job_id)
                raise ScansStopped("the runner is shutting down")
            record = jobs.claim_id(job_id, owner, self._timing.lease_s)
            if record is None:  # already running (the same scan asked twice), or just ended
                self._slots.release()
                current = jobs.get(job_id)
                status = current.status if current is not None else JobStatus.DONE
                return ScanTicket(job_id, status, started=False, request=request)
            thread = threading.Thread(
                target=self._run,
                args=(job_id, owner, request),
                name=f"drift-scan-{job_id}",
                daemon=True,
            )
            self._threads[job_id] = (thread, owner)
        thread.start()
        return ScanTicket(job_id, JobStatus.RUNNING, started=True, request=request)

    def _run(self, job_id: int, owner: str, request: ScanRequest) -> None:
        try:
            self._scan(job_id, owner, request)
        finally:
            with self._lock:
                self._threads.pop(job_id, None)
            self._slots.release()

    def _scan(self, job_id: int, owner: str, request: ScanRequest) -> None:
        jobs = self._store.jobs
        lease = LeaseKeeper(
            self._store,
            job_id,
            owner,
            threading.Event(),  # nothing to cancel: a scan always runs to its end
            lease_s=self._timing.lease_s,
            heartbeat_s=self._timing.heartbeat_s,
            poll_s=self._timing.poll_s,
        )
        try:
            with lease:
                report = self._service.scan(request.repo, request.project, trigger="api")
        except Exception as error:
            log.exception("drift scan %s failed", job_id)
            jobs.fail(job_id, f"{type(error).__name__}: {error}", owner)
            return
        problems = _problems(report)
        if problems:
            jobs.fail(job_id, "; ".join(problems), owner)
        else:
            jobs.complete(job_id, owner)


def _problems(report: DriftReport) -> list[str]:
    """Why a scan did not do what was asked: a repository failed, or nothing was scanned."""
    problems = list(report.notes)
    if not report.results and not problems:
        problems.append("nothing was scanned")
    return problems
