"""What a job is and how it is persisted.

A job is one normalised forge event that needs work (an autoplan, a comment
command, a merge). Its persisted form is explicit and versioned: the `kind` names
the event type, the `payload` is the event as JSON, `JOB_FORMAT_VERSION` says how
to read it. A worker on another machine (RQ) reads the same rows.

Versions: 1 stored a comment as its text only; 2 adds the parsed `command` (null,
a command, or the refusal), so a worker acts on what the webhook decided instead of
parsing the text again. Version 1 rows are still read, their body parsed on decode.
The repository's optional `installation_id` (GitHub App mode) was added within
version 2: rows without it read as None, and a runner without the field ignores it.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from pydantic import TypeAdapter

from runner.events.commands import Command, CommandError
from runner.events.comment_parser import parse_comment
from runner.events.model import CommentEvent, PullRequestEvent

JOB_FORMAT_VERSION = 2
# Rows a rolling upgrade may still hold; drop 1 once no runner writes it any more.
READABLE_VERSIONS = frozenset({1, JOB_FORMAT_VERSION})

WorkEvent = PullRequestEvent | CommentEvent

_KINDS: dict[str, type[PullRequestEvent] | type[CommentEvent]] = {
    "pull_request": PullRequestEvent,
    "comment": CommentEvent,
}
_ADAPTERS = {kind: TypeAdapter(cls) for kind, cls in _KINDS.items()}
_COMMAND_ADAPTER: TypeAdapter[Command | CommandError | None] = TypeAdapter(
    Command | CommandError | None
)


class UnknownJobFormat(ValueError):
    """A job row written by another version of the runner that this one cannot read."""


def kind_of(event: WorkEvent) -> str:
    return "pull_request" if isinstance(event, PullRequestEvent) else "comment"


def encode_event(event: WorkEvent) -> tuple[str, dict[str, Any]]:
    """The (kind, payload) stored for an event, in `JOB_FORMAT_VERSION`."""
    kind = kind_of(event)
    return kind, _ADAPTERS[kind].dump_python(event, mode="json")


def decode_event(
    kind: str, payload: dict[str, Any], version: int = JOB_FORMAT_VERSION
) -> WorkEvent:
    """The event a stored job carries; refuses formats it does not know."""
    if version not in READABLE_VERSIONS or kind not in _ADAPTERS:
        raise UnknownJobFormat(f"cannot read job kind={kind!r} version={version}")
    if version == 1 and kind == "comment":
        payload = _with_parsed_command(payload)
    return _ADAPTERS[kind].validate_python(payload)


def _with_parsed_command(payload: dict[str, Any]) -> dict[str, Any]:
    """A version 1 comment payload (text only) as version 2: its body parsed, as the
    webhook of this version does before it stores a job."""
    body = payload.get("body")
    command = parse_comment(body) if isinstance(body, str) else None
    return {**payload, "command": _COMMAND_ADAPTER.dump_python(command, mode="json")}


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
