"""The web service: webhook checks, API, dashboard, metrics, and gunicorn over real HTTP.

Apps are built per test around a real SQLite store and a fake `submit` that only
collects events; the last test starts `run_server` in a subprocess and posts signed
deliveries to it over HTTP, with `submit` writing real jobs to the store.
"""

from __future__ import annotations

import copy
import gc
import io
import itertools
import os
import re
import runpy
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from runner.engine.project_mutex import FileMutex
from runner.events.commands import CommandError
from runner.events.model import CommentEvent
from runner.jobs.inprocess import InProcessQueue
from runner.jobs.model import WorkEvent, encode_event
from runner.jobs.queue import enqueue_event
from runner.results.model import PlanSummary
from runner.settings import Settings, load_settings
from runner.store.deliveries import DeliveryRef, DuplicateDelivery
from runner.store.jobs import JobStatus
from runner.store.locks import LockOwner
from runner.store.runs import RunStatus
from runner.store.store import Store
from runner.web.app import WebConfigError, create_app
from runner.web.context import WebServices
from tests.support.auth import authorize
from tests.support.github_payloads import (
    Pull,
    Repo,
    build_delivery,
    issue_comment_event,
    ping_event,
    post_delivery,
    pull_request_event,
)
from tests.support.job_handlers import IdleHandler

ROOT = Path(__file__).resolve().parent.parent
SECRET = "It's a Secret to Everybody"
REPO = Repo("acme/infra", clone_url="https://github.com/acme/infra.git")
FORK = Repo("mallory/infra", clone_url="https://github.com/mallory/infra.git")
HEAD_SHA = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
BASE_SHA = "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"


# --- fixtures ------------------------------------------------------------------------------


class FakeQueue:
    """Stands in for JobQueue.submit: remembers events, hands out job ids.

    Records the delivery in the store as the queues do (without a job row), so a
    redelivery is refused with `DuplicateDelivery`.
    """

    def __init__(self, store: Store) -> None:
        self.events: list[WorkEvent] = []
        self._store = store
        self._ids = itertools.count(1)

    def submit(self, event: WorkEvent, *, delivery: DeliveryRef | None = None) -> int:
        if delivery is not None and not self._store.deliveries.record_delivery(
            delivery.delivery_id, delivery.forge, delivery.event
        ):
            raise DuplicateDelivery(delivery.delivery_id)
        self.events.append(event)
        return next(self._ids)


API_TOKEN = "api-token-for-tests"


def make_settings(tmp_path: Path, **values: Any) -> Settings:
    values.setdefault("github_webhook_secret", SECRET)
    values.setdefault("api_token", API_TOKEN)  # the dashboard and API need sign-in
    return Settings(data_dir=tmp_path / "data", **values)


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    opened = Store.open(sqlite_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def queue(store: Store) -> FakeQueue:
    return FakeQueue(store)


@pytest.fixture
def build(tmp_path: Path, store: Store, queue: FakeQueue):
    """Build an app on the test's store and queue, with settings overridden as given."""

    def _build(store_: Store | None = None, **values: Any) -> Flask:
        services = WebServices(store=store_ or store, submit=queue.submit)
        return create_app(make_settings(tmp_path, **values), services)

    return _build


@pytest.fixture
def client(build) -> FlaskClient:
    return authorize(build().test_client(), API_TOKEN)


def pr_payload(action: str = "opened", **pull: Any) -> dict[str, Any]:
    fields = {"number": 7, "head_sha": HEAD_SHA, "head_ref": "feature", "base_sha": BASE_SHA}
    return pull_request_event(action, REPO, Pull(**{**fields, **pull}), sender="alice")


def deliver(
    client: FlaskClient,
    event: str,
    payload: dict[str, Any],
    secret: str | None = SECRET,
    delivery_id: str | None = None,
):
    body, headers = build_delivery(event, payload, secret, delivery_id)
    return client.post("/events", data=body, headers=headers)


# --- webhooks ------------------------------------------------------------------------------


def test_signed_pull_request_is_queued_once(client: FlaskClient, queue: FakeQueue) -> None:
    response = deliver(client, "pull_request", pr_payload(), delivery_id="d-1")

    assert response.status_code == 202
    assert response.json == {"status": "queued", "job": 1}
    assert len(queue.events) == 1
    event = queue.events[0]
    assert event.repo.key == "github.com/acme/infra"
    assert event.pr.head_sha == HEAD_SHA

    again = deliver(client, "pull_request", pr_payload(), delivery_id="d-1")
    assert again.status_code == 200
    assert again.json == {"status": "duplicate"}
    assert len(queue.events) == 1


def test_duplicate_is_recognised_by_a_new_app_on_the_same_database(
    build, sqlite_url: str, queue: FakeQueue
) -> None:
    first = build().test_client()
    assert deliver(first, "pull_request", pr_payload(), delivery_id="d-r").status_code == 202

    # A restart: new store connection, new app, same database file.
    with Store.open(sqlite_url) as reopened:
        second = build(store_=reopened).test_client()
        response = deliver(second, "pull_request", pr_payload(), delivery_id="d-r")

    assert response.json == {"status": "duplicate"}
    assert len(queue.events) == 1


@pytest.mark.parametrize(
    "secret",
    [None, "the wrong secret"],
    ids=["missing signature", "wrong secret"],
)
def test_unauthenticated_delivery_is_refused(
    client: FlaskClient, queue: FakeQueue, secret: str | None
) -> None:
    response = deliver(client, "pull_request", pr_payload(), secret=secret)

    assert response.status_code == 401
    assert queue.events == []


def test_forged_signature_is_refused_and_its_delivery_id_not_recorded(
    client: FlaskClient, queue: FakeQueue
) -> None:
    body, headers = build_delivery("pull_request", pr_payload(), SECRET, "d-forged")
    # Signed over another body: the signature must cover the exact bytes received.
    tampered = body.replace(b'"feature"', b'"evil"')
    assert client.post("/events", data=tampered, headers=headers).status_code == 401
    headers["X-Hub-Signature-256"] = "sha256=" + "0" * 64
    assert client.post("/events", data=body, headers=headers).status_code == 401

    # The genuine delivery with that id still goes through.
    genuine = deliver(client, "pull_request", pr_payload(), delivery_id="d-forged")
    assert genuine.status_code == 202
    assert len(queue.events) == 1


def test_malformed_json_is_a_bad_request(client: FlaskClient) -> None:
    body = b'{"action": "opened", '
    _, headers = build_delivery("pull_request", {}, SECRET)
    headers = {**headers, "X-Hub-Signature-256": _sign(body)}

    response = client.post("/events", data=body, headers=headers)

    assert response.status_code == 400
    assert "JSON" in response.json["error"]


def test_deeply_nested_json_is_a_bad_request(client: FlaskClient) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    _, headers = build_delivery("pull_request", {}, SECRET)
    headers = {**headers, "X-Hub-Signature-256": _sign(body)}

    assert client.post("/events", data=body, headers=headers).status_code == 400


def test_malformed_event_is_a_bad_request_naming_the_field(
    client: FlaskClient, queue: FakeQueue
) -> None:
    payload = copy.deepcopy(pr_payload())
    del payload["pull_request"]["head"]["sha"]

    response = deliver(client, "pull_request", payload)

    assert response.status_code == 400
    assert "pull_request.head.sha" in response.json["error"]
    assert queue.events == []


def test_body_over_the_cap_is_refused(build, queue: FakeQueue) -> None:
    client = build(max_body_bytes=2048).test_client()
    payload = pr_payload(body="x" * 4096)

    response = deliver(client, "pull_request", payload)

    assert response.status_code == 413
    assert queue.events == []


def test_body_over_the_cap_without_content_length_is_refused(build, queue: FakeQueue) -> None:
    client = build(max_body_bytes=2048).test_client()
    body, headers = build_delivery("pull_request", pr_payload(body="x" * 4096), SECRET)

    # A chunked request: no Content-Length, the server marks the input as terminated.
    response = client.post(
        "/events",
        input_stream=io.BytesIO(body),
        headers=headers,
        environ_overrides={"wsgi.input_terminated": True},
    )

    assert response.status_code == 413
    assert queue.events == []


def test_ping_is_answered_with_pong(client: FlaskClient) -> None:
    response = deliver(client, "ping", ping_event(REPO))

    assert response.status_code == 200
    assert response.json == {"status": "pong"}


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        # (A push is work now: it may queue a reconcile, tests/test_push_reconcile.py.)
        ("watch", {"action": "started", "repository": {}}),
        ("pull_request", {"action": "labeled"}),
    ],
    ids=["unknown event", "unknown action"],
)
def test_events_without_work_are_ignored(
    client: FlaskClient, queue: FakeQueue, event: str, payload: dict[str, Any]
) -> None:
    response = deliver(client, event, payload)

    assert response.status_code == 200
    assert response.json["status"] == "ignored"
    assert response.json["reason"]
    assert queue.events == []


def test_repository_outside_the_allowlist_is_forbidden(build, queue: FakeQueue) -> None:
    client = build(repo_allowlist=("github.com/other/*",)).test_client()

    response = deliver(client, "pull_request", pr_payload())

    assert response.status_code == 403
    assert response.json == {"error": "repository not allowed"}
    assert queue.events == []


def test_repository_in_the_allowlist_is_accepted(build, queue: FakeQueue) -> None:
    client = build(repo_allowlist=("github.com/other/*", "GitHub.com/ACME/*")).test_client()

    assert deliver(client, "pull_request", pr_payload()).status_code == 202
    assert len(queue.events) == 1


def test_fork_pull_request_is_ignored_unless_allowed(build, queue: FakeQueue) -> None:
    payload = pr_payload(head_repo=FORK)

    refused = deliver(build().test_client(), "pull_request", payload)
    assert refused.json == {"status": "ignored", "reason": "fork"}
    assert queue.events == []

    allowed = deliver(build(allow_fork_prs=True).test_client(), "pull_request", payload)
    assert allowed.status_code == 202
    assert queue.events[0].pr.is_fork


def test_closing_a_fork_pull_request_is_still_queued(client: FlaskClient, queue: FakeQueue) -> None:
    # Closing releases locks and discards plans, whoever opened the PR.
    payload = pr_payload("closed", head_repo=FORK, state="closed")

    assert deliver(client, "pull_request", payload).status_code == 202
    assert queue.events[0].action == "closed"


def test_draft_is_ignored_when_drafts_are_not_planned(build, queue: FakeQueue) -> None:
    client = build(plan_drafts=False).test_client()

    draft = deliver(client, "pull_request", pr_payload(draft=True))
    assert draft.json == {"status": "ignored", "reason": "draft"}

    ready = deliver(client, "pull_request", pr_payload("ready_for_review"))
    assert ready.status_code == 202
    assert [event.action for event in queue.events] == ["ready"]


def test_draft_is_queued_by_default(client: FlaskClient, queue: FakeQueue) -> None:
    assert deliver(client, "pull_request", pr_payload(draft=True)).status_code == 202
    assert queue.events[0].pr.is_draft


def test_comment_command_is_queued(client: FlaskClient, queue: FakeQueue) -> None:
    payload = issue_comment_event("created", REPO, 7, "gitops plan -p app", "alice", 101)

    response = deliver(client, "issue_comment", payload)

    assert response.status_code == 202
    assert queue.events[0].body == "gitops plan -p app"


def test_a_refused_command_is_queued_with_its_refusal(
    client: FlaskClient, queue: FakeQueue
) -> None:
    """The webhook parses the comment once; the job carries the outcome to the PR flow."""
    payload = issue_comment_event("created", REPO, 7, "gitops destroy", "alice", 102)

    response = deliver(client, "issue_comment", payload)

    assert response.status_code == 202
    event = queue.events[0]
    assert isinstance(event, CommentEvent) and isinstance(event.command, CommandError)
    assert "Unknown command" in event.command.reason


@pytest.mark.parametrize(
    ("action", "body", "commenter"),
    [
        ("edited", "gitops apply", "alice"),
        ("created", "looks good to me", "alice"),
        ("created", "gitops plan", "gitops-runner[bot]"),
    ],
    ids=["edited comment", "not a command", "bot comment"],
)
def test_comments_without_work_are_ignored(
    client: FlaskClient, queue: FakeQueue, action: str, body: str, commenter: str
) -> None:
    payload = issue_comment_event(action, REPO, 7, body, commenter, 102)

    response = deliver(client, "issue_comment", payload)

    assert response.status_code == 200
    assert response.json["status"] == "ignored"
    assert queue.events == []


def test_missing_delivery_id_is_a_bad_request(client: FlaskClient, queue: FakeQueue) -> None:
    body, headers = build_delivery("pull_request", pr_payload(), SECRET)
    del headers["X-GitHub-Delivery"]

    assert client.post("/events", data=body, headers=headers).status_code == 400
    assert queue.events == []


def test_request_without_forge_header_is_a_bad_request(client: FlaskClient) -> None:
    response = client.post("/events", data=b"{}", headers={"Content-Type": "application/json"})

    assert response.status_code == 400


def test_form_encoded_webhook_gets_a_helpful_error(client: FlaskClient) -> None:
    body = b"payload=%7B%7D"
    _, headers = build_delivery("pull_request", {}, SECRET)
    headers = {
        **headers,
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Hub-Signature-256": _sign(body),
    }

    response = client.post("/events", data=body, headers=headers)

    assert response.status_code == 400
    assert "application/json" in response.json["error"]


# --- with the real in-process queue: one write per delivery ---------------------------------


@pytest.fixture
def served(tmp_path: Path):
    """Build an app around a real `InProcessQueue` (workers not started) on a store."""
    queues: list[InProcessQueue] = []

    def _served(store_: Store, **values: Any) -> FlaskClient:
        queue = InProcessQueue(store_, IdleHandler(), 1, mutex=FileMutex(tmp_path / "locks"))
        queues.append(queue)
        services = WebServices(store=store_, submit=queue.submit)
        return create_app(make_settings(tmp_path, **values), services).test_client()

    yield _served
    for queue in queues:
        queue.stop(timeout=5)


def _wait_for_status(store: Store, job_id: int, status: JobStatus) -> None:
    deadline = time.monotonic() + 60
    while (record := store.jobs.get(job_id)) is None or record.status is not status:
        assert time.monotonic() < deadline, f"job {job_id} never became {status}"
        time.sleep(0.01)


def test_delivery_and_job_are_one_write(served, store: Store) -> None:
    commits: list[int] = []
    event.listen(store.engine, "commit", lambda _connection: commits.append(1))
    client = served(store)

    response = deliver(client, "pull_request", pr_payload(), delivery_id="one-write")

    assert response.status_code == 202
    assert len(commits) == 1  # opened: nothing to supersede, no other write
    record = store.jobs.get(response.json["job"])
    assert record is not None and record.group_key == "github.com/acme/infra#7"
    assert not store.deliveries.record_delivery("one-write", "github", "pull_request")


def test_redelivery_queues_nothing_before_or_after_a_restart(
    served, store: Store, sqlite_url: str
) -> None:
    first = deliver(served(store), "pull_request", pr_payload(), delivery_id="d-q")
    assert first.status_code == 202

    again = deliver(served(store), "pull_request", pr_payload(), delivery_id="d-q")
    with Store.open(sqlite_url) as reopened:  # a restart: new store, queue and app
        after_restart = deliver(served(reopened), "pull_request", pr_payload(), delivery_id="d-q")

    assert again.status_code == after_restart.status_code == 200
    assert again.json == after_restart.json == {"status": "duplicate"}
    assert [record.id for record in store.jobs.list()] == [first.json["job"]]


def test_a_push_cancels_the_older_queued_autoplan_shortly_after(served, store: Store) -> None:
    client = served(store)
    opened = deliver(client, "pull_request", pr_payload(), delivery_id="p-1").json["job"]
    pull = Pull(number=7, head_sha="1" * 40, head_ref="feature", base_sha=BASE_SHA)
    pushed = pull_request_event("synchronize", REPO, pull, sender="alice", before=HEAD_SHA)
    newest = deliver(client, "pull_request", pushed, delivery_id="p-2").json["job"]

    _wait_for_status(store, opened, JobStatus.CANCELLED)
    assert store.jobs.get(newest).status is JobStatus.QUEUED


def test_events_without_work_write_nothing(served, store: Store) -> None:
    client = served(store)
    payload = issue_comment_event("created", REPO, 7, "looks good to me", "alice", 103)

    first = deliver(client, "issue_comment", payload, delivery_id="c-1")
    again = deliver(client, "issue_comment", payload, delivery_id="c-1")

    assert first.json["status"] == again.json["status"] == "ignored"
    assert store.jobs.list() == []
    assert store.deliveries.record_delivery("c-1", "github", "issue_comment")  # not recorded


def test_failed_queue_write_answers_503_and_the_redelivery_is_queued(
    tmp_path: Path, store: Store
) -> None:
    calls: list[DeliveryRef | None] = []

    def submit(event: WorkEvent, *, delivery: DeliveryRef | None = None) -> int:
        calls.append(delivery)
        if len(calls) == 1:
            raise RuntimeError("database unavailable")
        return store.jobs.enqueue(*encode_event(event), delivery=delivery)

    client = create_app(make_settings(tmp_path), WebServices(store=store, submit=submit))
    client = client.test_client()

    assert deliver(client, "pull_request", pr_payload(), delivery_id="d-503").status_code == 503
    redelivered = deliver(client, "pull_request", pr_payload(), delivery_id="d-503")

    assert redelivered.status_code == 202
    assert calls == [DeliveryRef("d-503", "github", "pull_request")] * 2
    assert [record.id for record in store.jobs.list()] == [redelivered.json["job"]]


def test_github_delivery_is_refused_when_only_gitlab_has_a_secret(build, queue: FakeQueue) -> None:
    client = build(github_webhook_secret=None, gitlab_webhook_secret="gl").test_client()

    response = deliver(client, "pull_request", pr_payload(), secret=None)

    assert response.status_code == 401
    assert queue.events == []


def test_gitlab_delivery_is_authenticated_then_answered(build, queue: FakeQueue) -> None:
    client = build(gitlab_webhook_secret="gl-token").test_client()
    headers = {
        "Content-Type": "application/json",
        "X-Gitlab-Event": "System Hook",
        "X-Gitlab-Event-UUID": "g-1",
    }

    unauthenticated = client.post("/events", data=b"{}", headers=headers)
    assert unauthenticated.status_code == 401

    response = client.post("/events", data=b"{}", headers={**headers, "X-Gitlab-Token": "gl-token"})
    assert response.status_code == 200 and response.json["status"] == "ignored"
    assert queue.events == []


# --- building the app ----------------------------------------------------------------------


def test_app_refuses_to_build_without_any_webhook_secret(
    tmp_path: Path, store: Store, queue: FakeQueue
) -> None:
    settings = make_settings(tmp_path, github_webhook_secret=None)

    with pytest.raises(WebConfigError, match="GITOPS_GITHUB_WEBHOOK_SECRET") as error:
        create_app(settings, WebServices(store=store, submit=queue.submit))
    assert "GITOPS_INSECURE_NO_WEBHOOK_SECRET" in str(error.value)


def test_insecure_mode_accepts_unsigned_deliveries(build, queue: FakeQueue) -> None:
    client = build(github_webhook_secret=None, insecure_no_webhook_secret=True).test_client()

    response = deliver(client, "pull_request", pr_payload(), secret=None)

    assert response.status_code == 202
    assert len(queue.events) == 1


def test_empty_secret_counts_as_no_secret(tmp_path: Path, store: Store, queue: FakeQueue) -> None:
    settings = make_settings(tmp_path, github_webhook_secret="")

    with pytest.raises(WebConfigError):
        create_app(settings, WebServices(store=store, submit=queue.submit))


def test_create_app_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from runner.wiring import create_app_from_env

    monkeypatch.setenv("GITOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GITOPS_GITHUB_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("GITOPS_API_TOKEN", API_TOKEN)

    app = create_app_from_env()

    assert app.test_client().get("/healthz").status_code == 200


def test_gunicorn_conf_reads_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GITOPS_HOST", "127.0.0.1")
    monkeypatch.setenv("GITOPS_PORT", "5151")

    conf = runpy.run_path(str(ROOT / "deploy" / "gunicorn.conf.py"))

    assert conf["bind"] == ["127.0.0.1:5151"]
    assert conf["preload_app"] is False
    assert callable(conf["post_worker_init"])
    assert callable(conf["worker_exit"])


def test_a_booted_worker_keeps_its_boot_objects_out_of_collections() -> None:
    from types import SimpleNamespace

    from runner.web.server import post_worker_init

    gc.unfreeze()
    try:
        post_worker_init(SimpleNamespace(wsgi=None))

        # The modules and the app live as long as the worker: frozen, a full collection
        # no longer walks them (a stall of every request in flight, otherwise).
        assert gc.get_freeze_count() > 10_000
        assert gc.is_tracked(SimpleNamespace())  # what comes later is collected as before
    finally:
        gc.unfreeze()


# --- health, API, dashboard, metrics -------------------------------------------------------


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_healthz_is_503_when_the_database_does_not_answer(
    tmp_path: Path, sqlite_url: str, queue: FakeQueue
) -> None:
    class BrokenStore(Store):
        def read(self):
            raise OperationalError("SELECT 1", {}, Exception("database is gone"))

    broken = BrokenStore.open(sqlite_url)
    app = create_app(make_settings(tmp_path), WebServices(store=broken, submit=queue.submit))

    assert app.test_client().get("/healthz").status_code == 503
    broken.close()


def _record_run(store: Store, settings_dir: Path, **fields: Any) -> int:
    values = {
        "repo": "github.com/acme/infra",
        "project": "app",
        "dir": "app",
        "workspace": "default",
        "command": "plan",
        "trigger": "autoplan",
        "pr_number": 7,
        "commit_sha": HEAD_SHA,
        "author": "alice",
    }
    run_id = store.runs.start(**{**values, **fields})
    log = settings_dir / "logs" / f"run-{run_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"Plan: 1 to add, 0 to change, 0 to destroy. (run {run_id})\n")
    store.runs.finish(
        run_id, RunStatus.SUCCESS, summary=PlanSummary(add=1, change=2), log_path=str(log)
    )
    return run_id


def test_api_lists_runs_newest_first_and_filters(
    client: FlaskClient, store: Store, tmp_path: Path
) -> None:
    first = _record_run(store, tmp_path / "data")
    second = _record_run(store, tmp_path / "data", pr_number=8)
    other = _record_run(store, tmp_path / "data", repo="github.com/acme/other")

    runs = client.get("/api/runs").json["runs"]
    assert [run["id"] for run in runs] == [other, second, first]
    assert runs[-1]["summary"]["add"] == 1
    assert runs[-1]["summary"]["import"] == 0
    assert runs[-1]["status"] == "success"
    assert runs[-1]["log_url"] == f"/api/runs/{first}/log"

    filtered = client.get("/api/runs?repo=github.com/acme/infra&pr=7").json["runs"]
    assert [run["id"] for run in filtered] == [first]
    assert len(client.get("/api/runs?limit=1").json["runs"]) == 1
    assert client.get("/api/runs?limit=abc").status_code == 400


def test_api_run_and_its_log(build, store: Store, tmp_path: Path) -> None:
    client = build(api_token=API_TOKEN).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {API_TOKEN}"
    run_id = _record_run(store, tmp_path / "data")

    run = client.get(f"/api/runs/{run_id}")
    assert run.json["project"] == "app"
    assert run.json["pr_number"] == 7

    log = client.get(f"/api/runs/{run_id}/log")
    assert log.status_code == 200
    assert log.mimetype == "text/plain"
    assert log.headers["X-Content-Type-Options"] == "nosniff"
    assert f"(run {run_id})" in log.get_data(as_text=True)

    assert client.get("/api/runs/9999").status_code == 404
    assert client.get("/api/runs/9999/log").status_code == 404


def test_api_never_serves_a_log_outside_the_data_dir(build, store: Store, tmp_path: Path) -> None:
    client = build(api_token=API_TOKEN).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {API_TOKEN}"
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not a log")
    run_id = store.runs.start(
        repo="github.com/acme/infra", project="app", dir="app", workspace="default",
        command="plan", trigger="autoplan", log_path=str(outside),
    )  # fmt: skip

    assert client.get(f"/api/runs/{run_id}/log").status_code == 404


def test_api_lists_locks_and_jobs(client: FlaskClient, store: Store) -> None:
    owner = LockOwner(pr_number=7, pr_url="https://github.com/acme/infra/pull/7", user="alice")
    store.locks.acquire("github.com/acme/infra", "app", "default", owner)
    kind, payload = encode_event(_pull_request_event())
    job_id = store.jobs.enqueue(kind, payload)

    locks = client.get("/api/locks").json["locks"]
    assert locks == [
        {
            "repo": "github.com/acme/infra",
            "dir": "app",
            "workspace": "default",
            "owner_pr": 7,
            "owner_pr_url": "https://github.com/acme/infra/pull/7",
            "owner_user": "alice",
            "run_id": None,
            "since": locks[0]["since"],
        }
    ]

    jobs = client.get("/api/jobs?status=queued").json["jobs"]
    assert [(job["id"], job["repo"], job["pr_number"]) for job in jobs] == [
        (job_id, "acme/infra", 7)
    ]
    assert "payload" not in jobs[0]
    assert client.get("/api/jobs?status=running").json["jobs"] == []
    assert client.get("/api/jobs?status=bogus").status_code == 400


def test_dashboard_shows_runs_locks_and_jobs(
    client: FlaskClient, store: Store, tmp_path: Path
) -> None:
    run_id = _record_run(store, tmp_path / "data", project="<script>alert(1)</script>")
    store.locks.acquire(
        "github.com/acme/infra",
        "network",
        "prod",
        LockOwner(pr_number=9, pr_url="https://github.com/acme/infra/pull/9"),
    )
    store.jobs.enqueue(*encode_event(_pull_request_event()))

    response = client.get("/")

    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "github.com/acme/infra" in html
    assert 'href="https://github.com/acme/infra/pull/7"' in html
    # Signed-in browsers follow a run (and its log) on the run's own page.
    assert f'href="/runs/{run_id}"' in html
    assert "+1 ~2 -0" in html
    assert 'href="https://github.com/acme/infra/pull/9"' in html
    assert "queued" in html
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html


def test_dashboard_renders_when_empty(client: FlaskClient) -> None:
    response = client.get("/")

    assert response.status_code == 200
    assert "No run yet." in response.get_data(as_text=True)


def test_metrics_count_webhooks_by_outcome(client: FlaskClient) -> None:
    deliver(client, "pull_request", pr_payload(), delivery_id="m-1")
    deliver(client, "pull_request", pr_payload(), delivery_id="m-1")
    deliver(client, "pull_request", pr_payload(), secret=None)

    response = client.get("/metrics")

    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert 'gitops_webhooks_total{forge="github",outcome="queued"} 1.0' in text
    assert 'gitops_webhooks_total{forge="github",outcome="duplicate"} 1.0' in text
    assert 'gitops_webhooks_total{forge="github",outcome="unauthorized"} 1.0' in text
    assert 'gitops_webhook_ack_seconds_count{forge="github"} 3.0' in text
    assert 'gitops_jobs{status="queued"}' in text


def test_each_app_has_its_own_metrics(build) -> None:
    first, second = (authorize(build().test_client(), API_TOKEN) for _ in range(2))
    deliver(first, "ping", ping_event(REPO))

    assert 'outcome="pong"' in first.get("/metrics").get_data(as_text=True)
    assert 'outcome="pong"' not in second.get("/metrics").get_data(as_text=True)


def _pull_request_event() -> WorkEvent:
    from runner.events.github import parse_github_event

    event = parse_github_event("pull_request", pr_payload())
    assert not isinstance(event, str)
    return event  # type: ignore[return-value]


def _sign(body: bytes) -> str:
    from tests.support.github_payloads import sign

    return sign(body, SECRET)


# --- the real server -----------------------------------------------------------------------


def serve_for_test() -> None:
    """Entry point of the server subprocess: `run_server` with store-backed services."""
    from runner.web.server import run_server

    settings = load_settings()

    def services(settings: Settings) -> WebServices:
        store = Store.open(settings.resolved_database_url)
        marker = settings.data_dir / f"worker-{os.getpid()}"
        return WebServices(
            store=store,
            submit=lambda event, delivery=None: enqueue_event(store, event, delivery),
            start_workers=lambda: marker.with_suffix(".started").touch(),
            stop_workers=lambda: marker.with_suffix(".stopped").touch(),
        )

    run_server(settings, services, overrides={"workers": 1, "threads": 2})


class ServerProcess:
    """`serve_for_test` in a subprocess on a port the OS picked (no race for free ports)."""

    def __init__(self, data_dir: Path) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GITOPS_")},
            "GITOPS_DATA_DIR": str(data_dir),
            "GITOPS_HOST": "127.0.0.1",
            "GITOPS_PORT": "0",
            "GITOPS_GITHUB_WEBHOOK_SECRET": SECRET,
            "GITOPS_API_TOKEN": API_TOKEN,
            "PYTHONPATH": str(ROOT),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from tests.test_web import serve_for_test; serve_for_test()"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.url = f"http://127.0.0.1:{self._read_port()}"
        # Keep draining stderr, or a full pipe would block the server.
        threading.Thread(target=self._drain, daemon=True).start()

    def _read_port(self) -> int:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            match = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line)
            if match:
                return int(match.group(1))
        raise AssertionError("server exited before listening:\n" + "".join(self.lines))

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_healthy(self) -> requests.Response:
        # The master listens before the worker has loaded the app; requests then wait in
        # the socket backlog, so one generous read timeout covers the boot.
        return requests.get(f"{self.url}/healthz", timeout=120)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=180)


def test_real_server_accepts_a_signed_delivery_over_http(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir)
    try:
        assert server.wait_healthy().json() == {"status": "ok"}
        assert list(data_dir.glob("worker-*.started")), "post_worker_init did not start workers"

        url = f"{server.url}/events"
        response = post_delivery(url, "pull_request", pr_payload(), SECRET, delivery_id="h-1")
        assert response.status_code == 202, response.text
        job_id = response.json()["job"]

        again = post_delivery(url, "pull_request", pr_payload(), SECRET, delivery_id="h-1")
        assert again.json() == {"status": "duplicate"}
        unsigned = post_delivery(url, "pull_request", pr_payload(), None, delivery_id="h-2")
        assert unsigned.status_code == 401

        with Store.open(f"sqlite:///{data_dir / 'gitops-runner.db'}") as store:
            job = store.jobs.get(job_id)
        assert job is not None
        assert job.kind == "pull_request"
        assert job.payload["pr"]["head_sha"] == HEAD_SHA
    finally:
        returncode = server.stop()
    assert returncode == 0, "".join(server.lines)
    assert list(data_dir.glob("worker-*.stopped")), "worker_exit did not stop workers"
    log = "".join(server.lines)
    assert SECRET not in log
    assert "delivery=h-1" in log
