"""The store's numbers for `/metrics`: runs by kind and result, run durations, drift.

Counted by the database at scrape time, so every gunicorn worker (and every RQ
worker's runs) is in the same answer, whichever process Prometheus happens to ask.
Aggregates only: no row is loaded into Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Float, case, cast, func, select
from sqlalchemy.sql.elements import ColumnElement

from runner.store.db import Database
from runner.store.drift_models import DriftResultRow
from runner.store.models import Run


@dataclass(frozen=True)
class RunCount:
    command: str
    trigger: str
    status: str
    count: int


@dataclass(frozen=True)
class DurationHistogram:
    """Finished runs of one command: cumulative counts per upper bound, sum, count."""

    command: str
    buckets: tuple[tuple[float, int], ...]
    sum_seconds: float
    count: int


class StoreStats:
    """Aggregate queries over runs and drift results."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def run_counts(self) -> list[RunCount]:
        """Runs per command, trigger and status, ever recorded."""
        query = select(Run.command, Run.trigger, Run.status, func.count(Run.id)).group_by(
            Run.command, Run.trigger, Run.status
        )
        with self._db.read() as session:
            return [RunCount(*row) for row in session.execute(query)]

    def run_durations(self, bounds: Sequence[float]) -> list[DurationHistogram]:
        """Durations of finished runs per command, bucketed by the database."""
        seconds = self._seconds()
        columns = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in bounds]
        query = (
            select(Run.command, func.count(Run.id), func.sum(seconds), *columns)
            .where(Run.finished_at.is_not(None))
            .group_by(Run.command)
        )
        with self._db.read() as session:
            rows = session.execute(query).all()
        return [
            DurationHistogram(
                command=row[0],
                buckets=tuple(zip(bounds, (int(n or 0) for n in row[3:]), strict=True)),
                sum_seconds=float(row[2] or 0.0),
                count=int(row[1]),
            )
            for row in rows
        ]

    def drift_statuses(self) -> dict[str, int]:
        """How many projects' newest drift result has each status."""
        newest = select(func.max(DriftResultRow.id)).group_by(
            DriftResultRow.repo, DriftResultRow.dir, DriftResultRow.workspace
        )
        query = (
            select(DriftResultRow.status, func.count(DriftResultRow.id))
            .where(DriftResultRow.id.in_(newest))
            .group_by(DriftResultRow.status)
        )
        with self._db.read() as session:
            return {status: int(count) for status, count in session.execute(query)}

    def _seconds(self) -> ColumnElement[float]:
        # The one dialect-specific expression: a run's duration in seconds.
        if self._db.dialect == "postgresql":
            return func.extract("epoch", Run.finished_at - Run.started_at)
        days = func.julianday(Run.finished_at) - func.julianday(Run.started_at)
        return cast(days * 86400.0, Float)
