"""A project's drift history as a small inline SVG: one mark per scan, over time.

Computed here and drawn by the template (no JavaScript, no chart library): x is the
scan's time between the first and the last scan shown, the height is how many
resources had drifted (a thin mark when none), the colour the scan's status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from runner.results.drift import DriftResult, DriftStatus

WIDTH = 600
HEIGHT = 120
_PAD = 8
_MARK = 6
_FLOOR = 3  # the height of a scan without drift, so it still shows

_COLOUR = {
    DriftStatus.IN_SYNC: "#1a7f37",
    DriftStatus.DRIFT: "#cf222e",
    DriftStatus.ERROR: "#6e7781",
    DriftStatus.PENDING: "#9a6700",
    DriftStatus.BUSY: "#8250df",
}


@dataclass(frozen=True)
class Mark:
    x: float
    y: float
    height: float
    colour: str
    title: str  # the tooltip: when, status, how many drifted


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    marks: tuple[Mark, ...]
    first: str  # the time of the first scan shown, for the axis label
    last: str
    most: int  # the y scale's top: the most resources drifted in one scan


def drift_chart(history: Sequence[DriftResult]) -> Chart | None:
    """The chart of `history` (newest first, as the store returns it); None if empty."""
    scans = [r for r in reversed(history) if r.scanned_at is not None]
    if not scans:
        return None
    start, end = scans[0].scanned_at, scans[-1].scanned_at
    assert start is not None and end is not None
    span = max((end - start).total_seconds(), 1.0)
    most = max(max(r.summary.drifted for r in scans), 1)
    usable_w, usable_h = WIDTH - 2 * _PAD - _MARK, HEIGHT - 2 * _PAD
    marks = []
    for result in scans:
        at = result.scanned_at
        assert at is not None
        offset = (at - start).total_seconds() / span if len(scans) > 1 else 0.5
        height = max(usable_h * result.summary.drifted / most, _FLOOR)
        marks.append(
            Mark(
                x=round(_PAD + offset * usable_w, 1),
                y=round(HEIGHT - _PAD - height, 1),
                height=round(height, 1),
                colour=_COLOUR.get(result.status, "#6e7781"),
                title=f"{at:%Y-%m-%d %H:%M} UTC: {result.status.value}, "
                f"{result.summary.drifted} drifted",
            )
        )
    return Chart(
        WIDTH, HEIGHT, tuple(marks), f"{start:%Y-%m-%d %H:%M}", f"{end:%Y-%m-%d %H:%M}", most
    )
