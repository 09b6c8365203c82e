"""Building a signed-in app on a real store, and writing the records the dashboard reads.

Records are written through the store's own API (runs, plans, locks, drift results),
exactly as the engine writes them, so the pages and `/api/v1/` read real rows.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from flask import Flask

from runner.results.drift import Correction, DriftResult, DriftStatus
from runner.results.model import DriftedResource, PlanSummary, ResourceChange
from runner.settings import Settings
from runner.store.drift import DriftStore
from runner.store.locks import LockOwner
from runner.store.runs import RunStatus, Trigger
from runner.store.store import Store
from runner.web.app import create_app
from runner.web.context import WebServices
from tests.support.auth import TEST_API_TOKEN, TEST_PUBLIC_URL

WEBHOOK_SECRET = "dashboard-webhook-secret"
REPO = "github.com/acme/infra"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def dashboard_settings(data_dir: Path, **values: Any) -> Settings:
    values.setdefault("github_webhook_secret", WEBHOOK_SECRET)
    values.setdefault("api_token", TEST_API_TOKEN)
    values.setdefault("public_url", TEST_PUBLIC_URL)
    return Settings(data_dir=data_dir, **values)


def no_submit(event: Any, *, delivery: Any = None) -> int:
    raise AssertionError("this test's dashboard submits no job")


def dashboard_app(
    store: Store,
    data_dir: Path,
    *,
    drift_trigger: Callable[..., Any] | None = None,
    submit: Callable[..., int] = no_submit,
    **values: Any,
) -> Flask:
    services = WebServices(store=store, submit=submit, drift_trigger=drift_trigger)
    return create_app(dashboard_settings(data_dir, **values), services)


def record_run(
    store: Store,
    data_dir: Path,
    *,
    project: str = "app",
    dir: str | None = None,
    workspace: str = "default",
    command: str = "plan",
    trigger: Trigger = Trigger.AUTOPLAN,
    status: RunStatus = RunStatus.SUCCESS,
    author: str | None = "alice",
    pr_number: int | None = 7,
    repo: str = REPO,
    log: str | None = None,
    summary: PlanSummary | None = None,
    error: str | None = None,
) -> int:
    """A run as the engine records it: started, its log written, then finished."""
    log_path = data_dir / "logs" / f"{project}-{command}-{datetime.now(UTC).timestamp()}.log"
    if log is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(log)
    run_id = store.runs.start(
        repo=repo,
        project=project,
        dir=dir or project,
        workspace=workspace,
        command=command,
        trigger=trigger,
        pr_number=pr_number,
        commit_sha=COMMIT,
        author=author,
        log_path=str(log_path) if log is not None else None,
    )
    if status.finished:
        store.runs.finish(run_id, status, summary=summary or PlanSummary(add=1), error=error)
    return run_id


def record_plan(store: Store, run_id: int, changes: list[ResourceChange]) -> int:
    return store.runs.record_plan(
        run_id, path="/nowhere.tfplan", checksum="a" * 64, changes=changes
    )


def record_drift(
    store: Store,
    project: str,
    status: DriftStatus,
    *,
    drifted: tuple[str, ...] = (),
    correction: Correction | None = None,
    repo: str = REPO,
    workspace: str = "default",
) -> DriftResult:
    return DriftStore(store).record(
        DriftResult(
            repo=repo,
            project=project,
            dir=project,
            workspace=workspace,
            status=status,
            commit=COMMIT,
            summary=PlanSummary(change=len(drifted), drifted=len(drifted)),
            drifted=tuple(DriftedResource(a, ("update",)) for a in drifted),
            error="provider crashed" if status is DriftStatus.ERROR else "",
            correction=correction,
        )
    )


def lock_project(store: Store, project: str, pr: int = 9, user: str = "bob") -> None:
    owner = LockOwner(pr_number=pr, pr_url=f"https://github.com/acme/infra/pull/{pr}", user=user)
    assert store.locks.acquire(REPO, project, "default", owner).acquired


def hold_state_lock(state: Path) -> BinaryIO:
    """Hold a local-backend state lock as another Terraform would: an fcntl lock on the
    state file and the lock info beside it (Terraform reads it to say who holds it).

    A plan run with `-lock-timeout` then waits, really running, until the returned file
    is closed (and the info removed with `release_state_lock`).
    """
    info = {
        "ID": "11111111-2222-3333-4444-555555555555",
        "Operation": "OperationTypeApply",
        "Info": "",
        "Who": "someone@elsewhere",
        "Version": "1.15.0",
        "Created": "2026-01-01T00:00:00Z",
        "Path": str(state),
    }
    _lock_info(state).write_text(json.dumps(info))
    held = state.open("r+b")
    fcntl.lockf(held, fcntl.LOCK_EX)
    return held


def release_state_lock(state: Path, held: BinaryIO) -> None:
    held.close()  # closing drops the fcntl lock
    _lock_info(state).unlink(missing_ok=True)


def _lock_info(state: Path) -> Path:
    return state.parent / f".{state.name}.lock.info"
