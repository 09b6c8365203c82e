"""What an operator may do from the dashboard or the API: unlock a project, start a scan.

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
