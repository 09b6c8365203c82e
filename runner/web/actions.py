"""What an operator may do from the dashboard or the API: unlock, start a scan or a reconcile.

Both the unlock button (pages.py) and `POST /api/v1/...` (api_v1.py) call these, after
the auth guard checked the role (and, for a browser, the CSRF token). Each action is
logged with who asked, because it changes what the runner will do next.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from runner.drift.triggers import (
    ScanRefused,
    ScansBusy,
    ScansStopped,
    ScanTicket,
    UnknownRepository,
)
from runner.jobs.payloads import ReconcileJob
from runner.reconcile.jobs import reconciled_repos
from runner.reconcile.targets import target_for
from runner.store.locks import LockInfo
from runner.store.store import Store
from runner.web.context import WebContext

logger = logging.getLogger(__name__)


class ActionRefused(Exception):
    """The action cannot be done now; `status` is the HTTP answer that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Unlocked:
    released: bool
    lock: LockInfo | None


def unlock(store: Store, repo: str, dir: str, workspace: str, who: str) -> Unlocked:
    """Release a project lock, whoever holds it (like `gitops unlock`, without a PR).

    Released by its holder's PR number when a PR holds it, so a lock a new PR took
    between the read and the release is never the one removed.
    """
    lock = store.locks.get(repo, dir, workspace)
    if lock is None:
        return Unlocked(released=False, lock=None)
    released = store.locks.release(repo, dir, workspace, owner_pr=lock.owner_pr)
    if released:
        logger.warning(
            "%s unlocked %s %s (%s), held by %s",
            who,
            repo,
            dir,
            workspace,
            f"#{lock.owner_pr}" if lock.owner_pr else lock.owner_user or f"run {lock.run_id}",
        )
    return Unlocked(released=released, lock=lock if released else None)


def start_drift_scan(
    context: WebContext, repo: str | None, project: str | None, who: str
) -> ScanTicket:
    """A drift scan in the background (runner/drift/triggers.py); its ticket at once."""
    trigger = context.services.drift_trigger
    if trigger is None:
        raise ActionRefused(503, "drift scans are not available in this process")
    try:
        ticket = trigger(repo, project)
    except UnknownRepository as error:  # the request is well formed; the repo is unknown
        raise ActionRefused(404, str(error)) from None
    except ScanRefused as error:
        raise ActionRefused(400, str(error)) from None
    except ScansBusy as error:
        raise ActionRefused(429, str(error)) from None
    except ScansStopped as error:
        raise ActionRefused(503, str(error)) from None
    logger.info("%s started drift scan %s (%s %s)", who, ticket.id, repo or "*", project or "*")
    return ticket


@dataclass(frozen=True)
class ReconcileQueued:
    repo: str  # the configured repository's URL
    job_id: int


def queue_reconcile(context: WebContext, repo: str, who: str) -> ReconcileQueued:
    """Queue a reconcile pass of a reconciled repository now, as its poll would.

    Only repositories of the server config with a `poll_interval` (named by URL, key or
    owner/name): a request never makes the runner clone and apply something else. Queued
    as a poll, so it joins a poll already waiting instead of queuing a second pass.
    """
    settings = context.settings
    for entry in reconciled_repos(settings):
        target = target_for(entry.url, settings)
        if repo in (entry.url, target.repo.key, target.repo.full_name):
            job_id = context.services.submit(ReconcileJob(repo=entry.url, trigger="poll"))
            logger.info("%s queued a reconcile of %s (job %s)", who, entry.url, job_id)
            return ReconcileQueued(entry.url, job_id)
    raise ActionRefused(
        404, f"{repo!r} is not a reconciled repository (repos: entries with a poll_interval)"
    )
