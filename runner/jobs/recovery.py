"""Jobs whose worker died: who owns a job, how to tell that owner is gone, what to do then.

A job is claimed under a lease-owner id that names the process holding it:
`host:pid:start:label:nonce.` (`start` is the process start time, so a recycled pid,
as after a container restart, is not mistaken for the old process). A running job
is orphaned when its lease expired (plus a grace for clock skew between machines),
or when its owner was a process of this host that no longer exists: that second
check lets a restarted runner pick its jobs up at once instead of after the lease.

An orphaned plan goes back to the queue (plans are idempotent), up to the store's
attempt limit. An orphaned apply never runs again by itself: it is marked
`interrupted` and the handler tells the PR, because Terraform may have changed
infrastructure and left its state lock held.
`recover` is idempotent and safe to run from any number of processes at once: each
job is recovered by exactly one of them (the store checks and changes it atomically).
A process recovers only the kinds it runs (`kinds`): a worker started for `--kinds pr`
leaves a dead drift worker's scan to the drift workers, whose handler knows whether
it may re-run it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from runner.jobs.model import JobHandler, UnknownJobFormat, decode_job
from runner.store.jobs import JobRecord, JobStatus
from runner.store.models import utcnow
from runner.store.owners import owner_is_gone
from runner.store.store import Store

log = logging.getLogger(__name__)

# Leases are renewed well before they end; the grace absorbs clock skew between hosts
# and a heartbeat delayed by a busy database.
DEFAULT_LEASE_GRACE_S = 30.0


@dataclass(frozen=True)
class RecoveryReport:
    requeued: list[int] = field(default_factory=list)
    interrupted: list[int] = field(default_factory=list)


def orphan_cutoff(lease_grace: float = DEFAULT_LEASE_GRACE_S) -> datetime:
    """Leases that ended before this moment belong to dead (or hopelessly stuck) workers."""
    return utcnow() - timedelta(seconds=lease_grace)


def is_orphaned(record: JobRecord, expired_before: datetime) -> bool:
    """A running job whose worker is gone: its lease ran out, or its process is dead."""
    if record.status != JobStatus.RUNNING:
        return False
    expires = record.lease_expires_at
    return (expires is not None and expires < expired_before) or owner_is_gone(record.lease_owner)


def recover(
    store: Store,
    handler: JobHandler,
    lease_grace: float = DEFAULT_LEASE_GRACE_S,
    kinds: Collection[str] | None = None,
) -> RecoveryReport:
    """Re-queue orphaned plans, interrupt (and report) orphaned applies (of `kinds`;
    default: all)."""
    report = RecoveryReport()
    # A run (apply or plan) left "running" by a dead process, whatever started it.
    for run_id in store.runs.interrupt_orphaned(lambda owner: owner_is_gone(owner + ":")):
        log.warning("run %s interrupted: its process is gone", run_id)
    expired_before = orphan_cutoff(lease_grace)
    for record in store.jobs.list(status=JobStatus.RUNNING):
        if not is_orphaned(record, expired_before):
            continue
        if kinds is not None and record.kind not in kinds:
            continue
        gone = owner_is_gone(record.lease_owner)
        reason = "its worker process is gone" if gone else "its lease expired"
        event = _decode(record)
        apply = event is None or _is_apply(handler, event)
        recovered = store.jobs.recover_job(
            record.id,
            retry=not apply,
            reason=reason,
            # Only while still held by the owner we judged, and (unless that owner is
            # known dead) only if its lease really ended: a late heartbeat wins.
            owner=record.lease_owner,
            expired_before=None if gone else expired_before,
        )
        if recovered is None:
            continue  # it finished, or was recovered by another process, meanwhile
        if recovered.status == JobStatus.QUEUED:
            report.requeued.append(recovered.id)
            log.warning("job %s re-queued: %s", recovered.id, reason)
            continue
        report.interrupted.append(recovered.id)
        log.warning("job %s interrupted: %s (attempt %s)", recovered.id, reason, recovered.attempts)
        if apply and event is not None:
            _report(handler, recovered.id, event)
    return report


def _decode(record: JobRecord) -> Any:
    try:
        return decode_job(record.kind, record.payload, record.version)
    except (UnknownJobFormat, ValueError):
        # Written by another version: whether it applies is unknown, so never re-run it.
        log.error("job %s has a format this runner cannot read; interrupting it", record.id)
        return None


def _is_apply(handler: JobHandler, event: Any) -> bool:
    try:
        return handler.is_apply(event)
    except Exception:
        log.exception("is_apply failed; treating the job as an apply")
        return True


def _report(handler: JobHandler, job_id: int, event: Any) -> None:
    try:
        handler.report_interrupted(event)
    except Exception:
        # The job is already marked interrupted; a forge outage must not stop recovery.
        log.exception("could not report interrupted job %s", job_id)
