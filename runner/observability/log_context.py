"""The ids of the work in hand, for every log line written while doing it.

    with log_context(delivery=delivery_id, forge="github"):
        ...   # every record logged here, in this thread or task, carries them

Context variables, so threads (in-process job workers, gunicorn's request threads)
each see their own, and a nested context adds to the outer one and is undone on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, copy_context
from types import MappingProxyType
from typing import Any, TypeVar

# The names log lines use; anything else passed in is a programming error.
FIELDS = ("delivery", "forge", "event", "job", "run", "pr", "repo", "project")
_FIELD_SET = frozenset(FIELDS)

Result = TypeVar("Result")

# Outside every `log_context` block (this very object: a block always sets a new one).
_NO_BLOCK: MappingProxyType[str, Any] = MappingProxyType({})
_ids: ContextVar[MappingProxyType[str, Any]] = ContextVar("gitops_log_ids", default=_NO_BLOCK)


@contextmanager
def log_context(**ids: Any) -> Iterator[None]:
    """Add `ids` (None values are skipped) to every record logged inside the block."""
    _check(ids)
    token = _ids.set(MappingProxyType({**_ids.get(), **_known(ids)}))
    try:
        yield
    finally:
        _ids.reset(token)


def add_ids(**ids: Any) -> None:
    """Add ids learnt midway through a `log_context` block (a run record opened inside
    it); they last until that block ends, which restores what was there before it.

    Outside every block nothing would ever end them: they would label whatever this
    thread logs from then on (a long-lived worker's next jobs), so they are not added.
    """
    _check(ids)
    if _ids.get() is _NO_BLOCK:
        return
    _ids.set(MappingProxyType({**_ids.get(), **_known(ids)}))


def current_ids() -> dict[str, Any]:
    """The ids in effect here (a copy)."""
    return dict(_ids.get())


def carry_context(function: Callable[..., Result]) -> Callable[..., Result]:
    """`function`, run with the ids of the thread that wrapped it: for work handed to a
    thread pool, whose threads start with no ids of their own. Each call gets its own
    copy, so calls may run at once in several threads."""
    context = copy_context()

    def run(*args: Any, **kwargs: Any) -> Result:
        return context.copy().run(function, *args, **kwargs)

    return run


def _check(ids: dict[str, Any]) -> None:
    unknown = ids.keys() - _FIELD_SET
    if unknown:
        raise ValueError(f"unknown log context field(s): {', '.join(sorted(unknown))}")


def _known(ids: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in ids.items() if value is not None}
