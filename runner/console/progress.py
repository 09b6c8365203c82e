"""Plans and applies as they happen: a live table on a terminal, one line per event otherwise.

Both displays are `ProgressObserver`s (`runner/engine/progress.py`) called from the
planner's threads, so they hold a lock. They write to stderr: stdout keeps the
command's result (the comment, `--json`) exactly as it was.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from runner.engine.progress import Phase, ProgressEvent, ProgressObserver

if TYPE_CHECKING:
    from rich.table import Table

_FINAL = frozenset({Phase.PLANNED, Phase.DONE})


@dataclass
class _Row:
    """What the display knows about one project."""

    phase: Phase
    started: float | None = None  # when it left the queue
    finished: float | None = None
    detail: str = ""
    failed: bool = False

    def elapsed(self, now: float) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or now) - self.started


class _Tracker:
    """The rows, updated under a lock from the planner's threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: dict[tuple[str, str], _Row] = {}

    def update(self, event: ProgressEvent) -> _Row:
        now = time.monotonic()
        row = self.rows.setdefault((event.project, event.workspace), _Row(event.phase))
        row.phase, row.detail, row.failed = event.phase, event.detail, event.failed
        if event.phase is Phase.QUEUED:
            row.started = row.finished = None
        elif row.started is None or row.finished is not None:
            row.started, row.finished = row.started or now, None
        if event.phase in _FINAL:
            row.finished = now
        return row


class PlainProgress:
    """One line per event, for logs and pipes: `app (default): plan` ... `planned +1 ~0 -0`."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tracker = _Tracker()

    def __call__(self, event: ProgressEvent) -> None:
        with self._tracker.lock:
            row = self._tracker.update(event)
            if event.phase is Phase.QUEUED:
                return  # everything is queued at once: the next lines say more
            # DONE's detail says it all ("applied (+1 ~0 -0)"); other phases name themselves.
            what = event.detail if event.phase is Phase.DONE and event.detail else event.phase
            if event.phase is not Phase.DONE and event.detail:
                what = f"{event.phase} {event.detail}"
            timing = f" ({row.elapsed(time.monotonic()):.1f}s)" if event.phase in _FINAL else ""
            name = _label(event.project, event.workspace)
            print(f"{name}: {what}{timing}", file=self._stream, flush=True)


class LiveTable:
    """A rich live table of projects: phase, elapsed time, counts as they arrive."""

    def __init__(self) -> None:
        self._tracker = _Tracker()

    def __call__(self, event: ProgressEvent) -> None:
        with self._tracker.lock:
            self._tracker.update(event)

    def render(self) -> Table:
        from rich.table import Table

        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("project", "phase", "elapsed", "result"):
            table.add_column(column, justify="right" if column == "elapsed" else "left")
        now = time.monotonic()
        with self._tracker.lock:
            for (project, workspace), row in self._tracker.rows.items():
                name = _label(project, workspace)
                style = "red" if row.failed else "green" if row.phase in _FINAL else ""
                result = f"[{style}]{row.detail}[/]" if style and row.detail else row.detail
                table.add_row(name, row.phase.value, f"{row.elapsed(now):.1f}s", result)
        return table


@contextmanager
def progress_display(
    enabled: bool, stream: TextIO | None = None
) -> Iterator[ProgressObserver | None]:
    """The observer for a command: a live table on a terminal, plain lines otherwise.

    Yields None when progress is off (`--no-progress`): the planner then says nothing.
    """
    stream = stream or sys.stderr
    if not enabled:
        yield None
        return
    if not stream.isatty():
        yield PlainProgress(stream)
        return
    from rich.console import Console
    from rich.live import Live

    table = LiveTable()
    console = Console(file=stream)
    with Live(get_renderable=table.render, console=console, refresh_per_second=4):
        yield table


def _label(project: str, workspace: str) -> str:
    return project if workspace == "default" else f"{project} ({workspace})"
