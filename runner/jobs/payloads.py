"""The payloads of the jobs that are not forge events: drift and reconcile work.

A pull-request event or a comment is its own payload (`runner/events/model.py`). The
other kinds of work are described by these small models, persisted as JSON in the job
row and validated again when a worker reads them (pydantic): a worker acts on what the
scheduler or the webhook decided, never on a dict. They name repositories by the key
or URL of the server config (`repos:`), never by anything a request could invent: the
handler resolves them against its own config and refuses the rest.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class DriftScanJob(_Payload):
    """One drift scan now: a configured repository (its key) or all, one project or all.

    Written with version 1 since the API first queued scans (`{repo, project}`); the
    `trigger` came later within version 1 and reads as "api" from older rows.
    """

    repo: str | None = None
    project: str | None = None
    trigger: Literal["api", "schedule"] = "api"

    @property
    def dedupe_key(self) -> str:
        """The same scan asked for again while it is queued or running is that job."""
        return f"drift-scan:{self.repo or '*'}:{self.project or '*'}"


class DriftScheduleJob(_Payload):
    """The scheduler's tick for one repository: read its schedules, scan what is due.

    `at` is when the tick fired: due slots are judged at that time wherever and
    whenever a worker runs the job, so a job that waited in the queue still claims the
    slot it was enqueued for.
    """

    repo: str  # the configured repository's key
    at: datetime

    @property
    def dedupe_key(self) -> str:
        # One tick per repository at a time: ticks every 30 s while a scan takes minutes.
        return f"drift-schedule:{self.repo}"


class ReconcileJob(_Payload):
    """Reconcile one repository of `repos:` now: its default branch, planned and applied.

    `trigger` says why: the poll interval came round, or a push to the default branch
    arrived (`sha`, the pushed commit, then names it; the pass still applies whatever
    the branch holds when it runs).
    """

    repo: str  # the configured repository's URL
    trigger: Literal["poll", "push"] = "poll"
    sha: str | None = None

    @property
    def dedupe_key(self) -> str:
        # A push of a new commit queues behind a running pass instead of merging into it
        # (that pass may have read the head before the push); polls coalesce.
        return f"reconcile:{self.repo}:{self.sha or 'poll'}"
