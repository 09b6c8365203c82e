"""What the pages and the API read: one project found by its key says what the project
list says of it, and its drift history is its own, up to the limit.

Records are written through the store's API (tests/support/dashboard.py), both backends.
"""

from __future__ import annotations

from pathlib import Path

from runner.results.drift import Correction, DriftStatus
from runner.store.reconcile import ReconcileState, ReconcileStateStore
from runner.store.runs import RunStatus
from runner.store.store import Store
from runner.web.context import web_context
from runner.web.read_model import HISTORY_LIMIT, all_projects, drift_history, find_project
from tests.support.dashboard import REPO, dashboard_app, lock_project, record_drift, record_run


def _records(store: Store, data_dir: Path) -> None:
    """A project in every state, and one of another repository."""
    record_drift(store, "app", DriftStatus.IN_SYNC)
    record_drift(store, "app", DriftStatus.DRIFT, drifted=("a.b",))
    record_drift(store, "app", DriftStatus.IN_SYNC, workspace="staging")
    record_drift(store, "net", DriftStatus.IN_SYNC)
    lock_project(store, "net", pr=3)
    record_run(store, data_dir, project="db", command="plan")
    record_run(store, data_dir, project="db", command="apply", status=RunStatus.FAILED)
    record_run(store, data_dir, project="queue", dir="svc/queue", status=RunStatus.RUNNING)
    lock_project(store, "only-locked")
    record_drift(store, "dns", DriftStatus.DRIFT, correction=Correction.NEEDS_APPROVAL)
    record_run(store, data_dir, project="web", repo="github.com/acme/other")
    record_drift(store, "cache", DriftStatus.IN_SYNC)
    ReconcileStateStore(store).save(
        ReconcileState(REPO, "main", None, "c0ffee", "failed", failed=("cache",))
    )


def test_a_project_found_by_its_key_is_the_one_the_list_shows(store: Store, tmp_path: Path) -> None:
    _records(store, tmp_path)

    with dashboard_app(store, tmp_path).app_context():
        context = web_context()
        listed = all_projects(context, REPO)
        found = [find_project(context, s.repo, s.dir, s.workspace) for s in listed]
        missing = find_project(context, REPO, "nowhere", "default")
        elsewhere = find_project(context, REPO, "web", "default")

    assert len(listed) == 8 and {s.state.value for s in listed} >= {
        "drifted",
        "locked",
        "error",
        "pending",
        "in_sync",
        "needs_attention",
    }
    assert found == listed
    assert missing is None and elsewhere is None


def test_the_drift_history_is_the_projects_own_up_to_the_limit(
    store: Store, tmp_path: Path
) -> None:
    for _ in range(HISTORY_LIMIT):
        record_drift(store, "app", DriftStatus.IN_SYNC)
    oldest_staging = record_drift(store, "app", DriftStatus.DRIFT, workspace="staging")
    for _ in range(HISTORY_LIMIT):  # newer than it: the other workspace's results
        record_drift(store, "app", DriftStatus.IN_SYNC)

    with dashboard_app(store, tmp_path).app_context():
        context = web_context()
        staging = find_project(context, REPO, "app", "staging")
        assert staging is not None
        history = drift_history(context, staging)

    assert [r.id for r in history] == [oldest_staging.id]
