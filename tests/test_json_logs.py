"""GITOPS_LOG_FORMAT=json: one JSON object per line, naming the delivery, job, run and
PR being worked on, and never a secret.

The server test runs the real `gitops-runner serve` and reads its stderr; the job
test runs a job on the real in-process queue and reads the runner's log handler.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from runner.config.model import ProjectConfig
from runner.engine.project_mutex import FileMutex
from runner.engine.recording import LiveRuns
from runner.events.model import PullRequestEvent
from runner.jobs.inprocess import InProcessQueue
from runner.jobs.queue import enqueue_event
from runner.observability.log_context import (
    add_ids,
    carry_context,
    current_ids,
    log_context,
)
from runner.observability.logs import build_handler
from runner.store.jobs import JobStatus
from runner.store.store import Store
from tests.support.auth import TEST_API_TOKEN, bearer
from tests.support.cli import run_cli
from tests.support.github_payloads import (
    Pull,
    Repo,
    ping_event,
    post_delivery,
    pull_request_event,
)
from tests.support.jobs import redis_url_or_skip
from tests.support.served_cli import ServedCli

WEBHOOK_SECRET = "webhook-secret-never-logged"
GITHUB_TOKEN = "ghp_github_token_never_logged_0123456789"
REPO = Repo("acme/infra", clone_url="https://github.com/acme/infra.git")


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line, parsed: a line that is not JSON fails the test."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def captured() -> Any:
    """The runner's JSON handler on the root logger, writing into a buffer."""
    buffer = io.StringIO()
    handler = build_handler("json", secrets=[GITHUB_TOKEN], stream=buffer)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_context_ids_nest_and_are_undone() -> None:
    with log_context(delivery="d-1", forge="github"):
        with log_context(job=7, pr=None):
            assert current_ids() == {"delivery": "d-1", "forge": "github", "job": 7}
        assert current_ids() == {"delivery": "d-1", "forge": "github"}
    assert current_ids() == {}
    with pytest.raises(ValueError, match="unknown log context"), log_context(password="x"):
        pass


def test_ids_learnt_outside_every_block_label_nothing_logged_later() -> None:
    # A run opened with no block around it (nothing would ever end its id) must not
    # label what this thread logs afterwards: a worker's next jobs, the next test.
    add_ids(run=1)
    assert current_ids() == {}

    with log_context(job=7):
        add_ids(run=2)
        assert current_ids() == {"job": 7, "run": 2}
    assert current_ids() == {}


def test_work_handed_to_a_thread_pool_keeps_the_ids(captured: io.StringIO) -> None:
    # As the planner hands projects to its pool: each thread logs the job's ids.
    def plan(project: str) -> dict[str, Any]:
        with log_context(project=project):
            logging.getLogger("runner.engine.test").info("planning")
            return current_ids()

    with log_context(job=5, pr=9), ThreadPoolExecutor(max_workers=2) as pool:
        seen = list(pool.map(carry_context(plan), ["app", "db", "net"]))

    assert seen == [{"job": 5, "pr": 9, "project": name} for name in ("app", "db", "net")]
    lines = json_lines(captured.getvalue())
    assert sorted(line["project"] for line in lines) == ["app", "db", "net"]
    assert all(line["job"] == 5 and line["pr"] == 9 for line in lines)


def test_a_plan_logs_with_its_run_once_the_run_is_recorded(
    sqlite_url: str, captured: io.StringIO
) -> None:
    store = Store.open(sqlite_url)
    live = LiveRuns(store, repo="github.com/acme/infra", trigger="autoplan", commit="c0ffee",
                    pr_number=7)  # fmt: skip
    log = logging.getLogger("runner.engine.test")
    try:
        with log_context(project="app"):  # as the planner plans one project
            log.info("before the run record")
            live.opened(ProjectConfig(name="app", dir="app"), "/tmp/app.log")
            log.info("terraform plan")
        log.info("the next project")
        lines = json_lines(captured.getvalue())
        before, during, after = (line for line in lines if line["logger"] == log.name)
        assert "run" not in before and before["project"] == "app"
        run = store.runs.get_run(during["run"])
        assert run is not None and (run.project, run.pr_number) == ("app", 7)
        assert "run" not in after and "project" not in after
    finally:
        store.close()


def test_a_line_is_json_with_the_ids_and_the_secret_masked(captured: io.StringIO) -> None:
    log = logging.getLogger("runner.test")
    with log_context(job=3, pr=7, run=11):
        log.warning("cloning https://x-access-token:%s@github.com/acme/infra", GITHUB_TOKEN)
        try:
            raise RuntimeError(f"token {GITHUB_TOKEN} refused")
        except RuntimeError:
            log.exception("it failed")
        log.info("mirror at https://bot:%s@git.example/infra.git", "an-unknown-password")

    first, second, third = json_lines(captured.getvalue())
    assert first["level"] == "WARNING" and first["logger"] == "runner.test"
    assert (first["job"], first["pr"], first["run"]) == (3, 7, 11)
    assert "time" in first and "ids" not in first
    assert GITHUB_TOKEN not in captured.getvalue()
    assert "x-access-token:(sensitive value)@github.com" in first["message"]
    assert "RuntimeError" in second["exc_info"] and "(sensitive value)" in second["exc_info"]
    assert third["message"] == "mirror at https://bot:***@git.example/infra.git"


class LoggingHandler:
    """A job handler that logs what it does, as the PR flow does."""

    def __init__(self) -> None:
        self.done = threading.Event()

    def handle(self, event: Any, cancel: threading.Event) -> None:
        logging.getLogger("runner.commands.test").info("planning with %s", GITHUB_TOKEN)
        self.done.set()

    def is_apply(self, event: Any) -> bool:
        return False

    def report_interrupted(self, event: Any) -> None:
        pass


def test_a_job_logs_with_its_job_pr_and_repository(
    sqlite_url: str, tmp_path: Path, captured: io.StringIO
) -> None:
    from runner.events.github import parse_github_event

    store = Store.open(sqlite_url)
    pull = Pull(number=7, head_sha="a" * 40, head_ref="feature", base_sha="b" * 40)
    payload = pull_request_event("opened", REPO, pull, sender="alice")
    event = parse_github_event("pull_request", payload)
    assert isinstance(event, PullRequestEvent)
    handler = LoggingHandler()
    queue = InProcessQueue(store, handler, 1, mutex=FileMutex(tmp_path / "locks"))
    job_id = enqueue_event(store, event)
    queue.start()
    try:
        assert handler.done.wait(60)
        deadline = time.monotonic() + 30
        while store.jobs.get(job_id).status is not JobStatus.DONE:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        queue.stop(timeout=10)
        store.close()

    lines = [line for line in json_lines(captured.getvalue()) if line.get("job") == job_id]
    planning = next(line for line in lines if line["message"].startswith("planning"))
    assert planning["pr"] == 7 and planning["repo"] == event.repo.key
    assert GITHUB_TOKEN not in captured.getvalue()


def test_serve_writes_json_lines_naming_the_delivery_and_no_secret(tmp_path: Path) -> None:
    server = ServedCli(
        tmp_path / "data", GITOPS_GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET,
        GITOPS_GITHUB_TOKEN=GITHUB_TOKEN, GITOPS_API_TOKEN=TEST_API_TOKEN,
        GITOPS_LOG_FORMAT="json", GITOPS_WORKERS="1",
    )  # fmt: skip
    with server:
        requests.get(f"{server.url}/healthz", timeout=120)
        answer = post_delivery(f"{server.url}/events", "ping", ping_event(REPO), WEBHOOK_SECRET,
                               delivery_id="delivery-json-1")  # fmt: skip
        assert answer.status_code == 200
        wrong = requests.get(f"{server.url}/api/runs", headers=bearer("wrong"), timeout=30)
        assert wrong.status_code == 401
        requests.get(f"{server.url}/api/runs", headers=bearer(TEST_API_TOKEN), timeout=30)
    text = server.stderr
    records = json_lines(text)
    webhook = next(r for r in records if r.get("logger") == "runner.web.webhooks")
    assert webhook["delivery"] == "delivery-json-1" and webhook["forge"] == "github"
    assert {"time", "level", "message"} <= set(webhook)
    assert any(r["message"].startswith("Listening at: ") for r in records)  # gunicorn's too
    for secret in (WEBHOOK_SECRET, GITHUB_TOKEN, TEST_API_TOKEN):
        assert secret not in text


@pytest.mark.redis
def test_the_rq_worker_writes_json_lines_too(tmp_path: Path) -> None:
    redis_url = redis_url_or_skip()
    worker = run_cli(
        "worker", "--burst", data_dir=tmp_path / "data", GITOPS_QUEUE="rq",
        GITOPS_REDIS_URL=redis_url, GITOPS_QUEUE_NAME=f"json-logs-{uuid.uuid4().hex[:10]}",
        GITOPS_LOG_FORMAT="json", GITOPS_GITHUB_TOKEN=GITHUB_TOKEN,
    )  # fmt: skip

    assert worker.returncode == 0, worker.stderr
    records = json_lines(worker.stderr)
    assert any(r["logger"].startswith("rq.") for r in records)  # RQ's own lines as well
    assert GITHUB_TOKEN not in worker.stderr
