"""What a scan's results mean against the history: new drift, unchanged drift, resolved.

A result is stored with what it inherits from the project's previous results (the
open forge issue, whether this exact drift was already announced), so the next scan
and a restarted server know not to re-alert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from runner.results.drift import DriftResult, DriftStatus
from runner.store.drift import DriftStore

# Busy and failed scans say nothing about the drift itself: "unchanged" skips them.
_INCONCLUSIVE = (DriftStatus.BUSY, DriftStatus.ERROR)


@dataclass(frozen=True)
class Tracked:
    """A stored result and the conclusive result before it."""

    result: DriftResult
    previous: DriftResult | None

    @property
    def unchanged_drift(self) -> bool:
        """Same drift as last time, and that one was announced: no new alert."""
        previous = self.previous
        return (
            self.result.status is DriftStatus.DRIFT
            and previous is not None
            and previous.status is DriftStatus.DRIFT
            and previous.notified
            and previous.drift_hash == self.result.drift_hash
        )

    @property
    def new_drift(self) -> bool:
        return self.result.status is DriftStatus.DRIFT and not self.unchanged_drift

    @property
    def resolved(self) -> bool:
        """Was drifted, is in sync now (corrected, or fixed by hand)."""
        return (
            self.result.status is DriftStatus.IN_SYNC
            and self.previous is not None
            and self.previous.status is DriftStatus.DRIFT
        )


def record_results(store: DriftStore, results: Sequence[DriftResult]) -> list[Tracked]:
    """Store every result with what it inherits; returns them with their predecessor."""
    tracked = []
    for result in results:
        latest = store.previous(result.repo, result.dir, result.workspace)
        conclusive = store.previous(result.repo, result.dir, result.workspace, skip=_INCONCLUSIVE)
        inherited = replace(
            result,
            issue_number=latest.issue_number if latest is not None else None,
            notified=Tracked(result, conclusive).unchanged_drift,
        )
        # The log is not stored with the result; the report of this scan still names it.
        stored = replace(store.record(inherited), log_path=result.log_path)
        tracked.append(Tracked(stored, conclusive))
    return tracked
