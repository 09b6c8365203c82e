"""`GET/POST /api/drift`, the dashboard's drift table, and drift in `build_web_services`.

Real scans: a repository of files-provider projects (tests/support/drift_world.py),
planned by real Terraform, results in a real SQLite store, the API through Flask's
test client. A scan that must still be running while the test looks (to show that
POST never waits for it) is held at a gate the test opens; nothing here asserts on
durations.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from runner.drift.service import DriftService
from runner.drift.triggers import DRIFT_SCAN_KIND, DriftScans
from runner.notify.base import NullNotifier
from runner.results.drift import DriftReport
from runner.settings import Settings
from runner.store.store import Store
from runner.web.app import create_app
from runner.web.context import WebServices
from runner.wiring import build_drift, build_services, build_web_services
from tests.support.auth import authorize, issue_token
from tests.support.drift_world import World, make_world
from tests.support.git_repo import GitRepo

SECRET = "drift-api-secret"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    w = make_world(
        tmp_path,
        monkeypatch,
        {"alpha": "a", "beta": "b"},
        repos=({"url": str(tmp_path / "repo")},),
        github_webhook_secret=SECRET,
    )
    yield w
    w.store.close()


@pytest.fixture
def light(tmp_path: Path) -> Iterator[World]:
    """A configured repository that is never planned: for requests refused before a scan."""
    repo = GitRepo.init(tmp_path / "repo")
    repo.write({"gitops-runner.yaml": "version: 1\nprojects:\n  - name: alpha\n    dir: alpha\n"})
    repo.commit("config")
    settings = Settings(
        data_dir=tmp_path / "data",
        repos=({"url": str(repo.path)},),  # type: ignore[arg-type]
        github_webhook_secret=SECRET,  # type: ignore[arg-type]
    )
    store = Store.open(settings.resolved_database_url)
    yield World(tmp_path, repo, tmp_path / "state", tmp_path / "world", settings, store)
    store.close()


class GatedService(DriftService):
    """A real DriftService whose scans wait until the test opens the gate."""

    def __init__(self, world: World) -> None:
        super().__init__(build_services(world.settings, world.store), notifier=NullNotifier())
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.abandoned = False

    def scan(self, *args: Any, **kwargs: Any) -> DriftReport:
        self.entered.set()
        if not self.gate.wait(300):
            raise TimeoutError("the test never opened the gate")
        if self.abandoned:
            raise RuntimeError("the test did not want this scan to run")
        return super().scan(*args, **kwargs)

    def abandon(self) -> None:
        """Let waiting scans end without planning anything."""
        self.abandoned = not self.gate.is_set()
        self.gate.set()


class Api:
    """A test client of the web app, with the requests these tests make."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    @classmethod
    def around(cls, world: World, scans: DriftScans | None) -> Api:
        """An app whose drift seams are `scans` (or none at all)."""
        services = WebServices(
            store=world.store,
            submit=lambda event: 1,
            drift_trigger=scans.submit if scans else None,
            drift_report=scans.latest if scans else None,
        )
        client = create_app(world.settings, services).test_client()
        return cls(authorize(client, issue_token(world.store, "operator")))

    def post(self, body: Any = None, **kwargs: Any) -> Any:
        kwargs.setdefault("headers", JSON)
        return self.client.post("/api/drift", json=body, **kwargs)

    def wait(self, scan_id: int, timeout: float = 300) -> dict[str, Any]:
        """Poll the scan's status until it ended (generous: real Terraform runs)."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.client.get(f"/api/drift/scans/{scan_id}")
            assert answer.status_code == 200, answer.get_data(as_text=True)
            status = answer.get_json()
            if status["status"] not in ("queued", "running"):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"scan {scan_id} still {status['status']}")
            time.sleep(0.05)


def gated_api(world: World, **options: Any) -> Iterator[tuple[Api, GatedService]]:
    service = GatedService(world)
    scans = DriftScans(service, **options)
    yield Api.around(world, scans), service
    service.abandon()
    scans.stop(timeout=300)


@pytest.fixture
def gated(world: World) -> Iterator[tuple[Api, GatedService]]:
    yield from gated_api(world)


@pytest.fixture
def gated_light(light: World) -> Iterator[tuple[Api, GatedService]]:
    yield from gated_api(light, max_running=1)


def by_project(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {result["project"]: result for result in body["results"]}


# ---- GET ------------------------------------------------------------------------------------


def test_get_lists_the_latest_result_of_every_project(world: World) -> None:
    service = world.service()
    service.scan(world.drift_repo())
    world.file("beta").write_text("edited by hand")
    service.scan(world.drift_repo())
    api = Api.around(world, DriftScans(service))

    body = api.client.get("/api/drift").get_json()

    assert body["counts"]["in_sync"] == 1 and body["counts"]["drift"] == 1
    results = by_project(body)
    assert results["alpha"]["status"] == "in_sync"
    beta = results["beta"]
    assert beta["status"] == "drift" and beta["commit"] == world.repo.head
    assert [(d["address"], d["changed_attributes"]) for d in beta["drifted"]] == [
        ("files_file.f", ["content"])
    ]
    assert beta["summary"]["drifted"] == 1 and beta["scanned_at"]
    # The configured URL, the stored key and unknown names filter as expected.
    key = world.drift_repo().key
    assert len(api.client.get(f"/api/drift?repo={world.repo.path}").get_json()["results"]) == 2
    assert len(api.client.get(f"/api/drift?repo={key}").get_json()["results"]) == 2
    assert api.client.get("/api/drift?repo=elsewhere/infra").get_json()["results"] == []


def test_without_drift_seams_get_reads_the_store_and_post_is_unavailable(world: World) -> None:
    world.service().scan(world.drift_repo())
    api = Api.around(world, None)

    assert set(by_project(api.client.get("/api/drift").get_json())) == {"alpha", "beta"}
    answer = api.post({})
    assert answer.status_code == 503 and "not available" in answer.get_json()["error"]


# ---- POST -----------------------------------------------------------------------------------


def test_post_answers_202_while_the_scan_runs_in_the_background(
    world: World, gated: tuple[Api, GatedService]
) -> None:
    api, service = gated
    world.file("alpha").write_text("edited by hand")

    answer = api.post({"project": "alpha"})

    assert answer.status_code == 202
    ticket = answer.get_json()
    assert ticket["status"] == "running" and ticket["started"] is True
    assert ticket["project"] == "alpha" and ticket["repo"] is None
    assert answer.headers["Location"] == ticket["url"] == f"/api/drift/scans/{ticket['id']}"
    # Answered while the scan is still held at the gate: the request never waited for it.
    assert service.entered.wait(60) and not service.gate.is_set()
    assert api.client.get(ticket["url"]).get_json()["status"] == "running"
    again = api.post({"project": "alpha"}).get_json()
    assert (again["id"], again["started"]) == (ticket["id"], False)

    service.gate.set()
    status = api.wait(ticket["id"])

    assert status["status"] == "done" and status["error"] is None
    assert status["finished_at"] >= status["started_at"]
    results = by_project(api.client.get("/api/drift").get_json())
    assert set(results) == {"alpha"} and results["alpha"]["status"] == "drift"
    scans = api.client.get("/api/drift").get_json()["scans"]
    assert [s["id"] for s in scans] == [ticket["id"]]


def test_post_without_a_body_scans_every_configured_repository(
    world: World, gated: tuple[Api, GatedService]
) -> None:
    api, service = gated
    service.gate.set()

    answer = api.client.post("/api/drift", headers=JSON)

    assert answer.status_code == 202
    assert api.wait(answer.get_json()["id"])["status"] == "done"
    assert set(by_project(api.client.get("/api/drift").get_json())) == {"alpha", "beta"}


def test_a_configured_repository_is_named_by_path_url_or_key(
    world: World, gated: tuple[Api, GatedService]
) -> None:
    api, service = gated
    service.gate.set()
    key = world.drift_repo().key

    by_path = api.post({"repo": str(world.repo.path), "project": "beta"}).get_json()
    assert by_path["repo"] == key
    assert api.wait(by_path["id"])["status"] == "done"
    by_key = api.post({"repo": key, "project": "beta"}).get_json()
    assert by_key["repo"] == key and by_key["id"] != by_path["id"]
    assert api.wait(by_key["id"])["status"] == "done"


def test_a_scan_of_an_unknown_project_fails_with_the_reason(
    light: World, gated_light: tuple[Api, GatedService]
) -> None:
    api, service = gated_light
    service.gate.set()

    ticket = api.post({"project": "gamma"}).get_json()

    status = api.wait(ticket["id"])
    assert status["status"] == "failed" and "no project named gamma" in status["error"]


REFUSED = [
    ('{"project": "alpha"}', {"Content-Type": "text/plain"}, 415, "application/json"),
    ("[1, 2]", JSON, 400, "JSON object"),
    ("{not json", JSON, 400, "JSON object"),
    ('{"projects": ["alpha"]}', JSON, 400, "unknown field(s) projects"),
    ('{"project": 3}', JSON, 400, "project must be a string"),
    ('{"project": "  "}', JSON, 400, "non-empty project name"),
    ('{"repo": "https://github.com/evil/repo"}', JSON, 400, "not a configured repository"),
    ('{"repo": "/etc"}', JSON, 400, "not a configured repository"),
]


def test_post_refuses_what_it_cannot_scan(
    light: World, gated_light: tuple[Api, GatedService]
) -> None:
    api, _ = gated_light
    for body, headers, status, says in REFUSED:
        answer = api.client.post("/api/drift", data=body, headers=headers)

        assert (answer.status_code, body) == (status, body)
        assert says in answer.get_json()["error"], body
    assert light.store.jobs.list(kind=DRIFT_SCAN_KIND) == []


def test_post_without_configured_repositories_is_refused(light: World) -> None:
    bare = replace(light, settings=light.settings.model_copy(update={"repos": ()}))

    answer = Api.around(bare, DriftScans(bare.service())).post({})

    assert answer.status_code == 400 and "no repositories" in answer.get_json()["error"]


def test_a_busy_process_asks_to_come_back_later(
    light: World, gated_light: tuple[Api, GatedService]
) -> None:
    api, service = gated_light
    first = api.post({"project": "alpha"})
    assert first.status_code == 202 and service.entered.wait(60)

    answer = api.post({"project": "beta"})

    assert answer.status_code == 429 and answer.headers["Retry-After"]
    assert [job.id for job in light.store.jobs.list(kind=DRIFT_SCAN_KIND)] == [
        first.get_json()["id"]
    ]


def test_a_stopped_process_starts_no_scan(light: World) -> None:
    scans = DriftScans(light.service())
    scans.stop()

    answer = Api.around(light, scans).post({})

    assert answer.status_code == 503
    assert [job.status.value for job in light.store.jobs.list(kind=DRIFT_SCAN_KIND)] == [
        "cancelled"
    ]


def test_unknown_scan_ids_are_404(light: World) -> None:
    api = Api.around(light, None)
    assert api.client.get("/api/drift/scans/12345").status_code == 404


# ---- dashboard and service wiring -----------------------------------------------------------


def test_dashboard_shows_the_latest_drift(world: World) -> None:
    api = Api.around(world, None)
    assert "No drift scan yet." in api.client.get("/").get_data(as_text=True)
    world.file("alpha").write_text("<b>edited</b>")
    world.service().scan(world.drift_repo())

    page = api.client.get("/").get_data(as_text=True)

    assert "<h2>Drift</h2>" in page
    assert '<td class="status bad">drift</td>' in page
    assert "files_file.f (content)" in page
    assert "<b>edited</b>" not in page


def test_web_services_scan_on_request_and_schedule_drift(world: World) -> None:
    web = build_web_services(world.settings)
    client = create_app(world.settings, web).test_client()
    authorize(client, issue_token(web.store, "operator"))
    api = Api(client)
    try:
        assert web.start_workers is not None and web.stop_workers is not None
        web.start_workers()
        answer = client.post("/api/drift", json={"project": "beta"}, headers=JSON)
        assert answer.status_code == 202, answer.get_json()
        status = api.wait(answer.get_json()["id"])
        assert status["status"] == "done", status
        assert by_project(client.get("/api/drift").get_json())["beta"]["status"] == "in_sync"
    finally:
        if web.stop_workers is not None:
            web.stop_workers()
        web.store.close()


def test_the_scheduler_is_built_only_when_there_is_something_to_schedule(light: World) -> None:
    services = build_services(light.settings, light.store)
    assert build_drift(light.settings, services).scheduler is not None
    bare = light.settings.model_copy(update={"repos": (), "drift_schedule": "0 * * * *"})
    assert build_drift(bare, build_services(bare, light.store)).scheduler is None
