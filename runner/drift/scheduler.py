"""The drift scheduler: fires each project's cron schedule once per deployment.

Two guards make "once" hold with several gunicorn workers or replicas: a lease in
the store (only its holder ticks at all) and a per-project slot claim (a scheduled
start is claimed atomically before it runs, so a lease hand-over in the middle of a
tick cannot fire it twice). Start times are spread over the period by a stable hash
of the project, so 500 projects on `0 * * * *` do not all plan in the same second.

In a server the scheduler only enqueues: as a source of the elected `JobScheduler`
(`runner/jobs/scheduler.py`) it submits one `drift_schedule` job per configured
repository every `tick_s` (`due`), and a worker runs it (`DriftScheduleHandler`):
check the repository out once, read its schedules, claim the due slots, scan those
projects. `tick()` does the same inline for every repository (tests, one process).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from contextlib import ExitStack
from datetime import datetime, timedelta

from croniter import croniter

from runner.config.model import ProjectConfig
from runner.drift.scan import DriftRepo, ScanSession
from runner.drift.service import DriftService
from runner.engine.project_mutex import state_key
from runner.jobs.payloads import DriftScheduleJob
from runner.results.drift import DriftReport
from runner.store.leases import LeaseStore
from runner.store.models import utcnow

log = logging.getLogger(__name__)

LEASE_NAME = "drift-scheduler"
DEFAULT_TICK_S = 30.0
DRIFT_SCHEDULE_KIND = "drift_schedule"
TICKS_KEPT = timedelta(days=1)
PRUNE_EVERY = timedelta(hours=1)


def schedule_of(project: ProjectConfig, server_default: str) -> str | None:
    """The cron expression a project is scanned on, None when it is not scheduled.

    `drift.enabled` set explicitly wins; left out, a server default schedule
    (GITOPS_DRIFT_SCHEDULE) turns drift on for every project.
    """
    drift = project.drift
    enabled = drift.enabled if "enabled" in drift.model_fields_set else bool(server_default)
    if not enabled:
        return None
    return drift.schedule or server_default or None


def slot_key(repo: DriftRepo, project: ProjectConfig) -> str:
    """What a project's schedule is claimed (`slot:<key>`) and spread by: its state's key.

    A schedule belongs to one Terraform state, so it is keyed like that state's mutex
    (one function, one spelling). Keys written before were `repo:dir:workspace`: after
    an upgrade each project may fire once more and move to its new spread offset.
    """
    return state_key(repo.key, project.dir, project.workspace)


def spread_offset(key: str, schedule: str, now: datetime) -> timedelta:
    """A stable offset inside the schedule's period for this project."""
    cron = croniter(schedule, now)
    following = cron.get_next(datetime)
    period = (cron.get_next(datetime) - following).total_seconds()
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return timedelta(seconds=digest % max(int(period), 1))


def latest_slot(schedule: str, offset: timedelta, now: datetime) -> datetime:
    """The newest cron time whose spread start (slot + offset) is not in the future."""
    return croniter(schedule, now - offset).get_prev(datetime)


class DriftScheduler:
    """A schedule source (`due`) and the tick a worker runs (`run_job`); `tick()` does
    it all inline. Every process may do so: the lease and slot claims keep it once."""

    def __init__(
        self,
        service: DriftService,
        *,
        owner: str | None = None,
        lease_ttl: timedelta = timedelta(minutes=5),
    ) -> None:
        self.service = service
        self.owner = owner or f"scheduler-{uuid.uuid4().hex[:12]}"
        self._leases = LeaseStore(service.store)
        self._ttl = lease_ttl
        self._next_due: datetime | None = None
        self._next_prune: datetime | None = None

    # ---- as a source of the elected job scheduler -----------------------------------

    lease_name = LEASE_NAME

    def due(self, now: datetime, tick_s: float = DEFAULT_TICK_S) -> list[DriftScheduleJob]:
        """One tick job per configured repository, every `tick_s` (the caller holds the lease).

        Ticks come every 30 s per repository: finished ones older than a day are deleted
        (once an hour), since what they found is in the drift history, not in the job.
        """
        if self._next_due is not None and now < self._next_due:
            return []
        self._next_due = now + timedelta(seconds=tick_s)
        if self._next_prune is None or now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY
            self.service.store.jobs.prune(now - TICKS_KEPT, kinds=(DRIFT_SCHEDULE_KIND,))
        return [
            DriftScheduleJob(repo=repo.key, at=now) for repo in self.service.resolve_repos(None)
        ]

    def run_job(self, job: DriftScheduleJob) -> DriftReport | None:
        """What a worker does with a tick job: scan what is due in that repository."""
        repo = next((r for r in self.service.resolve_repos(None) if r.key == job.repo), None)
        if repo is None:
            raise LookupError(f"{job.repo!r} is not a configured repository of this server")
        return self._tick_repo(repo, job.at, strict=True)

    def tick(self, now: datetime | None = None) -> list[DriftReport]:
        """Scan what is due now, if this process holds the lease; returns the reports."""
        now = now or utcnow()
        if not self._leases.acquire(LEASE_NAME, self.owner, self._ttl, now):
            return []
        reports = (self._tick_repo(repo, now) for repo in self.service.resolve_repos(None))
        return [report for report in reports if report is not None]

    def _tick_repo(
        self, repo: DriftRepo, now: datetime, *, strict: bool = False
    ) -> DriftReport | None:
        """Check the repository out once: read its schedules, then scan what is due there.

        `strict` (a job of its own) raises when the repository cannot be read, so the
        job fails with the reason; inline, one such repository must not stop the others.
        """
        with ExitStack() as held:
            try:
                session = held.enter_context(self.service.scanner.session(repo))
                due = self.due_projects(session, now)
            except Exception:
                if strict:
                    raise
                log.exception("drift scheduler: cannot read %s", repo.name)
                return None
            if not due:
                return None
            return self.service.scan_session(session, due, trigger="schedule")

    def due_projects(self, session: ScanSession, now: datetime) -> list[str]:
        """Projects of the checked-out repository whose scheduled start has come, claimed once."""
        default = self.service.settings.drift_schedule
        due = []
        for project in session.config.projects:
            schedule = schedule_of(project, default)
            if schedule is None:
                continue
            key = slot_key(session.repo, project)
            slot = latest_slot(schedule, spread_offset(key, schedule, now), now)
            if self._leases.claim_slot(key, slot, self.owner):
                due.append(project.name)
        return due

    def stop(self) -> None:
        """Give the lease up (at exit), so another process takes over at once."""
        self._leases.release(LEASE_NAME, self.owner)


class DriftScheduleHandler:
    """Runs `drift_schedule` jobs (a `JobHandler` for the registry)."""

    def __init__(self, scheduler: DriftScheduler) -> None:
        self._scheduler = scheduler

    def handle(self, event: DriftScheduleJob, cancel: threading.Event) -> None:
        self._scheduler.run_job(event)

    def is_apply(self, event: DriftScheduleJob) -> bool:
        # A scan may auto-correct (apply); its slots are claimed: the next slot scans again.
        return True

    def report_interrupted(self, event: DriftScheduleJob) -> None:
        log.error(
            "a scheduled drift scan of %s was interrupted by a crash or restart; it is not "
            "re-run (the next scheduled slot scans again). If it was auto-correcting, "
            "Terraform may have left a state lock held: `terraform force-unlock LOCK_ID`.",
            event.repo,
        )
