"""At most one holder per key at any time, across threads, processes and (on PostgreSQL) hosts.

Terraform must never run twice at once against one state: two processes would race
for the state lock at best and corrupt a local state at worst. Every Terraform run
therefore holds the mutex of its project, keyed `repo:dir:workspace`; the job queues
hold one per pull request so a PR's jobs run one after another.

Two implementations behind one small protocol:

- `FileMutex(dir)`: an OS file lock per key (filelock). One machine: threads and
  processes sharing `dir`. The default with SQLite, which is single-machine anyway.
- `PostgresMutex(engine)`: a session-level `pg_advisory_lock` on a 64-bit hash of the
  key, on a connection of its own. Works for every process and host using the database.

Both first take a per-process lock for the key, so threads of one process queue on it
without each holding a file descriptor or a database connection. Neither is reentrant:
holding a key again from the thread that holds it raises instead of deadlocking.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import filelock
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from runner.settings import Settings
from runner.store.store import Store

# Namespaces our advisory-lock keys; see runner.store.db for the migration lock's.
_ADVISORY_NAMESPACE = b"gitops-runner:mutex:"
# SQLSTATE lock_not_available: raised when lock_timeout elapses.
_LOCK_NOT_AVAILABLE = "55P03"
# Keepalives both ways: a lock may be held through an hour-long apply on an otherwise
# idle connection, which NAT gateways and firewalls silently drop (client side, libpq);
# and the server must notice within a minute or two that a holder's machine died, or
# the lock stays taken for the OS default of two hours (server side, per session).
_KEEPALIVE_ARGS = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
_SERVER_KEEPALIVES = text(
    "SELECT set_config('tcp_keepalives_idle', '30', false),"
    " set_config('tcp_keepalives_interval', '10', false),"
    " set_config('tcp_keepalives_count', '3', false)"
)


def state_key(repo_key: str, dir: str, workspace: str) -> str:
    """The mutex of one Terraform state: `repo|dir|workspace`, for every trigger.

    `repo_key` is the canonical repository key (`events.model.canonical_repo_key`):
    a PR apply and a drift correction of one state must contend for the same key.
    """
    return f"{repo_key}|{dir}|{workspace}"


class MutexBusy(Exception):
    """The key is held by someone else (and the caller chose not to wait, or gave up)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"already held: {key}")
        self.key = key


class ProjectMutex(Protocol):
    """Mutual exclusion by key; see the module docstring for the guarantees."""

    def hold(
        self, key: str, *, wait: bool = True, timeout: float | None = None
    ) -> AbstractContextManager[None]:
        """Hold `key` for the `with` block.

        `wait=False`: one attempt, `MutexBusy` if held. `wait=True`: wait up to `timeout`
        seconds (None: forever), then `MutexBusy`.
        """
        ...


@dataclass(frozen=True)
class _Deadline:
    """When to give up: None = never; a time in the past = try exactly once."""

    at: float | None

    @classmethod
    def of(cls, wait: bool, timeout: float | None) -> _Deadline:
        if not wait:
            return cls(time.monotonic())
        return cls(None if timeout is None else time.monotonic() + max(0.0, timeout))

    def remaining(self) -> float | None:
        """Seconds left (0.0 = one try only), or None to wait forever."""
        return None if self.at is None else max(0.0, self.at - time.monotonic())


@dataclass
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0  # threads holding or waiting; the slot is dropped at zero
    owner: int | None = None  # thread ident of the holder


class _ProcessLocks:
    """One `threading.Lock` per key, created on demand and dropped when unused."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        # A forked child (an RQ work horse) gets a copy of the parent's holds, but not the
        # threads that would release them; it starts afresh. Cross-process exclusion
        # still holds: the file lock / advisory lock is what other processes see.
        reference = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reset(reference))

    @contextmanager
    def hold(self, key: str, deadline: _Deadline) -> Iterator[None]:
        me = threading.get_ident()
        with self._guard:
            slot = self._slots.setdefault(key, _Slot())
            if slot.owner == me:
                raise RuntimeError(f"mutex {key!r} is already held by this thread (not reentrant)")
            slot.users += 1
        try:
            remaining = deadline.remaining()
            acquired = slot.lock.acquire(timeout=-1 if remaining is None else remaining)
            if not acquired:
                raise MutexBusy(key)
            slot.owner = me
            try:
                yield
            finally:
                slot.owner = None
                slot.lock.release()
        finally:
            with self._guard:
                slot.users -= 1
                if slot.users == 0:
                    del self._slots[key]

    def clear(self) -> None:
        self._guard = threading.Lock()
        self._slots = {}


def _reset(reference: weakref.ref[_ProcessLocks]) -> None:
    locks = reference()
    if locks is not None:
        locks.clear()


class FileMutex:
    """One lock file per key under `directory`; exclusive across threads and processes."""

    def __init__(self, directory: Path) -> None:
        self._directory = Path(directory)
        self._directory.mkdir(parents=True, exist_ok=True)
        self._local = _ProcessLocks()

    def path_for(self, key: str) -> Path:
        """Keys contain slashes and colons: the file name is a hash of the key."""
        return self._directory / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.lock"

    @contextmanager
    def hold(self, key: str, *, wait: bool = True, timeout: float | None = None) -> Iterator[None]:
        deadline = _Deadline.of(wait, timeout)
        with self._local.hold(key, deadline):
            # A fresh, non-singleton lock object per hold: filelock's own reentrancy
            # counting must never make two holders look like one.
            lock = filelock.FileLock(self.path_for(key), thread_local=False, is_singleton=False)
            remaining = deadline.remaining()
            try:
                if remaining is None:
                    lock.acquire()
                else:
                    lock.acquire(timeout=remaining, blocking=remaining > 0)
            except filelock.Timeout as error:
                raise MutexBusy(key) from error
            try:
                yield
            finally:
                lock.release()


class PostgresMutex:
    """`pg_advisory_lock` on a hash of the key, on a dedicated connection per hold.

    The connection is opened for the hold and closed after it (no pool): should the
    unlock ever fail, closing the session still releases the lock, and a lost
    connection can never return to a pool with a lock attached.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = create_engine(engine.url, poolclass=NullPool, connect_args=_KEEPALIVE_ARGS)
        self._local = _ProcessLocks()

    @staticmethod
    def lock_id(key: str) -> int:
        """The signed 64-bit advisory-lock key for `key`."""
        digest = hashlib.sha256(_ADVISORY_NAMESPACE + key.encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    @contextmanager
    def hold(self, key: str, *, wait: bool = True, timeout: float | None = None) -> Iterator[None]:
        deadline = _Deadline.of(wait, timeout)
        lock_id = self.lock_id(key)
        with self._local.hold(key, deadline):
            # AUTOCOMMIT: a session-level lock outside any transaction, so a long hold is
            # never "idle in transaction" (which servers are often configured to kill).
            connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                connection.execute(_SERVER_KEEPALIVES)
                _acquire_advisory(connection, key, lock_id, deadline.remaining())
                try:
                    yield
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})
            finally:
                connection.close()

    def close(self) -> None:
        self._engine.dispose()


def _acquire_advisory(
    connection: Connection, key: str, lock_id: int, remaining: float | None
) -> None:
    if remaining is not None and remaining <= 0:
        taken = connection.scalar(text("SELECT pg_try_advisory_lock(:id)"), {"id": lock_id})
        if not taken:
            raise MutexBusy(key)
        return
    if remaining is not None:
        # lock_timeout bounds the wait server-side; the session ends with the hold.
        milliseconds = max(1, int(remaining * 1000))
        connection.execute(text(f"SET lock_timeout = {milliseconds}"))
    try:
        connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": lock_id})
    except OperationalError as error:
        if getattr(error.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
            raise MutexBusy(key) from error
        raise


def build_mutex(settings: Settings, store: Store) -> ProjectMutex:
    """PostgreSQL store: advisory locks (any number of hosts); SQLite: lock files."""
    if store.dialect == "postgresql":
        return PostgresMutex(store.engine)
    return FileMutex(settings.data_dir / "locks")
