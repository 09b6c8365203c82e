"""The dashboard in a real browser: headless Chromium (Debian's), driven by Playwright.

One runner is served over HTTP for the module, on a real store holding a real drift
scan of files-provider projects (tests/support/drift_world.py); people sign in through
a fake OpenID Connect provider served over HTTP. Stories: see every project's state,
watch a running plan's log stream in, unlock as an operator and be refused as a viewer,
export the audit as CSV.

Skipped with a reason where /usr/bin/chromium is missing; required under CI=true
(.ci/run installs it). With RUNNER_SCREENSHOTS=1 each story saves its page into
docs/screenshots/, which the README shows.
"""

from __future__ import annotations

import csv
import io
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.config.loader import load_repo_config
from runner.engine.planner import PlanOptions, PlanTarget
from runner.engine.recording import LiveRuns, record_plan_result
from runner.settings import Settings
from runner.store.locks import LockOwner
from runner.store.runs import RunQuery, RunStatus, Trigger
from runner.web.app import create_app
from runner.web.context import WebServices
from runner.wiring import build_services
from tests.support.dashboard import (
    WEBHOOK_SECRET,
    hold_state_lock,
    no_submit,
    record_run,
    release_state_lock,
)
from tests.support.drift_world import World, make_world
from tests.support.fake_oidc import FakeOIDC
from tests.support.local_server import LocalServer

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
OPERATOR = "olga@example.com"
VIEWER = "victor@example.com"
WAIT_MS = 60_000  # what a page may take on a loaded 2-core machine; not a speed check

if not CHROMIUM.exists():
    if os.environ.get("CI") == "true":
        pytest.fail("CI needs Chromium at /usr/bin/chromium (.ci/run installs it)")
    pytest.skip(
        "no Chromium at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True
    )

playwright_api = pytest.importorskip("playwright.sync_api")


class LateApp:
    """A WSGI app bound after the server started: the runner's public URL (which the
    sign-in callback is built from) is only known once the port is."""

    app: Callable[..., Any] | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        assert self.app is not None
        return self.app(environ, start_response)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Two applied projects scanned in sync; then `alpha` edited outside Terraform and
    scanned again (real drift scans, real files provider)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        built = make_world(
            tmp_path_factory.mktemp("browser"),
            monkeypatch,
            {"alpha": "one", "beta": "two"},
            github_webhook_secret=WEBHOOK_SECRET,
        )
        built.service().scan(built.drift_repo())  # in sync: the history's first mark
        built.file("alpha").write_text("edited by hand")
        built.service().scan(built.drift_repo())
        try:
            yield built
        finally:
            built.store.close()


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeOIDC]:
    with FakeOIDC() as provider:
        yield provider


@pytest.fixture(scope="module")
def runner_url(world: World, idp: FakeOIDC) -> Iterator[str]:
    late = LateApp()
    server = LocalServer("runner")
    server.start(late)
    settings = Settings.model_validate(
        world.settings.model_dump()
        | idp.settings(public_url=server.url)
        | {"dashboard_viewers": (VIEWER,), "dashboard_operators": ("group:platform",)}
    )
    late.app = create_app(settings, WebServices(store=world.store, submit=no_submit))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def signed_in(browser: Any, idp: FakeOIDC, runner_url: str, email: str, groups=()) -> Any:
    """A fresh browser context (its own cookies) signed in as `email` through the IdP."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    idp.sign_in_as(email, list(groups))
    page.goto(f"{runner_url}/")
    page.wait_for_url(f"{runner_url}/")
    return page


@pytest.fixture
def operator_page(browser: Any, idp: FakeOIDC, runner_url: str) -> Iterator[Any]:
    page = signed_in(browser, idp, runner_url, OPERATOR, ["platform"])
    yield page
    page.context.close()


@pytest.fixture
def viewer_page(browser: Any, idp: FakeOIDC, runner_url: str) -> Iterator[Any]:
    page = signed_in(browser, idp, runner_url, VIEWER)
    yield page
    page.context.close()


def screenshot(page: Any, name: str) -> None:
    """Kept for the README when asked for (RUNNER_SCREENSHOTS=1), not on every run."""
    if os.environ.get("RUNNER_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


# --- stories --------------------------------------------------------------------------------


def test_signing_in_shows_every_project_with_its_state(
    operator_page: Any, world: World, idp: FakeOIDC
) -> None:
    page = operator_page

    assert page.inner_text("#principal") == OPERATOR
    assert page.inner_text("#role") == "operator"
    assert page.get_attribute('tr[data-project="alpha"]', "data-state") == "drifted"
    assert page.get_attribute('tr[data-project="beta"]', "data-state") == "in_sync"
    assert "changed outside Terraform" in page.inner_text('tr[data-project="alpha"]')
    assert idp.authorize_requests, "the sign-in went through the provider"
    screenshot(page, "projects")

    page.click('tr[data-project="alpha"] a')
    page.wait_for_selector("#drift-chart")
    assert page.locator("#drift-chart rect").count() >= 1
    assert "files_file.f" in page.inner_text("main")
    screenshot(page, "project")


def test_a_running_plan_streams_its_log_into_the_page(
    operator_page: Any, world: World, runner_url: str
) -> None:
    """A real plan of `beta` waits for its state lock (held here), so it is running while
    the page is open; once the lock is let go, the rest of its log streams in."""
    page = operator_page
    services = build_services(world.settings, world.store)
    beta = next(p for p in load_repo_config(world.repo.path).projects if p.name == "beta")
    live = LiveRuns(world.store, repo=world.drift_repo().key, trigger=Trigger.API, commit=None)
    state_lock = hold_state_lock(world.state / "beta.tfstate")
    run_started = threading.Event()

    def plan() -> None:
        options = PlanOptions(
            log_opened=lambda project, log: (live.opened(project, log), run_started.set())
        )
        target = PlanTarget(beta, "browser test", ("-lock-timeout=120s",))
        [result] = services.planner.plan_all(world.repo.path, [target], None, options)
        record_plan_result(
            world.store, result, repo=world.drift_repo().key, trigger=Trigger.API,
            run_id=live.take(result),
        )  # fmt: skip

    planning = threading.Thread(target=plan)
    planning.start()
    try:
        assert run_started.wait(WAIT_MS / 1000)
        [run] = world.store.runs.search(RunQuery(project="beta", status=RunStatus.RUNNING))
        page.goto(f"{runner_url}/runs/{run.id}")
        assert page.inner_text("#run-status") == "running"
        # A selector, not wait_for_function: its polling evaluates the predicate in the
        # page, which the page's CSP (no 'unsafe-eval') refuses once it has to poll.
        page.wait_for_selector("#log:has-text('terraform')")
        assert page.inner_text("#log-state") in ("streaming…", "reconnecting…"), Path(
            run.log_path or ""
        ).read_text()
        screenshot(page, "run-live")
    finally:
        release_state_lock(world.state / "beta.tfstate", state_lock)  # Terraform goes on
        planning.join()

    page.wait_for_selector("#log-state[data-finished]")
    log = world.store.runs.get_run(run.id)
    assert page.get_attribute("#log-state", "data-finished") == "no_changes", (
        Path(log.log_path).read_text() if log and log.log_path else log
    )
    assert "No changes" in page.inner_text("#log")


def test_an_operator_unlocks_a_project(operator_page: Any, world: World, runner_url: str) -> None:
    key = world.drift_repo().key
    owner = LockOwner(pr_number=41, user="mallory")
    assert world.store.locks.acquire(key, "beta", "default", owner).acquired
    page = operator_page

    page.goto(f"{runner_url}/locks")
    screenshot(page, "locks")
    page.click('tr[data-lock="beta"] button')

    page.wait_for_selector("#released")
    assert "beta" in page.inner_text("#released")
    assert world.store.locks.get(key, "beta", "default") is None


def test_a_viewer_is_refused_the_unlock(viewer_page: Any, world: World, runner_url: str) -> None:
    key = world.drift_repo().key
    owner = LockOwner(pr_number=42, user="bob")
    assert world.store.locks.acquire(key, "alpha", "default", owner).acquired
    page = viewer_page
    try:
        page.goto(f"{runner_url}/locks")
        assert page.inner_text("#role") == "viewer"
        page.click('tr[data-lock="alpha"] button')

        page.wait_for_selector("p.reason")
        assert "operator" in page.inner_text("p.reason")
        assert world.store.locks.get(key, "alpha", "default") is not None
    finally:
        world.store.locks.release(key, "alpha", "default")


def test_the_audit_exports_every_apply_as_csv(
    operator_page: Any, world: World, runner_url: str
) -> None:
    data_dir = world.settings.data_dir
    record_run(world.store, data_dir, project="beta", command="apply", author="alice")
    record_run(
        world.store, data_dir, project="beta", command="apply", author="=cmd|' /C calc'!A0",
        status=RunStatus.FAILED,
    )  # fmt: skip
    page = operator_page

    page.goto(f"{runner_url}/audit")
    screenshot(page, "audit")
    with page.expect_download() as download:
        page.click("#export-csv")
    text = Path(download.value.path()).read_text()

    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["who"] for row in rows[:2]] == ["'=cmd|' /C calc'!A0", "alice"]
    assert {row["status"] for row in rows[:2]} == {"failed", "success"}


def test_the_runs_page_filters_by_command(
    operator_page: Any, world: World, runner_url: str
) -> None:
    data_dir = world.settings.data_dir
    record_run(world.store, data_dir, project="alpha", command="plan")
    applied = record_run(world.store, data_dir, project="alpha", command="apply")
    page = operator_page

    page.goto(f"{runner_url}/runs")
    page.select_option("select[name=status]", "success")
    page.fill("input[name=command]", "apply")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/runs?*command=apply*")
    screenshot(page, "runs")

    commands = page.locator("table.runs tbody td:nth-child(6)").all_inner_texts()
    assert commands and set(commands) == {"apply"}
    assert page.locator(f'tr[data-run="{applied}"]').count() == 1
