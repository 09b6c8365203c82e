"""Webhook delivery dedupe: forges redeliver (timeouts, manual redelivery), we act once.

The unique constraint on `delivery_id` decides: the first INSERT wins, every later
one (in any thread or process, before or after a restart) is a duplicate.

A delivery that queues work is recorded in the same transaction as its job
(`JobStore.enqueue(..., delivery=...)`, via `add_delivery`): either both are stored or
neither is, so a failed enqueue never leaves a delivery that makes the forge's
redelivery look like a duplicate, and a duplicate never enqueues anything.

Forges stop redelivering after a few days, so deliveries older than a retention
period (`GITOPS_DELIVERY_RETENTION_DAYS`) are forgotten by a `DeliveryPruner`: at most
once an hour per process, in a thread of its own, never in a webhook's transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, delete, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from runner.store.db import Database
from runner.store.models import Delivery, utcnow

log = logging.getLogger(__name__)

DEFAULT_RETENTION = timedelta(days=14)
PRUNE_INTERVAL_S = 3600.0

# Built once, a Core statement: on the webhook path, building statements and the ORM
# unit of work would cost more CPU than the INSERT itself.
_INSERT_DELIVERY = insert(Delivery.__table__)
_KNOWN_DELIVERIES = select(Delivery.delivery_id).where(
    Delivery.delivery_id.in_(bindparam("ids", expanding=True))
)


@dataclass(frozen=True)
class DeliveryRef:
    """A webhook delivery to remember: the forge's delivery id, the forge, the event name."""

    delivery_id: str
    forge: str
    event: str


class DuplicateDelivery(Exception):
    """The delivery was recorded before; the transaction that tried again wrote nothing."""

    def __init__(self, delivery_id: str) -> None:
        super().__init__(f"delivery {delivery_id!r} was already handled")
        self.delivery_id = delivery_id


def add_delivery(session: Session | Connection, delivery: DeliveryRef) -> None:
    """Record `delivery` in `session`'s (write) transaction: an ORM session, or the Core
    connection of the webhook's hot path (`Database.write_connection`).

    Raises `DuplicateDelivery` if it was recorded before; the caller's transaction is
    then unusable and must end (leaving the `Database.write()` block rolls it back).
    The INSERT runs here, so a duplicate is found before anything else is written.
    """
    try:
        session.execute(_INSERT_DELIVERY, _row(delivery, utcnow()))
    except IntegrityError as error:
        raise DuplicateDelivery(delivery.delivery_id) from error


def add_deliveries(connection: Connection, deliveries: Sequence[DeliveryRef]) -> None:
    """Record `deliveries`, known to be new (`known_deliveries` in the same write
    transaction), with one multi-row INSERT: a group commit's batch."""
    received_at = utcnow()
    connection.execute(_INSERT_DELIVERY, [_row(ref, received_at) for ref in deliveries])


def _row(delivery: DeliveryRef, received_at: datetime) -> dict[str, object]:
    if not delivery.delivery_id:
        raise ValueError("a delivery id is required to deduplicate deliveries")
    return {
        "delivery_id": delivery.delivery_id,
        "forge": delivery.forge,
        "event": delivery.event,
        "received_at": received_at,
    }


def known_deliveries(connection: Connection, deliveries: Sequence[DeliveryRef]) -> set[str]:
    """Which of `deliveries` were recorded before: one read for a group commit's batch
    (runner/store/group_commit.py), inside its write transaction, so that no other
    writer can record one of them between this read and the batch's INSERTs (SQLite;
    on PostgreSQL such a race fails the batch, which is then written one by one)."""
    ids = [delivery.delivery_id for delivery in deliveries]
    return set(connection.scalars(_KNOWN_DELIVERIES, {"ids": ids}))


class DeliveryStore:
    """Remember which webhook deliveries were already handled."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record_delivery(self, delivery_id: str, forge: str, event: str) -> bool:
        """True if this delivery is new (handle it), False if it was seen before (skip it)."""
        try:
            with self._db.write() as session:
                add_delivery(session, DeliveryRef(delivery_id, forge, event))
        except DuplicateDelivery:
            return False
        return True

    def prune(self, older_than: datetime) -> int:
        """Forget deliveries received before `older_than`; forges stop redelivering
        after a few days, so the table need not grow forever. Returns how many."""
        expired = Delivery.received_at < older_than
        # Looked up first: most checks find nothing, and then take no write lock.
        with self._db.read() as session:
            if session.scalar(select(Delivery.id).where(expired).limit(1)) is None:
                return 0
        with self._db.write() as session:
            return session.execute(delete(Delivery).where(expired)).rowcount


class DeliveryPruner:
    """Forgets deliveries older than `retention`, at most once per `interval_s`.

    `prune_if_due` is cheap enough to call after every webhook: it compares a clock
    reading and, when a prune is due, starts it in a daemon thread and returns.
    """

    def __init__(
        self,
        deliveries: DeliveryStore,
        retention: timedelta = DEFAULT_RETENTION,
        *,
        interval_s: float = PRUNE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._deliveries = deliveries
        self._retention = retention
        self._interval_s = interval_s
        self._clock = clock
        self._guard = threading.Lock()
        self._next_at: float | None = None  # None: due now (the first call prunes)

    def prune_if_due(self) -> threading.Thread | None:
        """Start a prune in the background if one is due; the thread, or None."""
        with self._guard:
            now = self._clock()
            if self._next_at is not None and now < self._next_at:
                return None
            self._next_at = now + self._interval_s
        thread = threading.Thread(target=self.prune_now, name="delivery-prune", daemon=True)
        thread.start()
        return thread

    def prune_now(self) -> int:
        """Forget the expired deliveries now; a failure is logged and retried next time."""
        try:
            removed = self._deliveries.prune(utcnow() - self._retention)
        except SQLAlchemyError:
            log.exception("could not prune old webhook deliveries")
            return 0
        if removed:
            log.info("forgot %d webhook deliveries older than %s", removed, self._retention)
        return removed
