"""Reconcile passes as jobs: what the scheduler polls, what a push queues, what a worker runs.

In a server, nothing reconciles on a thread of the web process. The elected scheduler
(`runner/jobs/scheduler.py`) asks `ReconcilePolls` which repositories are due and
enqueues a `reconcile` job (`ReconcileJob`, trigger "poll") for each; a push to the
default branch of a reconciled repository enqueues one at once (`job_for_push`,
trigger "push"), so a new commit is applied within seconds while the poll stays as the
safety net. A worker runs the job with `ReconcileHandler`: one `reconcile_once` of the
one `Reconciler`, the same pass `gitops-runner reconcile` runs.

Passes over one repository run one at a time across all workers (the job group
`reconcile:<url>` holds the group mutex around each); a poll queued while one is
queued is the same job (dedupe), a push of a new commit queues behind a running pass.
Only repositories of the server config (`repos:` with a `poll_interval`) are
reconciled: a job naming anything else is refused by the handler.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from runner.drift.scan import DriftRepo
from runner.events.model import PushEvent
from runner.jobs.payloads import ReconcileJob
from runner.reconcile.reconciler import LEASE_NAME, Reconciler
from runner.reconcile.targets import DEFAULT_INTERVAL_S, target_for
from runner.settings import PolledRepo, Settings

log = logging.getLogger(__name__)


class NotReconciled(LookupError):
    """A reconcile job for a repository the server config does not reconcile."""


def reconciled_repos(settings: Settings) -> list[PolledRepo]:
    """The repositories of `repos:` that follow their default branch (a `poll_interval`)."""
    return [entry for entry in settings.repos if entry.poll_interval is not None]


class ReconcilePolls:
    """The scheduler's source of poll jobs: each reconciled repository on its interval.

    When the repository was last polled is kept in memory: a new scheduler (after a
    lease hand-over) polls everything at once, which costs one fetch per repository.
    """

    lease_name = LEASE_NAME  # the lease the reconciler loop always held: one per deployment

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._next: dict[str, datetime] = {}

    def due(self, now: datetime) -> list[ReconcileJob]:
        jobs = []
        for entry in reconciled_repos(self._settings):
            if self._next.get(entry.url, now) > now:
                continue
            interval = float(entry.poll_interval or DEFAULT_INTERVAL_S)
            self._next[entry.url] = now + timedelta(seconds=interval)
            jobs.append(ReconcileJob(repo=entry.url, trigger="poll"))
        return jobs


def job_for_push(event: PushEvent, settings: Settings) -> ReconcileJob | str:
    """The reconcile job a push queues, or why it queues none.

    Only a push to the followed branch (the entry's `branch`, else the repository's
    default branch) of a reconciled repository, matched by its canonical key: the
    webhook's repository and the config's entry are the same repository exactly when
    their keys are equal, however the URLs are spelled.
    """
    for entry in reconciled_repos(settings):
        if _key_of(entry, settings) != event.repo.key:
            continue
        branch = entry.branch or event.repo.default_branch
        if event.branch != branch:
            return f"push to {event.branch}, not to the reconciled branch {branch}"
        return ReconcileJob(repo=entry.url, trigger="push", sha=event.after or None)
    return "repository is not reconciled"


def _key_of(entry: PolledRepo, settings: Settings) -> str:
    return DriftRepo.from_url(
        entry.url,
        branch=entry.branch,
        full_name=entry.full_name,
        forge=entry.forge,  # type: ignore[arg-type]
        forge_hosts=settings.forge_hosts(),
    ).key


class ReconcileFailed(RuntimeError):
    """The pass could not run at all (fetch, config): the job fails with the reason."""


class ReconcileHandler:
    """Runs `reconcile` jobs (a `JobHandler` for the registry)."""

    def __init__(self, reconciler: Reconciler, settings: Settings) -> None:
        self._reconciler = reconciler
        self._settings = settings

    def handle(self, event: ReconcileJob, cancel: threading.Event) -> None:
        entry = next((e for e in reconciled_repos(self._settings) if e.url == event.repo), None)
        if entry is None:
            raise NotReconciled(f"{event.repo!r} is not a reconciled repository of this server")
        log.info("reconcile of %s (%s %s)", event.repo, event.trigger, event.sha or "")
        report = self._reconciler.reconcile_once(target_for(entry.url, self._settings))
        if report.error:
            raise ReconcileFailed(report.error)

    def is_apply(self, event: ReconcileJob) -> bool:
        return True  # a pass applies: never re-run one cut short behind people's backs

    def report_interrupted(self, event: ReconcileJob) -> None:
        # The next poll plans again from the last bookmark; the state lock may be held.
        log.error(
            "a reconcile pass of %s was interrupted by a crash or restart; it is not re-run, "
            "the next poll plans again. Terraform may have left a state lock held: check "
            "the project's state and run `terraform force-unlock LOCK_ID` if needed.",
            event.repo,
        )
