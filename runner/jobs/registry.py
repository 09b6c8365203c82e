"""The job registry: kind → handler, for one process.

The catalogue of kinds (payload type, version, group) is fixed in
`runner/jobs/model.py`; which of them a process runs, and with which handler, is the
registry's business. The composition root (`runner/wiring.py`) builds one from the
process's services: the PR flow for `pull_request` and `comment`, the drift service
for `drift_scan` and `drift_schedule`, the reconciler for `reconcile`. The queues
claim exactly the registry's kinds (`kinds`), so `gitops-runner worker --kinds drift`
runs drift jobs and leaves everything else to other workers, and a worker of an older
version never claims a kind it has no handler for.

The registry is itself a `JobHandler`: it dispatches each payload to its kind's
handler, so the queue, the runner and recovery stay blind to what the work is.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from typing import Any

from runner.jobs.model import KINDS, PR_KINDS, JobHandler, JobPayload, kind_for


class NoHandler(LookupError):
    """A payload of a kind this process has no handler for (it should never claim it)."""


class JobRegistry:
    """Handlers by kind name; see the module docstring."""

    def __init__(self, handlers: Mapping[str, JobHandler]) -> None:
        unknown = sorted(set(handlers) - set(KINDS))
        if unknown:
            raise ValueError(f"no such job kind(s): {', '.join(unknown)}")
        self._handlers = dict(handlers)

    @classmethod
    def for_pull_requests(cls, handler: JobHandler) -> JobRegistry:
        """A registry of the forge-event kinds only, run by `handler` (the PR flow)."""
        return cls(dict.fromkeys(PR_KINDS, handler))

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds this process runs, in catalogue order: what its queue claims."""
        return tuple(name for name in KINDS if name in self._handlers)

    def only(self, kinds: Collection[str]) -> JobRegistry:
        """The same handlers for `kinds` alone (`worker --kinds`)."""
        return JobRegistry({k: h for k, h in self._handlers.items() if k in kinds})

    def handler_for(self, payload: JobPayload) -> JobHandler:
        name = kind_for(payload).name
        try:
            return self._handlers[name]
        except KeyError:
            raise NoHandler(f"this process runs no {name} jobs") from None

    # ---- JobHandler --------------------------------------------------------------------

    def handle(self, event: Any, cancel: threading.Event) -> None:
        self.handler_for(event).handle(event, cancel)

    def is_apply(self, event: Any) -> bool:
        try:
            handler = self.handler_for(event)
        except NoHandler:
            return True  # unknown to this process: never re-run it blindly
        return handler.is_apply(event)

    def report_interrupted(self, event: Any) -> None:
        self.handler_for(event).report_interrupted(event)


def handled_kinds(handler: JobHandler) -> tuple[str, ...]:
    """The kinds `handler` runs: a registry says; any other handler is the PR flow's kind."""
    kinds = getattr(handler, "kinds", None)
    return tuple(kinds) if kinds is not None else PR_KINDS
