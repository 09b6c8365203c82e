"""The dashboard's pages through the Flask test client, signed in through a fake OIDC
provider over real HTTP: what each page shows, and the attacks on its one action.

The browser stories (tests/test_browser.py) show the same pages in Chromium; these
cover what a browser test would be slow or clumsy at: every refusal, escaping, bad input.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from runner.results.drift import DriftStatus
from runner.results.model import ResourceChange
from runner.store.runs import RunStatus
from runner.store.store import Store
from runner.web.charts import drift_chart
from runner.web.sync_state import SyncState
from tests.support.auth import csrf_of, sign_in
from tests.support.dashboard import (
    REPO,
    dashboard_app,
    lock_project,
    record_drift,
    record_plan,
    record_run,
)
from tests.support.fake_oidc import FakeOIDC

OPERATOR = "olga@example.com"
VIEWER = "victor@example.com"
SCRIPT = "<script>alert(1)</script>"
UNLOCK = {"repo": REPO, "dir": "app", "workspace": "default"}


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeOIDC]:
    with FakeOIDC() as provider:
        yield provider


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def app(store: Store, data_dir: Path, idp: FakeOIDC) -> Flask:
    return dashboard_app(
        store,
        data_dir,
        **idp.settings(public_url="http://localhost"),
        dashboard_viewers=(VIEWER,),
        dashboard_operators=(OPERATOR,),
    )


@pytest.fixture
def operator(app: Flask, idp: FakeOIDC) -> FlaskClient:
    client = app.test_client()
    sign_in(client, idp, OPERATOR)
    return client


@pytest.fixture
def viewer(app: Flask, idp: FakeOIDC) -> FlaskClient:
    client = app.test_client()
    sign_in(client, idp, VIEWER)
    return client


def html(client: FlaskClient, url: str) -> str:
    response = client.get(url, headers={"Accept": "text/html"})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_data(as_text=True)


# --- the unlock button ------------------------------------------------------------------------


def test_an_operator_unlocks_with_the_pages_csrf_token(store: Store, operator: FlaskClient) -> None:
    lock_project(store, "app", pr=9)
    page = html(operator, "/locks")
    assert csrf_of(operator) in page  # the form carries the session's token

    answer = operator.post("/locks/unlock", data={**UNLOCK, "csrf_token": csrf_of(operator)})

    assert answer.status_code == 303
    assert answer.headers["Location"] == "/locks?released=app+%28default%29"
    assert store.locks.list() == []
    assert "Released: app (default)" in html(operator, "/locks?released=app+%28default%29")


@pytest.mark.parametrize("token", [None, "forged-by-another-site"], ids=["missing", "forged"])
def test_an_unlock_without_the_right_csrf_token_is_refused(
    store: Store, operator: FlaskClient, token: str | None
) -> None:
    lock_project(store, "app", pr=9)
    form = {**UNLOCK, **({"csrf_token": token} if token else {})}

    answer = operator.post("/locks/unlock", data=form, headers={"Accept": "text/html"})

    assert answer.status_code == 403
    assert "CSRF" in answer.get_data(as_text=True)
    assert len(store.locks.list()) == 1


def test_a_viewer_is_refused_the_unlock_even_with_a_valid_token(
    store: Store, viewer: FlaskClient
) -> None:
    lock_project(store, "app", pr=9)

    answer = viewer.post(
        "/locks/unlock",
        data={**UNLOCK, "csrf_token": csrf_of(viewer)},
        headers={"Accept": "text/html"},
    )

    assert answer.status_code == 403
    assert "operator" in answer.get_data(as_text=True)
    assert len(store.locks.list()) == 1


def test_a_stranger_is_sent_to_sign_in_and_unlocks_nothing(app: Flask, store: Store) -> None:
    lock_project(store, "app", pr=9)
    client = app.test_client()

    page = client.get("/locks", headers={"Accept": "text/html"})
    post = client.post("/locks/unlock", data=UNLOCK)

    assert page.status_code == 302
    assert page.headers["Location"].startswith("/login")
    assert post.status_code == 401
    assert len(store.locks.list()) == 1


def test_an_unlock_form_with_a_missing_field_is_a_400(store: Store, operator: FlaskClient) -> None:
    lock_project(store, "app", pr=9)

    answer = operator.post("/locks/unlock", data={"repo": REPO, "csrf_token": csrf_of(operator)})

    assert answer.status_code == 400
    assert "dir" in answer.get_data(as_text=True)
    assert len(store.locks.list()) == 1


# --- what the pages show -----------------------------------------------------------------------


def test_the_overview_shows_each_projects_state(
    store: Store, data_dir: Path, viewer: FlaskClient
) -> None:
    record_drift(store, "app", DriftStatus.DRIFT, drifted=("files_file.f",))
    record_drift(store, "net", DriftStatus.IN_SYNC)
    lock_project(store, "net", pr=3)

    page = html(viewer, "/")

    assert 'data-project="app" data-state="drifted"' in page
    assert 'data-project="net" data-state="locked"' in page
    assert "locked by #3" in page
    assert 'data-count="drifted">drifted: 1' in page


def test_pull_request_text_is_escaped_on_every_page(
    store: Store, data_dir: Path, viewer: FlaskClient
) -> None:
    run_id = record_run(
        store, data_dir, project=SCRIPT, author=SCRIPT, error=SCRIPT, status=RunStatus.FAILED,
        command="apply", log=f"{SCRIPT}\n",
    )  # fmt: skip
    record_plan(store, run_id, [ResourceChange(SCRIPT, ("create",))])

    for url in ("/", "/runs", f"/runs/{run_id}", "/audit", "/locks"):
        page = html(viewer, url)
        assert SCRIPT not in page, url
    assert "&lt;script&gt;" in html(viewer, f"/runs/{run_id}")


def test_a_run_page_shows_its_plan_and_where_its_log_streams(
    store: Store, data_dir: Path, viewer: FlaskClient
) -> None:
    run_id = record_run(store, data_dir, log="Plan: 1 to add\n")
    record_plan(store, run_id, [ResourceChange("terraform_data.x", ("create",))])
    quiet = record_run(store, data_dir)

    page = html(viewer, f"/runs/{run_id}")

    assert "terraform_data.x" in page
    assert "+1 ~0 -0" in page
    assert f'data-stream="/api/v1/runs/{run_id}/log/stream"' in page
    assert '<script src="/static/log.js">' in page
    assert "no log" in html(viewer, f"/runs/{quiet}")
    assert viewer.get("/runs/999999").status_code == 404


def test_the_runs_page_filters_pages_and_explains_a_bad_filter(
    store: Store, data_dir: Path, viewer: FlaskClient
) -> None:
    ids = [record_run(store, data_dir, author="alice") for _ in range(3)]
    other = record_run(store, data_dir, author="bob")

    first = html(viewer, "/runs?author=alice&limit=2")
    assert f'data-run="{ids[2]}"' in first and f'data-run="{ids[1]}"' in first
    assert f'data-run="{other}"' not in first
    assert f"cursor={ids[1]}" in first
    second = html(viewer, f"/runs?author=alice&limit=2&cursor={ids[1]}")
    assert f'data-run="{ids[0]}"' in second
    assert 'id="next-page"' not in second

    bad = html(viewer, "/runs?status=exploded")
    assert 'id="problem"' in bad
    assert "status:" in bad


def test_a_project_page_charts_its_drift_history(store: Store, viewer: FlaskClient) -> None:
    record_drift(store, "app", DriftStatus.IN_SYNC)
    record_drift(store, "app", DriftStatus.DRIFT, drifted=("a.b", "c.d"))

    page = html(viewer, f"/projects/view?repo={REPO}&dir=app&workspace=default")

    assert page.count("<rect ") == 2
    assert "2 drifted" in page
    missing = viewer.get(f"/projects/view?repo={REPO}&dir=nope")
    assert missing.status_code == 404
    assert viewer.get("/projects/view?dir=app").status_code == 400


def test_the_audit_page_lists_applies_and_links_the_filtered_csv(
    store: Store, data_dir: Path, viewer: FlaskClient
) -> None:
    applied = record_run(store, data_dir, command="apply")
    planned = record_run(store, data_dir, command="plan")

    page = html(viewer, "/audit?project=app")

    assert f'data-run="{applied}"' in page
    assert f'data-run="{planned}"' not in page
    assert 'href="/api/v1/audit.csv?project=app"' in page


def test_pages_allow_only_the_dashboards_own_scripts(viewer: FlaskClient) -> None:
    policy = viewer.get("/").headers["Content-Security-Policy"]

    assert "script-src 'self'" in policy
    assert "unsafe-eval" not in policy
    assert "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]


# --- the chart ---------------------------------------------------------------------------------


def test_the_chart_places_scans_over_time_and_scales_by_drift(store: Store) -> None:
    first = record_drift(store, "app", DriftStatus.IN_SYNC)
    second = record_drift(store, "app", DriftStatus.DRIFT, drifted=("a", "b", "c"))

    chart = drift_chart([second, first])  # newest first, as the store returns them

    assert chart is not None
    assert [mark.x for mark in chart.marks] == sorted(mark.x for mark in chart.marks)
    assert chart.marks[1].height > chart.marks[0].height
    assert chart.most == 3
    assert drift_chart([]) is None
    assert SyncState.DRIFTED.label == "drifted"


def test_a_missing_page_is_a_page_for_people_and_json_for_scripts(viewer: FlaskClient) -> None:
    page = viewer.get("/runs/999999", headers={"Accept": "text/html,*/*;q=0.8"})
    script = viewer.get("/runs/999999", headers={"Accept": "*/*"})

    assert page.status_code == script.status_code == 404
    assert page.mimetype == "text/html"
    assert "no run 999999" in page.get_data(as_text=True)
    assert script.json == {"error": "no run 999999"}


# --- the project page's buttons ------------------------------------------------------------------

PROJECT_FORM = {"repo": REPO, "project": "app", "dir": "app", "workspace": "default"}


def test_an_operator_queues_a_reconcile_from_the_project_page(
    store: Store, data_dir: Path, idp: FakeOIDC
) -> None:
    submitted: list[object] = []

    def submit(event: object, *, delivery: object = None) -> int:
        submitted.append(event)
        return 7

    app = dashboard_app(
        store, data_dir, submit=submit, repos=[{"url": f"https://{REPO}.git", "poll_interval": 60}],
        **idp.settings(public_url="http://localhost"), dashboard_operators=(OPERATOR,),
    )  # fmt: skip
    record_drift(store, "app", DriftStatus.IN_SYNC)
    client = app.test_client()
    sign_in(client, idp, OPERATOR)

    answer = client.post("/reconcile", data={**PROJECT_FORM, "csrf_token": csrf_of(client)})

    assert answer.status_code == 303
    page = html(client, answer.headers["Location"])
    assert f"reconcile of https://{REPO}.git queued (job 7)" in page
    assert [job.repo for job in submitted] == [f"https://{REPO}.git"]  # type: ignore[attr-defined]


def test_the_project_buttons_say_why_nothing_started_and_refuse_viewers(
    store: Store, operator: FlaskClient, viewer: FlaskClient
) -> None:
    record_drift(store, "app", DriftStatus.IN_SYNC)
    form = {**PROJECT_FORM, "csrf_token": csrf_of(operator)}

    scan = operator.post("/drift/scan", data=form)
    reconcile = operator.post("/reconcile", data=form)
    refused = viewer.post(
        "/drift/scan",
        data={**PROJECT_FORM, "csrf_token": csrf_of(viewer)},
        headers={"Accept": "text/html"},
    )

    assert "no drift scan: drift scans are not available" in html(
        operator, scan.headers["Location"]
    )
    assert "no reconcile:" in html(operator, reconcile.headers["Location"])
    assert refused.status_code == 403
