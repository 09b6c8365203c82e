"""`/api/openapi.json`: generated from the route table, and the API keeps to it.

The document is checked against the app's own URL map (no route missing, none
invented), then schemathesis drives every operation from the document with generated
parameters and bodies: a bounded, derandomized run in which every answer must match
its documented status, content type and schema, and no input may cause a 500.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings

from runner.results.drift import DriftStatus
from runner.results.model import ResourceChange
from runner.store.runs import RunStatus
from runner.store.store import Store
from runner.web.api_v1 import OPENAPI_PATH, ROUTES
from runner.web.app import create_app
from runner.web.openapi import ApiRoute
from runner.wiring import build_web_services
from tests.support.auth import TEST_API_TOKEN, bearer
from tests.support.dashboard import (
    dashboard_settings,
    lock_project,
    record_drift,
    record_plan,
    record_run,
)

EXAMPLES_PER_OPERATION = 12


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Flask, Store]]:
    """The app as `serve` builds it (real drift scans on request, over a real SQLite
    store), holding a bit of everything the API shows."""
    root = tmp_path_factory.mktemp("openapi")
    data_dir = root / "data"
    settings = dashboard_settings(data_dir, database_url=f"sqlite:///{root / 'runner.db'}")
    services = build_web_services(settings)
    store = services.store
    record_drift(store, "app", DriftStatus.DRIFT, drifted=("files_file.f",))
    record_drift(store, "network", DriftStatus.IN_SYNC)
    run_id = record_run(store, data_dir, project="app", log="Plan: 1 to add\n")
    record_plan(store, run_id, [ResourceChange("terraform_data.x", ("create",))])
    record_run(store, data_dir, project="app", command="apply", status=RunStatus.FAILED)
    lock_project(store, "network")
    try:
        yield create_app(settings, services), store
    finally:
        store.close()


@pytest.fixture(scope="module")
def api_schema(seeded: tuple[Flask, Store]) -> schemathesis.BaseSchema:
    app, _ = seeded
    return schemathesis.openapi.from_wsgi(OPENAPI_PATH, app, headers=bearer(TEST_API_TOKEN))


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.name)
def test_every_operation_keeps_to_the_document(
    api_schema: schemathesis.BaseSchema, route: ApiRoute
) -> None:
    operation = api_schema[route.path][route.method]

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def keeps_to_it(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=bearer(TEST_API_TOKEN))

    keeps_to_it()


def test_the_document_is_openapi_3_1_generated_from_the_route_table(
    seeded: tuple[Flask, Store],
) -> None:
    app, _ = seeded
    document = app.test_client().get(OPENAPI_PATH, headers=bearer(TEST_API_TOKEN)).json

    assert document["openapi"] == "3.1.0"
    documented = {
        (path, method.upper()) for path, ops in document["paths"].items() for method in ops
    }
    assert documented == {(route.path, route.method) for route in ROUTES}
    schemas = document["components"]["schemas"]
    assert set(schemas["SyncState"]["enum"]) == {
        "in_sync", "drifted", "pending", "error", "needs_attention", "locked",
    }  # fmt: skip
    assert "import" in schemas["SummaryOut"]["properties"]


def test_every_v1_route_the_app_serves_is_documented(seeded: tuple[Flask, Store]) -> None:
    app, _ = seeded
    served = {
        (rule.rule.replace("<int:", "{").replace(">", "}"), method)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1/")
        for method in rule.methods or ()
        if method in ("GET", "POST")
    }

    assert served == {(route.path, route.method) for route in ROUTES}


def test_operator_actions_say_so_in_the_document(seeded: tuple[Flask, Store]) -> None:
    app, _ = seeded
    paths = app.test_client().get(OPENAPI_PATH, headers=bearer(TEST_API_TOKEN)).json["paths"]

    unlock = paths["/api/v1/locks/unlock"]["post"]
    assert "operator" in unlock["description"]
    assert {"401", "403", "415"} <= set(unlock["responses"])


def test_the_document_needs_sign_in_like_everything_else(seeded: tuple[Flask, Store]) -> None:
    app, _ = seeded
    assert app.test_client().get(OPENAPI_PATH).status_code == 401


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.name)
def test_every_operation_refuses_a_request_without_credentials(
    seeded: tuple[Flask, Store], route: ApiRoute
) -> None:
    app, store = seeded
    locks_before = store.locks.list()
    path = route.path.replace("{run_id}", "1")
    client = app.test_client()

    answer = client.open(path, method=route.method, json={} if route.body else None)
    wrong = client.open(
        path, method=route.method, json={} if route.body else None, headers=bearer("wrong")
    )

    assert (answer.status_code, wrong.status_code) == (401, 401)
    assert answer.json == {"error": answer.json["error"]}
    assert store.locks.list() == locks_before
