"""Group commit: the writes of threads that arrive together share one transaction.

Under a burst of webhooks every request thread wants SQLite's single write lock for
one small transaction (the delivery and its job). One at a time, each pays a
connection checkout, BEGIN IMMEDIATE, COMMIT and a handover of the writer lock, and
holding that lock while waiting for the GIL made the queue behind it longer (issue 10,
profiled). With `GroupCommit`, a thread that finds no write in progress leads: it
writes everything pending in one transaction; threads arriving meanwhile queue their
item, and the first of them leads the next transaction once the current one is done.
Nobody is answered before the transaction holding its item has committed: `write`
returns (or raises) only then.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# Writes a batch in one transaction: per item its result, or the exception to raise to
# its caller (e.g. a duplicate delivery), in the order given. Raising fails them all.
BatchWriter = Callable[[Sequence[Item]], Sequence["Result | BaseException"]]


class _Slot(Generic[Item, Result]):
    """One caller's item, its outcome, and its wake-up (done, or: lead the next batch)."""

    __slots__ = ("done", "error", "item", "result", "woken")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.result: Result | None = None
        self.error: BaseException | None = None
        self.done = False
        self.woken = threading.Event()

    def outcome(self) -> Result:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class GroupCommit(Generic[Item, Result]):
    """`write(item)` from any thread; items pending together share one transaction."""

    def __init__(self, write_batch: BatchWriter[Item, Result], max_batch: int = 64) -> None:
        self._write_batch = write_batch
        self._max_batch = max_batch
        self._guard = threading.Lock()
        self._pending: list[_Slot[Item, Result]] = []
        self._writing = False

    def write(self, item: Item) -> Result:
        """Store `item` (with whatever else is pending) and return its result once the
        transaction that holds it has committed; raises what the writer gave it."""
        slot: _Slot[Item, Result] = _Slot(item)
        with self._guard:
            self._pending.append(slot)
            leads = not self._writing
            self._writing = True
        if not leads:
            slot.woken.wait()
            if slot.done:
                return slot.outcome()
        self._lead()
        return slot.outcome()

    def _lead(self) -> None:
        """Write one batch (this thread's own item is in it), then hand over."""
        with self._guard:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
        try:
            self._settle(batch)
        finally:
            self._hand_over()

    def _settle(self, batch: list[_Slot[Item, Result]]) -> None:
        try:
            outcomes = self._write_batch([slot.item for slot in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError("a batch writer must give one outcome per item")
        except BaseException as error:  # every caller of the batch learns it
            outcomes = [error] * len(batch)
        for slot, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                slot.error = outcome
            else:
                slot.result = outcome
            slot.done = True
            slot.woken.set()

    def _hand_over(self) -> None:
        with self._guard:
            if not self._pending:
                self._writing = False
                return
            # Its caller was waiting anyway: it leads the next transaction.
            successor = self._pending[0]
        successor.woken.set()
