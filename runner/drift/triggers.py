"""Drift scans on demand (`POST /api/drift`): recorded as jobs, run in the background.

A scan takes minutes, a request must not: `submit` records the scan as a row of the
`jobs` table (kind `drift_scan`, payload `DriftScanJob`) and returns its id at once, so
the id means the same in every gunicorn worker and replica (`GET /api/drift/scans/<id>`,
`/api/jobs`), and the history survives restarts. The same scan asked for again while it
is queued or runs gets the same id (a dedupe key), so a button pressed twice plans once.

In a server, `DriftScans` is given the job queue's `submit`: the scan is a job like any
other, run by whichever worker claims `drift_scan` jobs (the in-process workers, or a
`gitops-runner worker --kinds drift`), with `DriftScanHandler`. The web process only
enqueues. Without a queue (one process on its own, tests) the process that accepted
the request claims the row at once and runs it on a thread of its own, at most
`max_running` at a time (more are refused with `ScansBusy` rather than queued in
memory, where a restart would lose them). Either way the scan runs `run_scan`, under a
lease; if its process dies, job recovery marks it interrupted (a scan may auto-correct,
so it is never re-run behind people's backs: asking again is one request).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from runner.jobs.cancellation import LeaseKeeper
from runner.jobs.model import JobPayload
from runner.jobs.payloads import DriftScanJob
from runner.jobs.queue import DEFAULT_TIMING, JobTiming, enqueue_job
from runner.store.jobs import JobRecord, JobStatus
from runner.store.owners import new_owner_id, process_owner_prefix
from runner.store.store import Store

if TYPE_CHECKING:
    from collections.abc import Callable

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

    def job(self) -> DriftScanJob:
        return DriftScanJob(repo=self.repo, project=self.project, trigger="api")

    def payload(self) -> dict[str, Any]:
        return {"repo": self.repo, "project": self.project}

    @property
    def dedupe_key(self) -> str:
        return self.job().dedupe_key

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
    """Accepts scan requests; queues them as jobs (`submit_job`) or runs them in
    background threads of this process."""

    def __init__(
        self,
        service: DriftService,
        *,
        max_running: int = DEFAULT_MAX_RUNNING,
        timing: JobTiming = DEFAULT_TIMING,
        owner_prefix: str | None = None,
        submit_job: Callable[[JobPayload], int] | None = None,
    ) -> None:
        self._service = service
        self._submit_job = submit_job
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
        if self._submit_job is not None:
            return self._enqueue(request, self._submit_job)
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

    def _enqueue(self, request: ScanRequest, submit: Callable[[JobPayload], int]) -> ScanTicket:
        """The scan as a job for the workers; the ticket of the same one if it is pending."""
        with self._lock:
            if self._stopped:
                raise ScansStopped("the runner is shutting down")
        jobs = self._store.jobs
        pending = jobs.active_with_key(request.dedupe_key)
        job_id = submit(request.job())
        if job_id != pending:  # a new job: queued as it was written, nothing to read back
            return ScanTicket(job_id, JobStatus.QUEUED, started=True, request=request)
        current = jobs.get(job_id)  # the same scan, asked before: it may be running by now
        status = current.status if current is not None else JobStatus.QUEUED
        return ScanTicket(job_id, status, started=False, request=request)

    def _submit(self, request: ScanRequest) -> ScanTicket:
        jobs = self._store.jobs
        job_id = enqueue_job(self._store, request.job())
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
                run_scan(self._service, request.job())
        except ScanFailed as failure:
            jobs.fail(job_id, str(failure), owner)
        except Exception as error:
            log.exception("drift scan %s failed", job_id)
            jobs.fail(job_id, f"{type(error).__name__}: {error}", owner)
        else:
            jobs.complete(job_id, owner)


class ScanFailed(RuntimeError):
    """A scan ran but did not do what was asked (a repository failed, nothing scanned)."""


def run_scan(service: DriftService, job: DriftScanJob) -> DriftReport:
    """One drift scan job, wherever it runs: refuses what the server does not scan,
    raises `ScanFailed` with the reasons when the scan did not do what was asked."""
    if job.repo is not None and not any(r.key == job.repo for r in service.resolve_repos(None)):
        raise UnknownRepository(f"{job.repo!r} is not a configured repository")
    report = service.scan(job.repo, job.project, trigger=job.trigger)
    problems = _problems(report)
    if problems:
        raise ScanFailed("; ".join(problems))
    return report


class DriftScanHandler:
    """Runs `drift_scan` jobs on a worker (a `JobHandler` for the registry)."""

    def __init__(self, service: DriftService) -> None:
        self._service = service

    def handle(self, event: DriftScanJob, cancel: threading.Event) -> None:
        run_scan(self._service, event)

    def is_apply(self, event: DriftScanJob) -> bool:
        return True  # it may auto-correct: an interrupted scan is not re-run by itself

    def report_interrupted(self, event: DriftScanJob) -> None:
        log.error(
            "drift scan of %s was interrupted by a crash or restart and is not re-run; "
            "ask again. If it was auto-correcting, Terraform may have left a state lock "
            "held: `terraform force-unlock LOCK_ID`.",
            event.repo or "every repository",
        )


def _problems(report: DriftReport) -> list[str]:
    """Why a scan did not do what was asked: a repository failed, or nothing was scanned."""
    problems = list(report.notes)
    if not report.results and not problems:
        problems.append("nothing was scanned")
    return problems
