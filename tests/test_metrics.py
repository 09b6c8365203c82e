"""`/metrics`: what the store knows, read at scrape time on SQLite and PostgreSQL, and
the webhook counters summed over gunicorn worker processes by the real `serve`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from runner.results.drift import DriftResult, DriftStatus
from runner.settings import Settings
from runner.store.drift import DriftStore
from runner.store.locks import LockOwner
from runner.store.runs import RunStatus
from runner.store.store import Store
from runner.web.app import create_app
from runner.web.context import WebServices
from tests.support.auth import TEST_API_TOKEN, bearer, issue_token
from tests.support.github_payloads import Repo, ping_event, post_delivery
from tests.support.served_cli import ServedCli

SECRET = "webhook-secret"


def scrape(store: Store, tmp_path: Path) -> dict[tuple[str, tuple], float]:
    """GET /metrics as a viewer; {(sample name, sorted labels): value}."""
    settings = Settings(data_dir=tmp_path / "data", github_webhook_secret=SECRET)
    app = create_app(settings, WebServices(store=store, submit=lambda event, delivery=None: 1))
    response = app.test_client().get("/metrics", headers=bearer(issue_token(store, "viewer")))
    assert response.status_code == 200
    return samples(response.get_data(as_text=True))


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def record_run(store: Store, command: str, status: RunStatus, seconds: float) -> None:
    started = datetime.now(UTC) - timedelta(seconds=seconds)
    run_id = store.runs.start(
        repo="github.com/acme/infra", project="app", dir="app", workspace="default",
        command=command, trigger="autoplan", started_at=started,
    )  # fmt: skip
    store.runs.finish(run_id, status)


def test_runs_durations_locks_and_drift_come_from_the_store(store: Store, tmp_path: Path) -> None:
    record_run(store, "plan", RunStatus.SUCCESS, 3)
    record_run(store, "plan", RunStatus.SUCCESS, 40)
    record_run(store, "apply", RunStatus.FAILED, 200)
    store.runs.start(
        repo="github.com/acme/infra",
        project="db",
        dir="db",
        workspace="default",
        command="plan",
        trigger="comment",
    )  # fmt: skip  (still running: counted, but has no duration yet)
    store.locks.acquire("github.com/acme/infra", "app", "default", LockOwner(pr_number=7))
    drift = DriftStore(store)
    for project, status in (("a", "drift"), ("b", "in_sync"), ("c", "drift")):
        drift.record(DriftResult("github.com/acme/infra", project, project, "default",
                                 DriftStatus(status)))  # fmt: skip
    # A newer scan of `c` replaces its status: only the newest result counts.
    drift.record(DriftResult("github.com/acme/infra", "c", "c", "default", DriftStatus.IN_SYNC))

    got = scrape(store, tmp_path)

    def runs(command: str, trigger: str, status: str) -> float:
        labels = (("command", command), ("status", status), ("trigger", trigger))
        return got[("gitops_runs_total", labels)]

    assert runs("plan", "autoplan", "success") == 2
    assert runs("apply", "autoplan", "failed") == 1
    assert runs("plan", "comment", "running") == 1
    plan = (("command", "plan"),)
    assert got[("gitops_run_duration_seconds_count", plan)] == 2
    assert 42 <= got[("gitops_run_duration_seconds_sum", plan)] < 60
    assert got[("gitops_run_duration_seconds_bucket", (*plan, ("le", "5.0")))] == 1
    assert got[("gitops_run_duration_seconds_bucket", (*plan, ("le", "60.0")))] == 2
    apply_ = (("command", "apply"),)
    assert got[("gitops_run_duration_seconds_bucket", (*apply_, ("le", "120.0")))] == 0
    assert got[("gitops_run_duration_seconds_bucket", (*apply_, ("le", "+Inf")))] == 1
    assert got[("gitops_locks_held", ())] == 1
    assert got[("gitops_drift_projects", (("status", "drift"),))] == 1
    assert got[("gitops_drift_projects", (("status", "in_sync"),))] == 2
    assert got[("gitops_jobs", (("status", "queued"),))] == 0


def test_an_empty_store_scrapes_cleanly(store: Store, tmp_path: Path) -> None:
    got = scrape(store, tmp_path)

    assert got[("gitops_locks_held", ())] == 0
    assert not any(name == "gitops_runs_total" for name, _ in got)


# ---- several worker processes -------------------------------------------------------


def test_webhook_counts_are_summed_over_worker_processes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServedCli(
        data, GITOPS_GITHUB_WEBHOOK_SECRET=SECRET, GITOPS_API_TOKEN=TEST_API_TOKEN,
        GITOPS_WORKERS="1", WEB_CONCURRENCY="2",
    )  # fmt: skip
    try:
        assert requests.get(f"{server.url}/healthz", timeout=120).status_code == 200
        repo = Repo("acme/infra", clone_url="https://github.com/acme/infra.git")
        files = data / "prometheus"
        sent = 0
        # A new connection each: either worker may answer. Until both have answered
        # some (each then has a counter file of its own), within reason.
        while sent < 12 or len(list(files.glob("counter_*.db"))) < 2:
            assert sent < 400, "one worker process answered every webhook"
            answer = post_delivery(f"{server.url}/events", "ping", ping_event(repo), SECRET,
                                   delivery_id=f"ping-{sent}")  # fmt: skip
            assert answer.status_code == 200, answer.text
            sent += 1
        pongs = set()
        for _ in range(6):
            text = requests.get(f"{server.url}/metrics", headers=bearer(TEST_API_TOKEN),
                                timeout=30).text  # fmt: skip
            key = ("gitops_webhooks_total", (("forge", "github"), ("outcome", "pong")))
            pongs.add(samples(text)[key])
        # Every scrape, whichever worker answers it, counts the webhooks of both.
        assert pongs == {float(sent)}
        assert requests.get(f"{server.url}/metrics", timeout=30).status_code == 401
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _no_multiprocess_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The in-test apps count in-process; only the served one shares files.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
