"""How many web processes `serve` runs, how they share connections and the session key,
and what a booted worker does before its first request.

Two web processes by default (on two cores or more, when no job worker runs in them)
must behave as one to a browser: a session cookie, and the CSRF token in it, that one
process issued must be good in the other. That is tested with the real `serve`, its
access log telling which process answered.
"""

from __future__ import annotations

import gc
import re
import runpy
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from pydantic import SecretStr
from sqlalchemy import insert

from runner.settings import Settings
from runner.store.models import Delivery, utcnow
from runner.store.store import Store
from runner.web.app import create_app
from runner.web.auth.session import with_session_secret
from runner.web.context import WebServices
from runner.web.server import (
    RunnerServer,
    gunicorn_options,
    post_worker_init,
    web_processes,
)
from tests.support.dashboard import REPO, lock_project
from tests.support.served_cli import ROOT, ServedCli

SECRET = "webhook-secret"
UNLOCK = {"repo": REPO, "dir": "app", "workspace": "default"}
_CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
_ACCESS_LINE = re.compile(r"\[(\d+)\] .*POST /locks/unlock")


Cores = Callable[[int], None]


@pytest.fixture
def cores(monkeypatch: pytest.MonkeyPatch) -> Cores:
    """Pretend this process may run on `count` cores (and WEB_CONCURRENCY is unset)."""

    def pretend(count: int) -> None:
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(count)))

    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    return pretend


# --- how many processes ----------------------------------------------------------------------


@pytest.mark.parametrize(("count", "expected"), [(1, 1), (2, 2), (16, 2)])
def test_without_job_workers_a_web_process_per_core_at_most_two(
    cores: Cores, count: int, expected: int
) -> None:
    cores(count)

    assert web_processes(web_runs_jobs=False) == expected


def test_web_processes_that_run_job_workers_are_one(cores: Cores) -> None:
    cores(16)

    # Each would run a pool of job workers of its own.
    assert web_processes(web_runs_jobs=True) == 1


def test_web_concurrency_overrides_the_default(
    cores: Cores, monkeypatch: pytest.MonkeyPatch
) -> None:
    cores(16)
    monkeypatch.setenv("WEB_CONCURRENCY", "3")

    assert web_processes(web_runs_jobs=True) == 3
    assert web_processes(web_runs_jobs=False) == 3


# --- connections per process ----------------------------------------------------------------


def _configured(settings: Settings) -> RunnerServer:
    # Builds gunicorn's config as `serve` does (load_config runs in the constructor).
    return RunnerServer(settings, _no_services, gunicorn_options(settings))


def _no_services(_settings: Settings) -> WebServices:
    raise AssertionError("no worker starts in this test")


@pytest.mark.parametrize(
    ("cmd_args", "threads", "connections"),
    [
        (None, 8, 16),
        ("--threads 16", 16, 32),  # follows the operator's threads
        ("--threads 16 --worker-connections 50", 16, 50),  # unless given too
    ],
)
def test_a_process_takes_twice_its_threads_in_connections(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cmd_args: str | None,
    threads: int,
    connections: int,
) -> None:
    if cmd_args is None:
        monkeypatch.delenv("GUNICORN_CMD_ARGS", raising=False)
    else:
        monkeypatch.setenv("GUNICORN_CMD_ARGS", cmd_args)

    config = _configured(Settings(data_dir=tmp_path)).cfg

    assert (config.threads, config.worker_connections) == (threads, connections)


# --- plain gunicorn with deploy/gunicorn.conf.py ---------------------------------------------


def _conf(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(ROOT / "deploy" / "gunicorn.conf.py"))


def test_the_conf_file_runs_one_process_when_it_runs_the_job_workers(
    cores: Cores, monkeypatch: pytest.MonkeyPatch
) -> None:
    cores(4)

    conf = _conf(monkeypatch, GITOPS_QUEUE="inprocess")

    assert conf["workers"] == 1
    assert conf["worker_connections"] == 2 * conf["threads"]
    assert "raw_env" not in conf


def test_the_conf_file_gives_its_processes_one_session_key(
    cores: Cores, monkeypatch: pytest.MonkeyPatch
) -> None:
    cores(4)
    monkeypatch.delenv("GITOPS_SESSION_SECRET", raising=False)

    conf = _conf(monkeypatch, GITOPS_QUEUE="rq")  # the web processes only submit

    assert conf["workers"] == 2
    (variable,) = conf["raw_env"]  # set in the master, inherited by both workers
    name, _, key = variable.partition("=")
    assert name == "GITOPS_SESSION_SECRET" and len(key) >= 32


def test_the_conf_file_makes_no_key_for_a_sign_in_provider(
    cores: Cores, monkeypatch: pytest.MonkeyPatch
) -> None:
    cores(4)
    monkeypatch.delenv("GITOPS_SESSION_SECRET", raising=False)

    conf = _conf(
        monkeypatch,
        GITOPS_QUEUE="rq",
        GITOPS_OIDC_ISSUER="https://idp.example.com",
        GITOPS_OIDC_CLIENT_ID="runner",
        GITOPS_OIDC_CLIENT_SECRET="oidc-secret",
    )

    # Start-up insists on GITOPS_SESSION_SECRET then: sessions must outlive a restart.
    assert "raw_env" not in conf


def test_serve_keeps_a_configured_session_secret_and_otherwise_makes_one(tmp_path: Path) -> None:
    configured = Settings(data_dir=tmp_path, session_secret=SecretStr("k" * 40))
    assert with_session_secret(configured) is configured

    made = [with_session_secret(Settings(data_dir=tmp_path)) for _ in range(2)]

    keys = [settings.session_secret.get_secret_value() for settings in made]  # type: ignore[union-attr]
    assert all(len(key) >= 32 for key in keys)
    assert keys[0] != keys[1]  # random: nobody can guess the key of a run
    assert keys[0] in made[0].secret_values()  # masked in logs like a configured one


# --- two real web processes, one browser ------------------------------------------------------


def test_a_session_from_one_web_process_is_good_in_the_other(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Store.open(f"sqlite:///{data / 'gitops-runner.db'}") as store:
        lock_project(store, "app", pr=9)  # the locks page then has the unlock form
    access_log = tmp_path / "stdout.txt"
    server = ServedCli(
        data, stdout=access_log, WEB_CONCURRENCY="2", GITOPS_GITHUB_WEBHOOK_SECRET=SECRET,
        GITOPS_DASHBOARD_AUTH="none", GITOPS_PUBLIC_URL="http://127.0.0.1",
        GUNICORN_CMD_ARGS="--access-logfile -",
    )  # fmt: skip
    try:
        page = requests.get(f"{server.url}/locks", headers={"Accept": "text/html"}, timeout=60)
        token = _CSRF_INPUT.search(page.text)
        assert token is not None, page.text
        answers = []
        # A new connection each: either process may answer. Until both have answered
        # some, within reason.
        while len(answers) < 10 or len(_answering_pids(access_log)) < 2:
            assert len(answers) < 300, "one web process answered every request"
            answer = requests.post(
                f"{server.url}/locks/unlock", data={**UNLOCK, "csrf_token": token.group(1)},
                cookies=page.cookies, headers={"Accept": "text/html", "Connection": "close"},
                allow_redirects=False, timeout=60,
            )  # fmt: skip
            answers.append(answer.status_code)
    finally:
        server.stop()

    # Each process checked the cookie the other signed, and the CSRF token in it.
    assert set(answers) == {303}, server.stderr[-3000:]


def _answering_pids(access_log: Path) -> set[str]:
    return set(_ACCESS_LINE.findall(access_log.read_text()))


# --- a booted worker ---------------------------------------------------------------------------


def test_a_booted_worker_has_pruned_and_connected_before_its_first_request(
    tmp_path: Path, sqlite_url: str
) -> None:
    with Store.open(sqlite_url) as store:
        with store.write() as session:
            session.execute(
                insert(Delivery),
                {"delivery_id": "ancient", "forge": "github", "event": "pull_request",
                 "received_at": utcnow() - timedelta(days=40)},
            )  # fmt: skip
        settings = Settings(data_dir=tmp_path, github_webhook_secret=SECRET)
        app = create_app(settings, WebServices(store=store, submit=lambda *_a, **_k: 1))
        store.dispose()  # no pooled connection yet, as in a new worker

        gc.unfreeze()
        try:
            post_worker_init(SimpleNamespace(wsgi=app))
        finally:
            gc.unfreeze()

        for thread in threading.enumerate():
            if thread.name == "delivery-prune":
                thread.join(10)
        assert store.engine.pool.checkedin() >= 1  # a connection waits in the pool
        # The hourly prune's first run happened at boot, not in the first burst of webhooks.
        assert store.deliveries.record_delivery("ancient", "github", "pull_request")
