"""Database fixtures: a fresh SQLite file or a fresh PostgreSQL schema per test.

PostgreSQL comes from GITOPS_TEST_POSTGRES_URL (default: the local server at
postgresql://postgres@127.0.0.1:5432/test, used only if it answers). Each test session
(each xdist worker) creates a uniquely named database there and drops it at the end;
each test gets an empty schema in it (search_path set in the URL), so tests and workers
never see each other's rows. Without a server, PostgreSQL tests are skipped,
except on CI (CI=true), where a missing server is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import make_url

from runner.store import Store, migrate

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _libpq_url(url: str) -> str:
    """The same URL without a SQLAlchemy driver suffix, for psycopg.connect."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _unreachable(url: str) -> str | None:
    try:
        with psycopg.connect(_libpq_url(url), connect_timeout=3):
            return None
    except psycopg.Error as error:
        return str(error).strip() or type(error).__name__


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """URL of a reachable PostgreSQL server's maintenance database (skip/fail if none)."""
    configured = os.environ.get("GITOPS_TEST_POSTGRES_URL")
    url = configured or DEFAULT_POSTGRES_URL
    problem = _unreachable(url)
    if problem is None:
        return url
    message = f"PostgreSQL not reachable at {make_url(url)!r}: {problem}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true requires it; set GITOPS_TEST_POSTGRES_URL)")
    pytest.skip(f"{message}; set GITOPS_TEST_POSTGRES_URL to run PostgreSQL tests")


@pytest.fixture(scope="session")
def postgres_database_url(postgres_server_url: str) -> Iterator[str]:
    """A database of our own for this test session (per xdist worker), dropped at the end."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"gitops_test_{worker}_{uuid.uuid4().hex[:12]}"
    admin = _libpq_url(postgres_server_url)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            # FORCE: a failed test may have left connections open.
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def postgres_url(postgres_database_url: str) -> Iterator[str]:
    """An empty schema of its own for this test, as a URL whose search_path points at it.

    A schema is much cheaper to create than a database, and just as isolated for the
    store, which only ever uses the current schema.
    """
    schema = f"t_{uuid.uuid4().hex[:16]}"
    database = _libpq_url(postgres_database_url)
    with psycopg.connect(database, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        url = make_url(postgres_database_url).update_query_dict(
            {"options": f"-csearch_path={schema}"}
        )
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(database, autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    """A SQLite database file in this test's temporary directory (created on first use)."""
    return f"sqlite:///{tmp_path}/gitops-runner.db"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Runs the test once on SQLite and once on PostgreSQL; the database is empty."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def migrated_url(db_url: str) -> str:
    """`db_url` with the schema at head."""
    migrate(db_url)
    return db_url


@pytest.fixture
def store(migrated_url: str) -> Iterator[Store]:
    """An open Store on a migrated, empty database (both backends)."""
    opened = Store.open(migrated_url, upgrade=False)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(autouse=True)
def _host_settings_do_not_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    """`GITOPS_*` variables win over values a test passes to Settings: the host's must
    not leak in (the test database URLs, `GITOPS_TEST_*`, are kept)."""
    for name in list(os.environ):
        runner_setting = name.startswith("GITOPS_") and not name.startswith("GITOPS_TEST_")
        if runner_setting or name in ("WEB_CONCURRENCY", "GUNICORN_CMD_ARGS"):
            monkeypatch.delenv(name)
