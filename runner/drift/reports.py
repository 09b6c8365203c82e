"""A scan as people read it: a Slack roll-up (Block Kit), a heartbeat, and CLI text.

One message per scan. It lists what needs a human: new or changed drift (with the
resources and attributes that moved), corrections, errors and projects waiting for
approval. When there is nothing new, a one-line heartbeat is sent instead, so a
silent channel always means a dead scheduler, never "probably fine".
"""

from __future__ import annotations

from collections.abc import Sequence

from runner.drift.history import Tracked
from runner.notify.base import Block, Message
from runner.notify.blocks import sections
from runner.results.drift import Correction, DriftReport, DriftResult, DriftStatus
from runner.results.render import short_sha
from runner.results.text import error_detail

MAX_RESOURCES_PER_LINE = 5
_ICON = {
    DriftStatus.IN_SYNC: ":white_check_mark:",
    DriftStatus.DRIFT: ":warning:",
    DriftStatus.PENDING: ":hourglass:",
    DriftStatus.ERROR: ":x:",
    DriftStatus.BUSY: ":lock:",
}


def describe(result: DriftResult) -> str:
    """One line: what drifted (attributes), what is pending, or why it failed."""
    if result.correction is Correction.CORRECTED:
        return f"corrected: {_resources(result)}"
    if result.status is DriftStatus.DRIFT:
        line = f"{result.summary.drifted or len(result.drifted)} drifted: {_resources(result)}"
        if result.correction is Correction.NEEDS_APPROVAL:
            line += f" (needs approval: {result.correction_reason})"
        elif result.correction is not None:
            line += f" ({result.correction.value.replace('_', ' ')}: {result.correction_reason})"
        return line
    if result.status is DriftStatus.PENDING:
        s = result.summary
        return (
            f"pending: {s.add} to add, {s.change} to change, {s.destroy} to destroy"
            f"{f', {s.replace} to replace' if s.replace else ''} (never applied)"
        )
    if result.status is DriftStatus.ERROR:
        first = (result.error or "plan failed").strip().splitlines()
        return f"error: {first[0] if first else 'plan failed'}"
    if result.status is DriftStatus.BUSY:
        return f"skipped: {result.error}"
    return "in sync"


def _resources(result: DriftResult) -> str:
    parts = []
    for item in result.drifted[:MAX_RESOURCES_PER_LINE]:
        attrs = ", ".join(item.changed_attributes)
        gone = "deleted" if "delete" in item.actions and not attrs else ""
        parts.append(f"`{item.address}` ({attrs or gone or ', '.join(item.actions)})")
    more = len(result.drifted) - MAX_RESOURCES_PER_LINE
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _needs_people(t: Tracked) -> bool:
    r = t.result
    return (
        t.new_drift
        or t.resolved
        or r.correction is not None
        or r.status in (DriftStatus.ERROR, DriftStatus.PENDING)
    )


def drift_message(
    report: DriftReport, tracked: Sequence[Tracked], repo_names: dict[str, str]
) -> Message:
    """The scan's Slack message: a roll-up when something needs people, else a heartbeat."""
    counts = report.counts()
    unchanged = [t.result for t in tracked if t.unchanged_drift]
    summary = (
        f"{len(report.results)} projects: {counts['in_sync']} in sync, {counts['drift']} drifted, "
        f"{counts['pending']} pending, {counts['error']} errors, {counts['busy']} busy"
    )
    lines = [_line(t, repo_names) for t in tracked if _needs_people(t)]
    lines += [f":x: {note}" for note in report.notes]
    if unchanged:
        lines.append(
            "Still drifted, already reported: " + ", ".join(f"`{r.label}`" for r in unchanged)
        )
    if not any(_needs_people(t) for t in tracked) and not report.notes:
        return _heartbeat(summary, unchanged)
    blocks: list[Block] = [
        {"type": "header", "text": {"type": "plain_text", "text": "Drift report"}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": summary}]},
    ]
    blocks += sections(lines)
    return Message(text=f"Drift report: {summary}", blocks=tuple(blocks), kind="drift")


def _line(t: Tracked, repo_names: dict[str, str]) -> str:
    r = t.result
    what = "resolved (in sync again)" if t.resolved and r.correction is None else describe(r)
    return f"{_ICON[r.status]} *{repo_names.get(r.repo, r.repo)}* `{r.label}`: {what}"


def _heartbeat(summary: str, unchanged: list[DriftResult]) -> Message:
    tail = f" ({len(unchanged)} still drifted, already reported)" if unchanged else ""
    text = f"Drift scan finished: {summary}{tail}"
    icon = ":white_check_mark:" if not unchanged else ":large_yellow_circle:"
    block = {"type": "context", "elements": [{"type": "mrkdwn", "text": f"{icon} {text}"}]}
    return Message(text=text, blocks=(block,), kind="heartbeat")


def render_text(report: DriftReport) -> str:
    """The report for a terminal: the repository once, one line per project, the counts."""
    repos = {r.repo for r in report.results}
    lines = [f"{next(iter(repos))}:"] if len(repos) == 1 else []
    for r in report.results:
        where = "" if len(repos) == 1 else f" {r.repo}"
        lines.append(f"{r.status.value:8}{where} {r.label} @ {short_sha(r.commit)}: {describe(r)}")
        if r.status is DriftStatus.ERROR:
            lines += error_detail(r.error, r.log_path)
    lines += [f"error    {note}" for note in report.notes]
    counts = ", ".join(f"{n} {status}" for status, n in report.counts().items())
    failed = f"; {len(report.notes)} repository scan(s) failed" if report.notes else ""
    lines.append(f"{len(report.results)} projects scanned: {counts}{failed}")
    return "\n".join(lines)
