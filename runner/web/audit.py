"""The audit trail: every apply (who, what, when, from which PR and commit), and its CSV.

Read from the run records the one apply path writes (runner/engine/apply.py), so the
audit view cannot miss an apply whatever triggered it (comment, merge, reconcile,
drift correction). The CSV is opened by people in spreadsheets, and its cells hold
text from pull requests (author names, project names, errors): a cell that starts like
a formula is defused before it is written.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterable, Iterator

from runner.store.runs import RunQuery, RunRecord, RunStore

APPLY_COMMAND = "apply"
CSV_COLUMNS = (
    "run",
    "when",
    "finished",
    "who",
    "trigger",
    "repo",
    "project",
    "dir",
    "workspace",
    "pr",
    "commit",
    "status",
    "add",
    "change",
    "destroy",
    "error",
)
# Spreadsheets evaluate a cell starting with one of these (OWASP "CSV injection");
# tab and carriage return too, which some strip before looking.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_EXPORT_PAGE = 500


def audit_query(repo: str | None = None, project: str | None = None) -> RunQuery:
    """The runs the audit shows: applies, optionally of one repository or project."""
    return RunQuery(repo=repo, project=project, command=APPLY_COMMAND)


def every_apply(runs: RunStore, query: RunQuery) -> Iterator[RunRecord]:
    """All applies matching `query`, newest first, read a page at a time."""
    before: int | None = None
    while True:
        page = runs.search(query, limit=_EXPORT_PAGE, before_id=before)
        yield from page
        if len(page) < _EXPORT_PAGE:
            return
        before = page[-1].id


def defuse(value: object) -> str:
    """A cell as text that no spreadsheet runs as a formula (prefixed with `'`)."""
    text = "" if value is None else str(value)
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def csv_row(run: RunRecord) -> list[str]:
    summary = run.summary
    cells: list[object] = [
        run.id,
        run.started_at.isoformat(),
        run.finished_at.isoformat() if run.finished_at else "",
        run.author or "",
        run.trigger.value,
        run.repo,
        run.project,
        run.dir,
        run.workspace,
        run.pr_number or "",
        run.commit_sha or "",
        run.status.value,
        summary.add if summary else "",
        summary.change if summary else "",
        summary.destroy if summary else "",
        run.error or "",
    ]
    return [defuse(cell) for cell in cells]


def csv_lines(runs: Iterable[RunRecord]) -> Iterator[str]:
    """The CSV, a line at a time (streamed: the audit may be long)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in itertools.chain([list(CSV_COLUMNS)], map(csv_row, runs)):
        writer.writerow(row)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
