"""One forge issue per drifted project: opened, updated when the drift changes, closed.

The issue number lives with the drift history, so an unchanged drift costs no API
call at all, and an in-sync project only touches the forge when it had an issue.
Forge failures are reported back as notes; they never fail the scan.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from runner.drift.history import Tracked
from runner.drift.reports import describe
from runner.drift.scan import DriftRepo, ForgeFor
from runner.forge.base import Forge, ForgeError
from runner.results.drift import Correction, DriftResult, DriftStatus
from runner.store.drift import DriftStore

log = logging.getLogger(__name__)

ISSUE_LABELS = ("drift",)


def issue_title(repo: DriftRepo, result: DriftResult) -> str:
    return f"Drift detected: {repo.name} {result.label}"


def issue_body(repo: DriftRepo, result: DriftResult) -> str:
    """Markdown: what drifted and what the correcting plan would do (names, never values)."""
    rows = "\n".join(
        f"| `{d.address}` | {', '.join(d.actions)} | {', '.join(d.changed_attributes) or '-'} |"
        for d in result.drifted
    )
    fix = "\n".join(f"- `{c.address}`: {', '.join(c.actions)}" for c in result.changes)
    body = (
        f"Objects of `{result.label}` in `{repo.name}` were changed outside Terraform.\n\n"
        f"Scanned at commit `{result.commit}` ({result.scanned_at:%Y-%m-%d %H:%M} UTC).\n\n"
        "| resource | action | changed attributes |\n|---|---|---|\n"
        f"{rows}\n\n"
        f"Applying the default branch would:\n{fix or '- nothing'}\n"
    )
    if result.correction is not None:
        body += f"\nAuto-correction: {describe(result)}\n"
    return body + f"\n<!-- gitops-runner drift-hash: {result.drift_hash} -->\n"


class DriftIssues:
    """Keeps the forge's drift issues in step with the stored results."""

    def __init__(self, forge_for: ForgeFor, store: DriftStore) -> None:
        self._forge_for = forge_for
        self._store = store

    def sync(self, repo: DriftRepo, tracked: Sequence[Tracked]) -> list[str]:
        """Open/update/close issues for one repository's results; returns problems."""
        ref = repo.forge_ref()
        forge = self._forge_for(repo) if ref is not None else None
        if forge is None or ref is None:
            return []
        notes = []
        for item in tracked:
            try:
                self._sync_one(forge, repo, item)
            except ForgeError as error:
                log.warning("drift issue for %s %s: %s", repo.name, item.result.label, error)
                notes.append(f"forge issue for {repo.name} {item.result.label}: {error}")
        return notes

    def _sync_one(self, forge: Forge, repo: DriftRepo, item: Tracked) -> None:
        result = item.result
        ref = repo.forge_ref()
        assert ref is not None and result.id is not None
        if result.status is DriftStatus.DRIFT:
            if item.unchanged_drift and result.issue_number is not None:
                return
            title = issue_title(repo, result)
            body = issue_body(repo, result)
            existing = forge.find_open_issue(ref, title)
            if existing is None:
                number = forge.open_issue(ref, title, body, ISSUE_LABELS).number
            else:
                number = existing.number
                if existing.body != body:
                    forge.update_issue(ref, number, body)
            self._store.set_issue(result.id, number)
        elif result.status is DriftStatus.IN_SYNC and result.issue_number is not None:
            how = (
                "corrected automatically by gitops-runner"
                if result.correction is Correction.CORRECTED
                else "no longer drifted"
            )
            forge.close_issue(
                ref,
                result.issue_number,
                f"Resolved: `{result.label}` is in sync at `{result.commit}` ({how}).",
            )
            self._store.set_issue(result.id, None)
