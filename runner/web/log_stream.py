"""A run's log as Server-Sent Events: what Terraform printed so far, then each new line.

The engine writes a run's log line by line while Terraform runs (terraform/process.py
opens it unbuffered), so following the file is following the run. Each event carries
the byte offset reached as its `id`: a browser that reconnects (EventSource does it by
itself) sends it back as `Last-Event-ID` and continues where it stopped, which lets a
stream end after `max_seconds` without losing a line. When the run has finished and
the file is read to its end, an `end` event carries the run's final status.

Every line is masked again on its way out (results/masking.py) with the server's
secrets: the log was masked when written, and a log written by an older runner or a
secret configured since must not leak through the browser either. Only whole lines are
sent, so a secret is never split across two events where no mask could see it.

Each open stream holds a server thread, so at most `max_streams` stream at once per
process; more are refused (503) rather than starving webhooks of threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from runner.results.masking import Masker
from runner.store.runs import RunRecord

DEFAULT_POLL_S = 0.25
DEFAULT_MAX_SECONDS = 300.0
DEFAULT_MAX_STREAMS = 4
_CHUNK = 64 * 1024
# What the browser waits before reconnecting after a stream ended early (ms).
_RETRY_MS = 1000


def confined_log(log_path: str | None, data_dir: Path) -> Path | None:
    """The run's log if it is a file under the data dir; never anything else.

    The path comes from the database; confining it keeps a bad row (or a restored
    backup from another machine) from turning a log route into a file reader.
    """
    if not log_path:
        return None
    path = Path(log_path).resolve()
    if not path.is_relative_to(data_dir.resolve()) or not path.is_file():
        return None
    return path


def parse_offset(last_event_id: str | None) -> int:
    """The offset a reconnecting browser reached; anything else starts from the top."""
    if last_event_id is None or not last_event_id.strip().isdigit():
        return 0
    return int(last_event_id.strip())


@dataclass(frozen=True)
class LogFollower:
    """Follows one run's log file until the run is over (or the stream's time is up)."""

    run_id: int
    read_run: Callable[[int], RunRecord | None]  # the store's get_run
    find_log: Callable[[RunRecord], Path | None]
    masker: Masker
    poll_s: float = DEFAULT_POLL_S
    max_seconds: float = DEFAULT_MAX_SECONDS

    def events(self, offset: int = 0) -> Iterator[str]:
        """SSE text: `log` events (lines, id = offset after them), then one `end`."""
        yield f"retry: {_RETRY_MS}\n\n"
        deadline = time.monotonic() + self.max_seconds
        while time.monotonic() < deadline:
            run = self.read_run(self.run_id)
            finished = run is None or run.status.finished
            path = self.find_log(run) if run is not None else None
            lines, offset, more = _read_lines(path, offset, flush=finished)
            if lines:
                yield log_event(self.masker.mask(lines), offset)
            if finished and not more:
                yield end_event(run.status.value if run is not None else "gone")
                return
            if not lines and not more:
                time.sleep(self.poll_s)


def _read_lines(path: Path | None, offset: int, *, flush: bool) -> tuple[str, int, bool]:
    """Whole lines from `offset` on (the unfinished last one only when `flush`), the
    offset after them, and whether more is already waiting in the file."""
    if path is None:
        return "", offset, False
    with path.open("rb") as log:
        log.seek(offset)
        data = log.read(_CHUNK)
    full = len(data) == _CHUNK
    end = data.rfind(b"\n") + 1
    if (end == 0 and full) or (flush and not full):
        end = len(data)  # a line longer than a chunk goes in parts; the rest at the end
    return data[:end].decode("utf-8", "replace"), offset + end, full


def log_event(text: str, offset: int) -> str:
    """One SSE event; each line of `text` is one `data:` field (SSE joins them with \\n)."""
    body = "".join(f"data: {line}\n" for line in text.rstrip("\n").split("\n"))
    return f"event: log\nid: {offset}\n{body}\n"


def end_event(status: str) -> str:
    return f"event: end\ndata: {status}\n\n"


def whole_log_events(text: str, status: str) -> Iterator[str]:
    """A finished run's log kept elsewhere (the plan store), as one stream: log, end."""
    yield f"retry: {_RETRY_MS}\n\n"
    if text:
        yield log_event(text, len(text.encode()))
    yield end_event(status)


class StreamSlots:
    """At most `limit` log streams at once in this process (each holds a thread)."""

    def __init__(self, limit: int = DEFAULT_MAX_STREAMS) -> None:
        self._slots = threading.BoundedSemaphore(limit)

    def take(self) -> bool:
        return self._slots.acquire(blocking=False)

    def give_back(self) -> None:
        self._slots.release()

    def guarded(self, events: Iterator[str]) -> Iterator[str]:
        """`events`, giving the slot back however the stream ends (client gone too)."""
        try:
            yield from events
        finally:
            self.give_back()
