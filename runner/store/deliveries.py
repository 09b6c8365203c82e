"""Webhook delivery dedupe: forges redeliver (timeouts, manual redelivery), we act once.

The unique constraint on `delivery_id` decides: the first INSERT wins, every later
one (in any thread or process, before or after a restart) is a duplicate.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from runner.store.db import Database
from runner.store.models import Delivery, utcnow


class DeliveryStore:
    """Remember which webhook deliveries were already handled."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record_delivery(self, delivery_id: str, forge: str, event: str) -> bool:
        """True if this delivery is new (handle it), False if it was seen before (skip it)."""
        if not delivery_id:
            raise ValueError("a delivery id is required to deduplicate deliveries")
        row = Delivery(delivery_id=delivery_id, forge=forge, event=event, received_at=utcnow())
        try:
            with self._db.write() as session:
                session.add(row)
        except IntegrityError:
            return False
        return True

    def forget(self, delivery_id: str) -> bool:
        """Un-record a delivery whose work could not be queued, so a redelivery is handled."""
        statement = delete(Delivery).where(Delivery.delivery_id == delivery_id)
        with self._db.write() as session:
            return session.execute(statement).rowcount > 0

    def prune(self, older_than: datetime) -> int:
        """Forget deliveries received before `older_than`; forges stop redelivering
        after a few days, so the table need not grow forever. Returns how many."""
        statement = delete(Delivery).where(Delivery.received_at < older_than)
        with self._db.write() as session:
            return session.execute(statement).rowcount
