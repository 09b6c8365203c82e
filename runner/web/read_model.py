"""What the dashboard's pages and the JSON API read, gathered once for both.

The pages (pages.py) and `/api/v1/` (api_v1.py) show the same projects, runs and
drift; reading them here keeps the two from answering the same question differently.
Pagination is by cursor: for runs the id of the last one shown (stable while new runs
start), for projects the position in their sorted list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from runner.results.drift import DriftResult
from runner.store.drift import DriftStore
from runner.store.runs import RunQuery, RunRecord
from runner.web.context import WebContext
from runner.web.drift_api import drift_overview
from runner.web.sync_state import ProjectStatus, SyncState, project_status, project_statuses

Item = TypeVar("Item")
HISTORY_LIMIT = 100
PROJECT_RUNS = 20


@dataclass(frozen=True)
class Page(Generic[Item]):
    items: list[Item]
    next_cursor: str | None


def all_projects(context: WebContext, repo: str | None = None) -> list[ProjectStatus]:
    """Every known project with its sync state (of one repository)."""
    drift = drift_overview(context, repo).results
    return project_statuses(context.services.store, drift, repo)


def state_counts(statuses: list[ProjectStatus]) -> dict[str, int]:
    return {state.value: sum(s.state is state for s in statuses) for state in SyncState}


def page_of_projects(
    statuses: list[ProjectStatus], limit: int, cursor: str | None
) -> Page[ProjectStatus]:
    start = int(cursor) if cursor else 0
    items = statuses[start : start + limit]
    more = start + limit < len(statuses)
    return Page(items, str(start + limit) if more else None)


def find_project(context: WebContext, repo: str, dir: str, workspace: str) -> ProjectStatus | None:
    """One project's status, the same that `all_projects` derives for it; None when the
    store knows nothing of it."""
    store = context.services.store
    drift = DriftStore(store).previous(repo, dir, workspace)
    return project_status(store, (repo, dir, workspace), drift)


def page_of_runs(
    context: WebContext, query: RunQuery, limit: int, cursor: str | None
) -> Page[RunRecord]:
    """One page of runs, newest first; asks for one more to know whether a next exists."""
    before = int(cursor) if cursor else None
    runs = context.services.store.runs.search(query, limit=limit + 1, before_id=before)
    if len(runs) > limit:
        return Page(runs[:limit], str(runs[limit - 1].id))
    return Page(runs, None)


def drift_history(context: WebContext, status: ProjectStatus) -> list[DriftResult]:
    """The project's drift results, newest first (other workspaces of the dir left out)."""
    return DriftStore(context.services.store).history(
        status.repo, status.project, HISTORY_LIMIT, dir=status.dir, workspace=status.workspace
    )


def project_runs(context: WebContext, status: ProjectStatus) -> list[RunRecord]:
    query = RunQuery(repo=status.repo, dir=status.dir, workspace=status.workspace)
    return context.services.store.runs.search(query, limit=PROJECT_RUNS)
