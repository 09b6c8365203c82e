"""Named leases and one-shot slot claims, atomic across processes and hosts.

A lease makes a singleton loop (the drift scheduler, the reconciler) run in exactly
one process of a deployment; a slot claim makes one scheduled start fire once, even
across a lease hand-over. Both are rows of `scheduler_leases` (migration 0002, which
named the table after its first user, the drift scheduler).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import String, Text, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from runner.store.db import Database
from runner.store.models import Base, utcnow


class SchedulerLease(Base):
    """A named lease: who may run a singleton loop (drift scheduler, reconciler) until when.

    Also used for per-slot claims (`slot:<key>`), so one scheduled start fires once
    even across a lease hand-over.
    """

    __tablename__ = "scheduler_leases"

    name: Mapped[str] = mapped_column(String(512), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime]
    value: Mapped[str | None] = mapped_column(Text)


class LeaseStore:
    """Named leases and one-shot slot claims, atomic across processes and hosts."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def acquire(self, name: str, owner: str, ttl: timedelta, now: datetime | None = None) -> bool:
        """Take or renew lease `name` for `ttl`; False while someone else holds it.

        The row is read and written in one write transaction (SQLite: the database
        write lock; PostgreSQL: FOR UPDATE), and a first INSERT racing another one
        loses on the primary key, so two callers can never both get True.
        """
        now = now or utcnow()
        try:
            with self._db.write() as session:
                row = session.scalar(
                    select(SchedulerLease).where(SchedulerLease.name == name).with_for_update()
                )
                if row is None:
                    session.add(SchedulerLease(name=name, owner=owner, expires_at=now + ttl))
                    session.flush()
                    return True
                if row.owner != owner and row.expires_at > now:
                    return False
                row.owner = owner
                row.expires_at = now + ttl
                return True
        except IntegrityError:
            return False

    def release(self, name: str, owner: str) -> None:
        """Give the lease up early (at shutdown), so another process takes over at once."""
        with self._db.write() as session:
            row = session.get(SchedulerLease, name)
            if row is not None and row.owner == owner:
                session.delete(row)

    def holder(self, name: str) -> tuple[str, datetime] | None:
        with self._db.read() as session:
            row = session.get(SchedulerLease, name)
            return (row.owner, row.expires_at) if row is not None else None

    def claim_slot(self, key: str, slot: datetime, owner: str = "") -> bool:
        """True exactly once per (key, slot), and only for slots newer than the last claimed."""
        name = f"slot:{key}"
        stamp = slot.isoformat()
        try:
            with self._db.write() as session:
                row = session.scalar(
                    select(SchedulerLease).where(SchedulerLease.name == name).with_for_update()
                )
                if row is None:
                    session.add(
                        SchedulerLease(name=name, owner=owner, expires_at=slot, value=stamp)
                    )
                    session.flush()
                    return True
                if row.expires_at >= slot:
                    return False
                row.owner, row.expires_at, row.value = owner, slot, stamp
                return True
        except IntegrityError:
            return False
