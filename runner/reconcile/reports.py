"""A reconcile pass as people read it: a Slack message (Block Kit) and CLI text.

Slack hears about a pass only when it did something or something needs people
(applied, failed, blocked, busy on a new commit, or the pass itself failed): a poll
that finds no new commit says nothing, or the channel would fill up every minute.
"""

from __future__ import annotations

from runner.notify.base import Block, Message
from runner.notify.blocks import escape, sections
from runner.notify.events import RunLinks
from runner.reconcile.model import ProjectOutcome, ProjectStatus, ReconcileReport
from runner.results.text import error_detail

_ICON = {
    ProjectStatus.APPLIED: ":white_check_mark:",
    ProjectStatus.NO_CHANGES: ":white_circle:",
    ProjectStatus.BUSY: ":lock:",
    ProjectStatus.FAILED: ":x:",
    ProjectStatus.BLOCKED: ":no_entry:",
    ProjectStatus.SKIPPED: ":fast_forward:",
}


def short(sha: str | None) -> str:
    return (sha or "?")[:12]


def describe(outcome: ProjectOutcome) -> str:
    """One line: what was applied, or why not."""
    s = outcome.summary
    if outcome.status is ProjectStatus.APPLIED:
        counts = f"+{s.add} ~{s.change} -{s.destroy}" + (f" ±{s.replace}" if s.replace else "")
        return f"applied ({counts})"
    if outcome.status is ProjectStatus.NO_CHANGES:
        return "no changes"
    first = (outcome.detail or outcome.status.value).strip().splitlines()
    return f"{outcome.status.value.replace('_', ' ')}: {first[0] if first else ''}"


def needs_message(report: ReconcileReport) -> bool:
    """Whether Slack should hear about this pass (see the module docstring)."""
    if report.up_to_date:
        return False
    if report.error or not report.ok or report.applied:
        return True
    return bool(report.with_status(ProjectStatus.BUSY)) and not report.retry


def reconcile_message(report: ReconcileReport, links: RunLinks | None = None) -> Message:
    """The pass's Slack message: apply succeeded or failed, one line per project.

    Run ids become links when the runner's public URL is known (`RunLinks`).
    """
    links = links or RunLinks()
    headline = _headline(report)
    context = f"*{escape(report.name)}* `{report.branch or '?'}` @ `{short(report.head)}`"
    if report.base:
        context += f" (since `{short(report.base)}`)"
    blocks: list[Block] = [
        {"type": "header", "text": {"type": "plain_text", "text": headline[:150]}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
    ]
    lines = [_line(p, links) for p in report.projects if p.status is not ProjectStatus.NO_CHANGES]
    if report.error:
        lines.append(f":x: {escape(report.error)}")
    blocks += sections(lines)
    kind = "apply_failed" if not report.ok else "apply_succeeded"
    return Message(
        text=f"{headline}: {report.name} @ {short(report.head)}", blocks=tuple(blocks), kind=kind
    )


def _headline(report: ReconcileReport) -> str:
    if report.error:
        return "Reconcile failed"
    failed = len(report.with_status(ProjectStatus.FAILED, ProjectStatus.BLOCKED))
    applied = len(report.applied)
    if failed:
        return f"Apply failed: {failed} project(s) failed, {applied} applied"
    busy = len(report.with_status(ProjectStatus.BUSY))
    tail = f", {busy} busy" if busy else ""
    return f"Apply succeeded: {applied} project(s) applied{tail}"


def _line(outcome: ProjectOutcome, links: RunLinks) -> str:
    line = f"{_ICON[outcome.status]} `{escape(outcome.label)}`: {escape(describe(outcome))}"
    run = links.run(outcome.apply_run_id or outcome.plan_run_id)
    return line + (f" · {run}" if run else "")  # sections() caps each line


def render_text(report: ReconcileReport) -> str:
    """The pass for a terminal: the notes, one line per project, then the outcome."""
    lines = [f"note: {note}" for note in report.notes]
    if report.error:
        lines.append(f"error: {report.name}: {report.error}")
        lines.append("FAILED: 1 repository failed")
        return "\n".join(lines)
    where = f"{report.name} {report.branch or '?'} @ {short(report.head)}"
    if report.up_to_date:
        lines.append(f"{where}: up to date (already reconciled, nothing to retry)")
        return "\n".join(lines)
    since = f"since {short(report.base)}" if report.base else "first reconcile: every project"
    lines.append(f"{where} ({'retrying busy projects' if report.retry else since})")
    for outcome in report.projects:
        lines.append(f"  {outcome.status.value:10} {outcome.label}: {describe(outcome)}")
        if outcome.status is ProjectStatus.FAILED:
            lines += error_detail(outcome.detail, outcome.log_path, indent=" " * 15)
    if not report.projects:
        lines.append("  no Terraform project changed")
    counts = ", ".join(f"{n} {status}" for status, n in report.counts().items() if n)
    lines.append(f"{'ok' if report.ok else 'FAILED'}: {counts or 'nothing to do'}")
    return "\n".join(lines)
