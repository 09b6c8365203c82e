"""Job handlers for tests of the queue around a webhook."""

from __future__ import annotations

import threading

from runner.jobs.model import WorkEvent


class IdleHandler:
    """For a queue that is never started: its jobs stay queued (or get superseded)."""

    def handle(self, event: WorkEvent, cancel: threading.Event) -> None:
        raise AssertionError("no job runs in these tests")

    def is_apply(self, event: WorkEvent) -> bool:
        return False

    def report_interrupted(self, event: WorkEvent) -> None:
        pass
