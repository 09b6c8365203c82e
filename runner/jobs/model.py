"""What a job is and how it is persisted.

A job is one normalised forge event that needs work (an autoplan, a comment
command, a merge). Its persisted form is explicit and versioned: the `kind` names
the event type, the `payload` is the event as JSON, `JOB_FORMAT_VERSION` says how
to read it. A worker on another machine (RQ) reads the same rows.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from pydantic import TypeAdapter

from runner.events.model import CommentEvent, PullRequestEvent

JOB_FORMAT_VERSION = 1

WorkEvent = PullRequestEvent | CommentEvent

_KINDS: dict[str, type[PullRequestEvent] | type[CommentEvent]] = {
    "pull_request": PullRequestEvent,
    "comment": CommentEvent,
}
_ADAPTERS = {kind: TypeAdapter(cls) for kind, cls in _KINDS.items()}


class UnknownJobFormat(ValueError):
    """A job row written by another version of the runner that this one cannot read."""


def kind_of(event: WorkEvent) -> str:
    return "pull_request" if isinstance(event, PullRequestEvent) else "comment"


def encode_event(event: WorkEvent) -> tuple[str, dict[str, Any]]:
    """The (kind, payload) stored for an event."""
    kind = kind_of(event)
    return kind, _ADAPTERS[kind].dump_python(event, mode="json")


def decode_event(
    kind: str, payload: dict[str, Any], version: int = JOB_FORMAT_VERSION
) -> WorkEvent:
    """The event a stored job carries; refuses formats it does not know."""
    if version != JOB_FORMAT_VERSION or kind not in _ADAPTERS:
        raise UnknownJobFormat(f"cannot read job kind={kind!r} version={version}")
    return _ADAPTERS[kind].validate_python(payload)


def pr_group(event: WorkEvent) -> str:
    """Jobs of one pull request share a group: they run one at a time, in order."""
    number = event.pr.number if isinstance(event, PullRequestEvent) else event.pr_number
    return f"{event.repo.key}#{number}"


class JobHandler(Protocol):
    """The work behind a job; the PR flow implements it, the queue only calls it."""

    def handle(self, event: WorkEvent, cancel: threading.Event) -> None:
        """Do the work. `cancel` is set when a newer push supersedes this job."""
        ...

    def is_apply(self, event: WorkEvent) -> bool:
        """Whether the job may run `terraform apply` (never re-run after a crash)."""
        ...

    def report_interrupted(self, event: WorkEvent) -> None:
        """Tell the PR that an apply was cut short by a crash or restart."""
        ...
