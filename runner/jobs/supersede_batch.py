"""Superseding for many PRs at once: one read and one write, whatever their number.

`cancellation.supersede` handles one PR group: a read of its active jobs, a write to
cancel the obsolete ones. That suits a process whose own submits feed it, one push at a
time. `serve`'s job process (runner/jobs/job_process.py) instead finds every job the
web processes stored since it last looked, often pushes to dozens of PRs; a write per
PR there would take SQLite's write lock as often as the webhooks do, and every take
can make a webhook's write wait on another process (issue 10, measured). Same rule as
`supersede`: the newest push or close of a PR cancels that PR's older autoplans.
"""

from __future__ import annotations

from collections.abc import Mapping

from runner.jobs.cancellation import Superseded, is_superseding, supersedes
from runner.jobs.model import UnknownJobFormat, WorkEvent, decode_event, kind_of, pr_group
from runner.store.jobs import JobRecord, JobStatus
from runner.store.store import Store

# The newest superseding job of each PR group: group -> (job id, event).
Newest = Mapping[str, tuple[int, WorkEvent]]


def newest_by_group(jobs: list[tuple[int, WorkEvent]]) -> dict[str, tuple[int, WorkEvent]]:
    """Of `jobs`, the newest one per PR group that supersedes (a push or a close)."""
    newest: dict[str, tuple[int, WorkEvent]] = {}
    for job_id, event in jobs:
        if not is_superseding(event):
            continue
        group = pr_group(event)
        if group not in newest or newest[group][0] < job_id:
            newest[group] = (job_id, event)
    return newest


def supersede_groups(store: Store, newest: Newest) -> Superseded:
    """Cancel, for each group's newest superseding job, the group's older autoplans."""
    result = Superseded()
    obsolete = _obsolete(store, newest)
    if not obsolete:
        return result
    batches = [
        (
            [record.id for record in records if record.status == JobStatus.QUEUED],
            _reason(*newest[group]),
        )
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
            if store.jobs.cancel_running(record.id, _reason(*newest[group])):
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
    # The same words as cancellation.supersede writes.
    action = getattr(event, "action", "event")
    return f"superseded by job {job_id} (pull request {action})"
