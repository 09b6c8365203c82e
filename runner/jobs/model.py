"""What a job is and how it is persisted: the catalogue of job kinds.

Every kind of work is a job: a forge event (an autoplan, a comment command, a merge),
a drift scan, a scheduler's drift tick, a reconcile pass. Its persisted form is
explicit and versioned: the `kind` names the payload type (`KINDS`), the `payload` is
that value as JSON, the row's `version` says how to read it. A worker on another
machine (RQ) reads the same rows; it claims only kinds it knows and handles
(`runner/jobs/registry.py`), so during a rolling upgrade a new kind waits for a new
worker instead of failing on an old one.

`JOB_FORMAT_VERSION` is the version of the forge-event kinds (`pull_request`,
`comment`); the other kinds carry their own (`JobKind.version`).

Versions: 1 stored a comment as its text only; 2 adds the parsed `command` (null,
a command, or the refusal), so a worker acts on what the webhook decided instead of
parsing the text again. Version 1 rows are still read, their body parsed on decode.
The repository's optional `installation_id` (GitHub App mode) was added within
version 2: rows without it read as None, and a runner without the field ignores it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import TypeAdapter, ValidationError

from runner.events.commands import Command, CommandError
from runner.events.comment_parser import parse_comment
from runner.events.model import CommentEvent, PullRequestEvent
from runner.jobs.payloads import DriftScanJob, DriftScheduleJob, ReconcileJob

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


def _ordered_group(event: WorkEvent) -> str | None:
    """The PR group, except for `gitops cancel`: it must not wait behind what it drops."""
    command = event.command if isinstance(event, CommentEvent) else None
    if isinstance(command, Command) and command.name == "cancel":
        return None
    return pr_group(event)


# ---- every kind of job ---------------------------------------------------------------

JobPayload = WorkEvent | DriftScanJob | DriftScheduleJob | ReconcileJob
# What `gitops-runner worker --kinds` selects by (besides exact kind names); RQ has one
# queue per family, so a worker started for some families never receives the others.
Family = Literal["pr", "drift", "reconcile"]
FAMILIES: tuple[Family, ...] = ("pr", "drift", "reconcile")


@dataclass(frozen=True)
class JobKind:
    """One kind of work: its payload type, how it is read, grouped and deduplicated."""

    name: str
    family: Family
    payload_type: type
    version: int
    decode: Callable[[dict[str, Any], int], Any]
    # Jobs of one group run one at a time, in order (None: no order to keep).
    group: Callable[[Any], str | None]
    # At most one queued-or-running job per key (None: every job is new).
    dedupe: Callable[[Any], str | None]


def _pydantic_kind(
    name: str, family: Family, payload_type: type, group: Callable[[Any], str | None]
) -> JobKind:
    adapter = TypeAdapter(payload_type)

    def decode(payload: dict[str, Any], version: int) -> Any:
        if version != 1:
            raise UnknownJobFormat(f"cannot read job kind={name!r} version={version}")
        return adapter.validate_python(payload)

    return JobKind(name, family, payload_type, 1, decode, group, lambda p: p.dedupe_key)


def _event_kind(name: str, payload_type: type) -> JobKind:
    return JobKind(
        name,
        "pr",
        payload_type,
        JOB_FORMAT_VERSION,
        lambda payload, version: decode_event(name, payload, version),
        _ordered_group,
        lambda _event: None,
    )


KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        _event_kind("pull_request", PullRequestEvent),
        _event_kind("comment", CommentEvent),
        _pydantic_kind("drift_scan", "drift", DriftScanJob, lambda _p: None),
        _pydantic_kind(
            "drift_schedule", "drift", DriftScheduleJob, lambda p: f"drift-schedule:{p.repo}"
        ),
        _pydantic_kind("reconcile", "reconcile", ReconcileJob, lambda p: f"reconcile:{p.repo}"),
    )
}
PR_KINDS = ("pull_request", "comment")


def kind_for(payload: JobPayload) -> JobKind:
    """The kind a payload is persisted as (by its type)."""
    for kind in KINDS.values():
        if isinstance(payload, kind.payload_type):
            return kind
    raise TypeError(f"no job kind for {type(payload).__name__}")


@dataclass(frozen=True)
class EncodedJob:
    """A payload as its job row stores it."""

    kind: str
    payload: dict[str, Any]
    version: int
    group_key: str | None
    dedupe_key: str | None


@functools.cache
def _dump_adapter(payload_type: type) -> TypeAdapter[Any]:
    # Built once per type: building one generates the whole schema, which cost more
    # CPU than the rest of a webhook acknowledgement together (issue 10, profiled).
    return TypeAdapter(payload_type)


def prepare_encoders() -> None:
    """Build every kind's encoder now (a web worker's boot), not in its first webhook."""
    for kind in KINDS.values():
        _dump_adapter(kind.payload_type)


def encode_job(payload: JobPayload) -> EncodedJob:
    """The row for any payload, in its kind's current version."""
    kind = kind_for(payload)
    data = _dump_adapter(kind.payload_type).dump_python(payload, mode="json")
    return EncodedJob(kind.name, data, kind.version, kind.group(payload), kind.dedupe(payload))


def decode_job(kind: str, payload: dict[str, Any], version: int) -> JobPayload:
    """The payload a stored job carries; `UnknownJobFormat` for kinds and versions this
    runner does not know, or a payload that does not validate."""
    known = KINDS.get(kind)
    if known is None:
        raise UnknownJobFormat(f"cannot read job kind={kind!r} version={version}")
    try:
        return known.decode(payload, version)  # type: ignore[no-any-return]
    except ValidationError as error:
        raise UnknownJobFormat(f"invalid {kind} payload: {error}") from None


def group_of(payload: JobPayload) -> str | None:
    return kind_for(payload).group(payload)


def select_kinds(selection: Iterable[str]) -> tuple[str, ...]:
    """Kind names for `--kinds`: families (`pr`, `drift`, `reconcile`) or exact kinds.

    Unknown names are refused (ValueError naming the choices): a typo must not start a
    worker that silently runs nothing.
    """
    chosen: list[str] = []
    for name in (part.strip() for part in selection):
        if not name:
            continue
        if name in FAMILIES:
            chosen += [k.name for k in KINDS.values() if k.family == name]
        elif name in KINDS:
            chosen.append(name)
        else:
            choices = ", ".join(dict.fromkeys((*FAMILIES, *KINDS)))
            raise ValueError(f"unknown job kind {name!r}; choose from {choices}")
    return tuple(dict.fromkeys(chosen))


class JobHandler(Protocol):
    """The work behind a job; the PR flow implements it, the queue only calls it.

    A handler of forge events only (the PR flow) receives `WorkEvent`s; the registry
    (`runner/jobs/registry.py`) is a handler of every kind it was given handlers for.
    """

    def handle(self, event: Any, cancel: threading.Event) -> None:
        """Do the work. `cancel` is set when a newer push supersedes this job."""
        ...

    def is_apply(self, event: Any) -> bool:
        """Whether the job may run `terraform apply` (never re-run after a crash)."""
        ...

    def report_interrupted(self, event: Any) -> None:
        """Tell the PR that an apply was cut short by a crash or restart."""
        ...
