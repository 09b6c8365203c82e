"""Run one command the way the runner needs Terraform run.

Terraform steps can take an hour, hang on a provider, or have to be stopped
because a newer commit arrived. So a step is run:

- as an argv (never a shell), in its own session and process group, so that the
  process and everything it starts (providers, local-exec commands) can be
  signalled together;
- with its output written to a log file as it comes (someone can watch a long
  apply), line by line and with the runner's secrets masked, and captured for the
  result;
- with a timeout and a cancellation event: both send SIGINT to the group
  (Terraform then stops gracefully and releases its state lock), wait a grace
  period, then SIGKILL the group.

Nothing outlives the step: processes still in the group after the leader exits
are killed, which also guarantees the output pipes reach end-of-file.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal

from runner.terraform.result import CommandOutcome

DEFAULT_GRACE_S = 10.0
_POLL_S = 0.05
_CHUNK = 64 * 1024
# How long the output readers may lag behind the process's exit. Only reached when
# something that left the process group still holds the pipes open.
_READER_JOIN_S = 5.0
# Exit code reported for a step that never started (cancelled or timed out before it ran).
NOT_STARTED_EXIT_CODE = 1
# A line longer than this is written in parts so a process printing without newlines
# cannot fill memory; the last _LINE_TAIL bytes wait for the rest of the line, so a
# secret split at the cut is still masked unless it is longer than that.
_MAX_PENDING = 1 << 20
_LINE_TAIL = 4096

Mask = Callable[[str], str]

StopReason = Literal["timed_out", "cancelled"]


def run_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path | None = None,
    timeout_s: float | None = None,
    cancel: threading.Event | None = None,
    grace_s: float = DEFAULT_GRACE_S,
    mask: Mask | None = None,
) -> CommandOutcome:
    """Run `argv` in `cwd` with exactly `env`, streaming output to `log_path` (appended).

    `mask` hides secrets in every line before it reaches the log (the returned
    outcome is unmasked: callers mask what they show). `timeout_s` (None or <= 0:
    no limit) and `cancel` stop the process group with SIGINT, then SIGKILL after
    `grace_s`. Raises OSError when the program cannot be started; every other
    failure is in the returned outcome.
    """
    started = time.monotonic()
    deadline = started + timeout_s if timeout_s and timeout_s > 0 else None
    with _LogSink(log_path, mask) as sink:
        sink.write(f"$ {shlex.join(argv)}\n".encode())
        if cancel is not None and cancel.is_set():
            outcome = not_started(argv, "cancelled before start", "cancelled", log_path)
            sink.write(f"# {outcome.stderr}\n".encode())
            return outcome
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        readers = [_StreamReader(proc.stdout, sink), _StreamReader(proc.stderr, sink)]
        for reader in readers:
            reader.start()
        stop_reason = _wait_for_exit(proc, deadline, cancel)
        if stop_reason is not None:
            _interrupt(proc, grace_s)
        _signal_group(proc, signal.SIGKILL)  # stragglers; the leader is still unreaped here
        exit_code = proc.wait()
        for reader in readers:
            reader.join(_READER_JOIN_S)
        duration = time.monotonic() - started
        note = f" ({stop_reason.replace('_', ' ')})" if stop_reason else ""
        sink.write(f"# exit code {exit_code} after {duration:.1f}s{note}\n".encode())
    return CommandOutcome(
        argv=tuple(argv),
        exit_code=exit_code,
        stdout=readers[0].text(),
        stderr=readers[1].text(),
        duration_s=duration,
        timed_out=stop_reason == "timed_out",
        cancelled=stop_reason == "cancelled",
        log_path=log_path,
    )


def not_started(
    argv: Sequence[str], why: str, reason: StopReason, log_path: Path | None = None
) -> CommandOutcome:
    """The outcome of a step stopped before its process ran (e.g. while waiting for a lock).

    Exists so callers handle "cancelled/timed out before start" like any other stop.
    """
    return CommandOutcome(
        argv=tuple(argv),
        exit_code=NOT_STARTED_EXIT_CODE,
        stdout="",
        stderr=why,
        duration_s=0.0,
        timed_out=reason == "timed_out",
        cancelled=reason == "cancelled",
        log_path=log_path,
    )


def skipped(argv: Sequence[str], why: str) -> CommandOutcome:
    """The outcome of a step that did not need to run: a success that ran nothing."""
    return CommandOutcome(argv=tuple(argv), exit_code=0, stdout=why, stderr="", duration_s=0.0)


def _has_exited(proc: subprocess.Popen[bytes]) -> bool:
    # WNOWAIT leaves the exited leader unreaped: its pid, which is the process group
    # id, cannot be reused before the stragglers in the group have been killed.
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _wait_for_exit(
    proc: subprocess.Popen[bytes], deadline: float | None, cancel: threading.Event | None
) -> StopReason | None:
    """Wait until the process exits (None) or must be stopped (why)."""
    with _ExitWatch(proc) as exit_watch:
        while not _has_exited(proc):
            if cancel is not None and cancel.is_set():
                return "cancelled"
            if deadline is not None and time.monotonic() >= deadline:
                return "timed_out"
            exit_watch.wait(_POLL_S)
    return None


class _ExitWatch:
    """Wakes the moment the process exits: a pidfd turns readable (Linux 5.3+). Polling
    alone left each Terraform step ~25 ms on average between its exit and the runner
    noticing; a plan is three or four steps. Without pidfds: the poll interval."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self._pidfd = os.pidfd_open(proc.pid)

    def __enter__(self) -> _ExitWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)

    def wait(self, timeout_s: float) -> None:
        """Until the process exits or `timeout_s` passes (reaps nothing)."""
        if self._pidfd is None:
            time.sleep(timeout_s)
        else:
            select.select([self._pidfd], [], [], timeout_s)


def _interrupt(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGINT the group (Terraform's graceful stop), wait up to `grace_s` for the leader.

    The caller SIGKILLs whatever is left afterwards.
    """
    _signal_group(proc, signal.SIGINT)
    grace_deadline = time.monotonic() + grace_s
    while not _has_exited(proc) and time.monotonic() < grace_deadline:
        time.sleep(_POLL_S)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # ProcessLookupError: the group is already empty (PermissionError: how macOS reports
    # a group holding only a zombie).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class _LogSink:
    """The step's log file, shared by the stdout and stderr readers; None: no log.

    Written in whole lines only (see `_LineBuffer`), so `mask` sees every secret whole.
    """

    def __init__(self, path: Path | None, mask: Mask | None = None) -> None:
        self._path = path
        self._mask = mask
        self._file: BinaryIO | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> _LogSink:
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            # Unbuffered: every line is in the file as soon as Terraform printed it.
            self._file = open(self._path, "ab", buffering=0)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def write(self, data: bytes) -> None:
        """Write whole lines (or the final rest of a stream), masked."""
        if not data or self._file is None:
            return
        if self._mask is not None:
            # surrogateescape: bytes that are not UTF-8 come back out unchanged.
            data = self._mask(data.decode("utf-8", "surrogateescape")).encode(
                "utf-8", "surrogateescape"
            )
        with self._lock:
            if self._file is not None:
                self._file.write(data)


class _LineBuffer:
    """Holds back one stream's unfinished line: a secret split across reads is masked whole."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """The lines `chunk` completes; the unfinished rest waits for the next chunk."""
        data = self._pending + chunk
        end = data.rfind(b"\n") + 1
        if end == 0 and len(data) > _MAX_PENDING:
            end = len(data) - _LINE_TAIL
        self._pending = data[end:]
        return data[:end]

    def rest(self) -> bytes:
        """What is left at end of stream (a last line without a newline)."""
        rest, self._pending = self._pending, b""
        return rest


class _StreamReader(threading.Thread):
    """Copies one output pipe to the log as it arrives and keeps it for the result."""

    def __init__(self, stream: BinaryIO | None, sink: _LogSink) -> None:
        super().__init__(daemon=True)
        if stream is None:
            raise ValueError("the process was started without a pipe for this stream")
        self._stream = stream
        self._sink = sink
        self._lines = _LineBuffer()
        self._chunks: list[bytes] = []

    def run(self) -> None:
        with self._stream:
            # read1 returns what is available now instead of waiting for a full buffer.
            while chunk := self._stream.read1(_CHUNK):  # type: ignore[attr-defined]
                self._chunks.append(chunk)
                self._sink.write(self._lines.feed(chunk))
        self._sink.write(self._lines.rest())

    def text(self) -> str:
        return b"".join(self._chunks).decode("utf-8", errors="replace")
