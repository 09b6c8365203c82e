"""`POST /events` is answered in front of Flask, and gunicorn writes no access log unless
asked for: the two cuts of the webhook acknowledgement's CPU (issue 10) keep what the
rest of the service promises.

Every webhook check (signature before parsing, size cap, dedupe, allowlist...) is
tested in tests/test_web.py through the same test client, which now reaches the
front endpoint too; these tests pin what the endpoint must keep from Flask (security
headers, the JSON answer, the rest of the path's routes) and what it skips (the
request hooks), and run the real `gitops-runner serve` for the access log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import EnvironBuilder

from runner.engine.project_mutex import FileMutex
from runner.jobs.inprocess import InProcessQueue
from runner.settings import Settings
from runner.store.jobs import JobStatus
from runner.store.store import Store
from runner.web.app import create_app
from runner.web.context import WebServices
from tests.support.github_payloads import (
    Pull,
    Repo,
    build_delivery,
    ping_event,
    pull_request_event,
)
from tests.support.job_handlers import IdleHandler

ROOT = Path(__file__).resolve().parent.parent
SECRET = "fast-path-webhook-secret"
REPO = Repo("acme/infra", clone_url="https://github.com/acme/infra.git")
PULL = Pull(
    number=3,
    head_sha="ec26c3e57ca3a959ca5aad62de7213c562f8c821",
    head_ref="feature",
    base_sha="f95f852bd8fca8fcc58a9a2d6c842781e32a215e",
)
SECURITY_HEADERS = ("X-Content-Type-Options", "Content-Security-Policy", "Referrer-Policy")


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    with Store.open(sqlite_url) as opened:
        yield opened


@pytest.fixture
def app(tmp_path: Path, store: Store) -> Iterator[Flask]:
    """The app `serve` builds, around a real in-process queue (workers not started)."""
    queue = InProcessQueue(store, IdleHandler(), 1, mutex=FileMutex(tmp_path / "locks"))
    settings = Settings(data_dir=tmp_path / "data", github_webhook_secret=SECRET, dashboard="off")
    yield create_app(settings, WebServices(store=store, submit=queue.submit))
    queue.stop(timeout=5)


def post(client: FlaskClient, event: str, payload: dict[str, Any], delivery_id: str) -> Any:
    body, headers = build_delivery(event, payload, SECRET, delivery_id)
    return client.post("/events", data=body, headers=headers)


def test_a_webhook_is_answered_in_front_of_flask_with_the_same_headers(
    app: Flask, store: Store
) -> None:
    hooks: list[str] = []
    app.before_request(lambda: hooks.append("before"))
    client = app.test_client()

    queued = post(client, "pull_request", pull_request_event("opened", REPO, PULL, "alice"), "d-1")
    pong = post(client, "ping", ping_event(REPO), "d-2")

    assert queued.status_code == 202 and queued.json["status"] == "queued"
    assert store.jobs.get(queued.json["job"]).status is JobStatus.QUEUED
    assert pong.status_code == 200 and pong.json == {"status": "pong"}
    for answer in (queued, pong):
        assert answer.mimetype == "application/json"
        assert all(name in answer.headers for name in SECURITY_HEADERS)
    assert hooks == []  # neither reached Flask's request hooks
    assert client.get("/healthz").status_code == 200
    assert hooks == ["before"]  # every other route still does


def test_a_forged_delivery_is_refused_in_front_of_flask_too(app: Flask, store: Store) -> None:
    body, headers = build_delivery("pull_request", {"not": "checked"}, "wrong-secret", "d-3")

    answer = app.test_client().post("/events", data=b"{" + body, headers=headers)

    assert answer.status_code == 401  # the signature is checked before the JSON is read
    assert all(name in answer.headers for name in SECURITY_HEADERS)
    assert store.jobs.list() == []
    assert store.deliveries.record_delivery("d-3", "github", "pull_request")  # not recorded


def test_flask_itself_offers_no_second_way_in_for_a_delivery(app: Flask, store: Store) -> None:
    # Should anything route a delivery past the endpoint, Flask has no handler for it and
    # its sign-in guard does not exempt it: a correctly signed delivery queues nothing.
    body, headers = build_delivery(
        "pull_request", pull_request_event("opened", REPO, PULL, "alice"), SECRET, "d-4"
    )
    environ = EnvironBuilder(path="/events", method="POST", data=body, headers=headers)
    statuses: list[str] = []

    Flask.wsgi_app(app, environ.get_environ(), lambda status, *_: statuses.append(status))

    assert statuses[0].startswith("401")  # the sign-in guard's answer
    assert store.jobs.list() == []


def test_other_methods_on_the_webhook_path_still_reach_flask(app: Flask) -> None:
    answer = app.test_client().get("/events")

    assert answer.status_code == 401  # the sign-in guard's answer, as before
    assert all(name in answer.headers for name in SECURITY_HEADERS)


# --- gunicorn's access log, with the real `gitops-runner serve` -----------------------------


def serve_and_post_a_ping(tmp_path: Path, gunicorn_args: str | None) -> str:
    """Start `serve`, post one signed ping, stop it; what it wrote to stdout."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("GITOPS_")}
    env |= {
        "GITOPS_DATA_DIR": str(tmp_path / "data"),
        "GITOPS_HOST": "127.0.0.1",
        "GITOPS_PORT": "0",
        "GITOPS_GITHUB_WEBHOOK_SECRET": SECRET,
        "GITOPS_DASHBOARD": "off",
        "GITOPS_WORKERS": "1",
    }
    env.pop("GUNICORN_CMD_ARGS", None)
    if gunicorn_args is not None:
        env["GUNICORN_CMD_ARGS"] = gunicorn_args
    tmp_path.mkdir(parents=True, exist_ok=True)
    stdout = tmp_path / "stdout.txt"
    with stdout.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "runner", "serve"], cwd=ROOT, env=env,
            stdout=sink, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            url = _listening_url(process)
            body, headers = build_delivery("ping", ping_event(REPO), SECRET, "access-log-1")
            answer = requests.post(f"{url}/events", data=body, headers=headers, timeout=60)
            assert answer.status_code == 200
        finally:
            process.terminate()
            process.communicate(timeout=120)
    return stdout.read_text()


def _listening_url(process: subprocess.Popen[str]) -> str:
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if "Listening at: " in line:
            return line.split("Listening at: ", 1)[1].split()[0]
    raise AssertionError("serve exited before listening:\n" + "".join(seen))


def test_serve_writes_no_access_log_unless_asked_for(tmp_path: Path) -> None:
    assert "POST /events" not in serve_and_post_a_ping(tmp_path / "default", None)

    asked = serve_and_post_a_ping(tmp_path / "asked", "--access-logfile -")

    line = next(line for line in asked.splitlines() if "POST /events" in line)
    assert " 200 " in line  # through the runner's handlers, in its text format
    assert json.dumps(SECRET) not in asked and SECRET not in asked
