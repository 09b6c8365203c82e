"""Ctrl-C during a command that runs Terraform: cancel, then abort.

Terraform runs in a session of its own (terraform/process.py), so a terminal's Ctrl-C
never reaches it; without this, the runner's main thread would stop waiting while the
plans went on. The first Ctrl-C (or SIGTERM) sets the command's cancel event: each
running Terraform gets its own interrupt, stops and releases its state lock, and the
runs are recorded as cancelled. A second one aborts at once, as Terraform's does.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def cancel_on_interrupt() -> Iterator[threading.Event]:
    """The event Ctrl-C sets while the block runs (in the main thread)."""
    cancel = threading.Event()

    def on_signal(_number: int, _frame: object) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        print("interrupted: cancelling the running plans (again to abort)", file=sys.stderr)

    previous = {number: signal.signal(number, on_signal) for number in _SIGNALS}
    try:
        yield cancel
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
