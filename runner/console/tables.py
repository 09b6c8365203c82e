"""`gitops-runner runs` and `locks` as tables: a header row, short names, real statuses.

rich lays the columns out; on a pipe the table is as wide as it needs (no wrapping),
so `grep` and `awk` see one row per line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from runner.engine.progress import counts
from runner.results.render import short_sha

if TYPE_CHECKING:
    from rich.table import Table

    from runner.store.locks import LockInfo
    from runner.store.runs import RunRecord

RepoLabel = Callable[[str], str]
_TIME = "%Y-%m-%d %H:%M:%S"


def print_runs(runs: Sequence[RunRecord], repo_label: RepoLabel) -> None:
    """Newest first; the repository column only when the runs span several."""
    if not runs:
        print("No runs are recorded (for this filter).")
        return
    repos = {run.repo for run in runs}
    columns = ["id", "started (UTC)", "status", "command", "trigger"]
    columns += ["repository"] if len(repos) > 1 else []
    columns += ["project", "workspace", "PR", "commit", "result"]
    table = _table(columns)
    for run in runs:
        cells = [str(run.id), f"{run.started_at:{_TIME}}", shown_status(run), run.command]
        cells += [str(run.trigger)] + ([repo_label(run.repo)] if len(repos) > 1 else [])
        cells += [run.project, run.workspace, f"#{run.pr_number}" if run.pr_number else "-"]
        cells += [short_sha(run.commit_sha), _result(run)]
        table.add_row(*cells)
    if len(repos) == 1:
        print(f"Runs of {repo_label(next(iter(repos)))}:")
    _print(table)


def print_locks(locks: Sequence[LockInfo], repo_label: RepoLabel) -> None:
    """Who holds which project, since when."""
    if not locks:
        print("No locks are held.")
        return
    table = _table(["repository", "dir", "workspace", "held by", "since (UTC)"])
    for lock in locks:
        owner = f"PR #{lock.owner_pr}" if lock.owner_pr else f"run {lock.run_id}"
        if lock.owner_user:
            owner += f" ({lock.owner_user})"
        table.add_row(
            repo_label(lock.repo), lock.dir, lock.workspace, owner, f"{lock.since:{_TIME}}"
        )
    _print(table)


def shown_status(run: RunRecord) -> str:
    """The status people mean: a successful plan with changes is `changes`, a drift
    scan's is `drift` or `pending` (the store keeps `success`: the plan worked)."""
    status = str(run.status)
    if status != "success" or run.summary is None or not run.summary.has_changes:
        return status
    if run.command == "drift":
        return "drift" if run.summary.drifted else "pending"
    return "changes" if run.command == "plan" else status


def _result(run: RunRecord) -> str:
    if run.error:
        first = run.error.strip().splitlines()
        return first[0][:60] if first else ""
    return counts(run.summary) if run.summary is not None and run.summary.has_changes else ""


def _table(columns: Sequence[str]) -> Table:
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False, show_edge=False)
    for column in columns:
        table.add_column(column, no_wrap=True, overflow="ignore")
    return table


def _print(table: Table) -> None:
    from rich.console import Console

    tty = sys.stdout.isatty()
    # On a pipe, as wide as the rows: a table cut at 80 columns helps nobody's grep.
    Console(width=None if tty else 10_000, soft_wrap=not tty).print(table)
