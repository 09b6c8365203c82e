"""Project locks: one pull request at a time may plan and apply a (repo, dir, workspace).

Atomicity comes from the database, not from Python: the `locks` table has a unique
constraint on (repo, dir, workspace), and acquiring is a plain INSERT. Of any number
of concurrent callers, in threads or processes or hosts, exactly one INSERT succeeds;
the others hit the constraint and read who holds the lock. No read-then-write race
exists because nothing is decided on a read.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from runner.store.db import Database
from runner.store.models import Lock, utcnow

# A holder can vanish between our failed INSERT and the read of the holder (released
# meanwhile); then we simply try again. Bounded so that an INSERT failing for another
# reason cannot spin forever.
_MAX_ACQUIRE_ROUNDS = 50


@dataclass(frozen=True)
class LockOwner:
    """Who asks for a lock: normally a pull request (drift/CLI runs may have none)."""

    pr_number: int | None
    pr_url: str | None = None
    user: str | None = None
    run_id: int | None = None


@dataclass(frozen=True)
class LockInfo:
    """A held lock, as shown to a PR that is blocked by it."""

    repo: str
    dir: str
    workspace: str
    owner_pr: int | None
    owner_pr_url: str | None
    owner_user: str | None
    run_id: int | None
    since: datetime

    def held_by(self, owner: LockOwner) -> bool:
        """Whether `owner` already holds this lock (re-acquiring is then a no-op).

        A PR is the same owner across pushes and comments; without a PR only the
        same run counts as the same owner.
        """
        if owner.pr_number is not None:
            return self.owner_pr == owner.pr_number
        return self.owner_pr is None and owner.run_id is not None and self.run_id == owner.run_id


@dataclass(frozen=True)
class LockResult:
    """`acquired` tells whether the caller holds the lock; `lock` is the holder either way."""

    acquired: bool
    lock: LockInfo


class LockService:
    """Acquire, inspect and release project locks."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def acquire(self, repo: str, dir: str, workspace: str, owner: LockOwner) -> LockResult:
        """Take the lock for (repo, dir, workspace), or report who has it.

        Re-acquiring by the holder succeeds and leaves the lock (and its `since`)
        unchanged, so a retried webhook or a second plan of the same PR is harmless.
        """
        conflict: IntegrityError | None = None
        for _ in range(_MAX_ACQUIRE_ROUNDS):
            outcome = self._try_insert(repo, dir, workspace, owner)
            if isinstance(outcome, LockInfo):
                return LockResult(acquired=True, lock=outcome)
            conflict = outcome
            holder = self.get(repo, dir, workspace)
            if holder is not None:
                return LockResult(acquired=holder.held_by(owner), lock=holder)
        # No holder ever showed up: the INSERT failed for another reason (e.g. the
        # owner's run_id does not exist). Surface that error.
        assert conflict is not None
        raise conflict

    def _try_insert(
        self, repo: str, dir: str, workspace: str, owner: LockOwner
    ) -> LockInfo | IntegrityError:
        row = Lock(
            repo=repo,
            dir=dir,
            workspace=workspace,
            owner_pr=owner.pr_number,
            owner_pr_url=owner.pr_url,
            owner_user=owner.user,
            run_id=owner.run_id,
            since=utcnow(),
        )
        try:
            with self._db.write() as session:
                session.add(row)
                session.flush()
                return _info(row)
        except IntegrityError as error:
            # Normally: someone else holds it, and the unique constraint said so.
            return error

    def get(self, repo: str, dir: str, workspace: str) -> LockInfo | None:
        """The current holder of a lock, if any."""
        with self._db.read() as session:
            row = session.scalar(select(Lock).where(*_key(repo, dir, workspace)))
            return _info(row) if row is not None else None

    def release(self, repo: str, dir: str, workspace: str, owner_pr: int | None = None) -> bool:
        """Drop a lock (after apply, on PR close, or by hand); True if one was removed.

        With `owner_pr`, only that PR's lock is removed, so a late release from an old
        PR cannot free a lock another PR took in the meantime.
        """
        statement = delete(Lock).where(*_key(repo, dir, workspace))
        if owner_pr is not None:
            statement = statement.where(Lock.owner_pr == owner_pr)
        with self._db.write() as session:
            return session.execute(statement).rowcount > 0

    def release_all(self, repo: str, pr_number: int) -> builtins.list[LockInfo]:
        """Drop every lock a PR holds in a repo (PR merged or closed); returns what was freed."""
        statement = (
            delete(Lock).where(Lock.repo == repo, Lock.owner_pr == pr_number).returning(Lock)
        )
        with self._db.write() as session:
            rows = session.scalars(statement).all()
            return sorted((_info(row) for row in rows), key=_sort_key)

    def list(self, repo: str | None = None) -> builtins.list[LockInfo]:
        """All held locks (of one repo), for the dashboard and `unlock` commands."""
        statement = select(Lock)
        if repo is not None:
            statement = statement.where(Lock.repo == repo)
        with self._db.read() as session:
            return sorted((_info(row) for row in session.scalars(statement)), key=_sort_key)


def _key(repo: str, dir: str, workspace: str) -> tuple:
    return (Lock.repo == repo, Lock.dir == dir, Lock.workspace == workspace)


def _sort_key(info: LockInfo) -> tuple[str, str, str]:
    return (info.repo, info.dir, info.workspace)


def _info(row: Lock) -> LockInfo:
    return LockInfo(
        repo=row.repo,
        dir=row.dir,
        workspace=row.workspace,
        owner_pr=row.owner_pr,
        owner_pr_url=row.owner_pr_url,
        owner_user=row.owner_user,
        run_id=row.run_id,
        since=row.since,
    )
