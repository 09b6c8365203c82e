"""The ids of the work in hand, for every log line written while doing it.

    with log_context(delivery=delivery_id, forge="github"):
        ...   # every record logged here, in this thread or task, carries them

Context variables, so threads (in-process job workers, gunicorn's request threads)
each see their own, and a nested context adds to the outer one and is undone on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

# The names log lines use; anything else passed in is a programming error.
FIELDS = ("delivery", "forge", "event", "job", "run", "pr", "repo", "project")

_ids: ContextVar[MappingProxyType[str, Any]] = ContextVar(
    "gitops_log_ids", default=MappingProxyType({})
)


@contextmanager
def log_context(**ids: Any) -> Iterator[None]:
    """Add `ids` (None values are skipped) to every record logged inside the block."""
    unknown = set(ids) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown log context field(s): {', '.join(sorted(unknown))}")
    known = {name: value for name, value in ids.items() if value is not None}
    token = _ids.set(MappingProxyType({**_ids.get(), **known}))
    try:
        yield
    finally:
        _ids.reset(token)


def current_ids() -> dict[str, Any]:
    """The ids in effect here (a copy)."""
    return dict(_ids.get())
