"""Writers of several processes on one SQLite file wait on a file lock, not by polling.

SQLite lets one connection write at a time. Within a process, writers already queue on
a Python lock (`db._process_writer_lock`). Between processes (`serve`'s job process
beside the web process, or several gunicorn workers) the loser of a race for the write
lock sleeps in SQLite's busy handler, in steps of 1, 2, 5, 10 ... up to 100 ms, however
soon the lock is free again: under a webhook burst those sleeps made the slowest
acknowledgements (issue 10, measured with two processes). The job table's writes take
`SharedWriteLock` first: an exclusive `flock` on a file beside the database, which the
kernel hands to the next waiter the moment it is released. Other writes (rarer) still
meet SQLite's busy handler, as before; on PostgreSQL nothing is taken.
"""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy.engine import Engine


def shared_write_lock(engine: Engine) -> AbstractContextManager[Any]:
    """The lock the job table's writers take around a write transaction on `engine`."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        return nullcontext()
    return SharedWriteLock(Path(database).with_name(Path(database).name + ".write-lock"))


class SharedWriteLock:
    """One writer at a time across the threads of all processes that use `path`.

    A thread lock orders this process's threads (an `flock` is held by an open file,
    which the threads share); the `flock` orders the processes. The file is opened per
    process: a child forked while the lock was held must not share that open file.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._threads = threading.Lock()
        self._fd: int | None = None
        self._pid = 0
        reference = weakref.ref(self)

        def reset_in_child() -> None:
            # A child forked while one of our threads held the lock gets it back free:
            # that thread does not exist in the child (and the flock is the parent's).
            alive = reference()
            if alive is not None:
                alive._threads = threading.Lock()
                alive._fd = None

        os.register_at_fork(after_in_child=reset_in_child)

    def __enter__(self) -> SharedWriteLock:
        self._threads.acquire()
        try:
            fcntl.flock(self._file(), fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _file(self) -> int:
        pid = os.getpid()
        if self._fd is None or self._pid != pid:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = pid
        return self._fd
