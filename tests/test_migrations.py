"""Migrations as a deployment step (issue 16, part 3).

`gitops-runner db upgrade` brings an empty database, or one at the previous revision,
to the package's head on SQLite and PostgreSQL without losing rows; `serve`, `worker`
and the local commands migrate at start only where GITOPS_AUTO_MIGRATE allows it (by
default: SQLite) and otherwise refuse with a message naming the command. Every test
runs the real CLI in a subprocess against a real database; revisions are read from the
shipped script directory, never hard-coded, so a new migration needs no test edit.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from runner.store.db import (
    SchemaTemplate,
    alembic_config,
    create_from_schema_template,
    current_revision,
    head_revision,
    make_engine,
    migrate,
    schema_state,
)
from runner.store.runs import Trigger
from runner.store.store import Store
from tests.support.cli import CLI, cli_env, run_cli

EXIT_USAGE = 2
EXIT_PENDING = 3
UPGRADE_HINT = "gitops-runner db upgrade"


def previous_revision() -> str:
    """The revision before head, from the migrations the package ships."""
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_revision(script.get_current_head())
    assert head is not None and isinstance(head.down_revision, str)
    return head.down_revision


def db_cli(*args: str, url: str, data_dir: Path, **env: str):
    return run_cli(*args, data_dir=data_dir, GITOPS_DATABASE_URL=url, **env)


def add_a_run(url: str) -> int:
    """A row written at whatever revision the database is at (columns since 0001)."""
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO runs (repo, project, dir, workspace, command, trigger, status,"
                    " started_at) VALUES ('github.com/acme/infra', 'app', 'infra/app',"
                    " 'default', 'plan', 'cli', 'success', CURRENT_TIMESTAMP)"
                )
            )
            return int(connection.execute(text("SELECT max(id) FROM runs")).scalar_one())
    finally:
        engine.dispose()


# ---- db upgrade / db current ----------------------------------------------------------------


def test_upgrade_builds_an_empty_database_to_head(db_url: str, tmp_path: Path) -> None:
    pending = db_cli("db", "current", url=db_url, data_dir=tmp_path)
    assert pending.returncode == EXIT_PENDING, pending.stderr
    assert UPGRADE_HINT in pending.stdout

    done = db_cli("db", "upgrade", url=db_url, data_dir=tmp_path)

    assert done.returncode == 0, done.stderr
    assert f"upgraded from an empty database to {head_revision()}" in done.stdout
    assert current_revision(db_url) == head_revision()
    current = db_cli("db", "current", url=db_url, data_dir=tmp_path)
    assert current.returncode == 0 and "up to date" not in current.stdout
    assert f"current: {head_revision()}" in current.stdout


def test_upgrade_from_the_previous_revision_keeps_the_rows(db_url: str, tmp_path: Path) -> None:
    previous = previous_revision()
    migrate(db_url, previous)
    run_id = add_a_run(db_url)
    assert db_cli("db", "current", url=db_url, data_dir=tmp_path).returncode == EXIT_PENDING

    done = db_cli("db", "upgrade", url=db_url, data_dir=tmp_path)

    assert done.returncode == 0, done.stderr
    assert f"upgraded from {previous} to {head_revision()}" in done.stdout
    with Store.open(db_url, upgrade=False) as store:
        run = store.runs.get_run(run_id)
        assert run is not None and run.trigger is Trigger.CLI
        # The upgraded schema is usable for everything the runner writes.
        store.runs.finish(run_id, "success")


def test_upgrade_twice_is_a_no_op(db_url: str, tmp_path: Path) -> None:
    assert db_cli("db", "upgrade", url=db_url, data_dir=tmp_path).returncode == 0

    again = db_cli("db", "upgrade", url=db_url, data_dir=tmp_path)

    assert again.returncode == 0
    assert f"already up to date at revision {head_revision()}" in again.stdout


def test_two_upgrades_at_once_both_succeed(db_url: str, tmp_path: Path) -> None:
    """Two deploy steps started together (a retried hook Job, say): one migrates, the
    other waits for its lock and finds the schema current."""
    command = [*CLI, "db", "upgrade"]
    env = cli_env(tmp_path, GITOPS_DATABASE_URL=db_url)
    started = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]

    outcomes = [process.communicate(timeout=300) for process in started]

    assert [process.returncode for process in started] == [0, 0], outcomes
    assert current_revision(db_url) == head_revision()


def test_a_schema_from_a_newer_version_is_never_touched(db_url: str, tmp_path: Path) -> None:
    migrate(db_url)
    engine = make_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    engine.dispose()

    upgrade = db_cli("db", "upgrade", url=db_url, data_dir=tmp_path)
    runs = db_cli("runs", url=db_url, data_dir=tmp_path, GITOPS_AUTO_MIGRATE="true")

    for refused in (upgrade, runs):
        assert refused.returncode == EXIT_USAGE
        assert "9999_future" in refused.stderr and "newer version" in refused.stderr
    assert current_revision(db_url) == "9999_future"


# ---- who migrates at start ----------------------------------------------------------------


@pytest.mark.postgres
def test_serve_refuses_a_postgres_schema_behind_and_names_the_command(
    postgres_url: str, tmp_path: Path
) -> None:
    migrate(postgres_url, previous_revision())

    served = db_cli("serve", url=postgres_url, data_dir=tmp_path, GITOPS_GITHUB_WEBHOOK_SECRET="s")

    assert served.returncode == EXIT_USAGE
    assert f"needs {head_revision()}" in served.stderr
    assert UPGRADE_HINT in served.stderr
    assert current_revision(postgres_url) == previous_revision()  # nothing was changed


@pytest.mark.postgres
def test_worker_refuses_an_empty_postgres_database(postgres_url: str, tmp_path: Path) -> None:
    worker = db_cli("worker", "--burst", url=postgres_url, data_dir=tmp_path, GITOPS_QUEUE="rq")

    assert worker.returncode == EXIT_USAGE
    assert "empty (no tables yet)" in worker.stderr and UPGRADE_HINT in worker.stderr
    assert current_revision(postgres_url) is None


@pytest.mark.postgres
def test_local_commands_follow_the_same_rule_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    refused = db_cli("locks", url=postgres_url, data_dir=tmp_path)
    assert refused.returncode == EXIT_USAGE and UPGRADE_HINT in refused.stderr

    allowed = db_cli("locks", url=postgres_url, data_dir=tmp_path, GITOPS_AUTO_MIGRATE="true")

    assert allowed.returncode == 0, allowed.stderr
    assert schema_state(postgres_url).up_to_date


def test_sqlite_migrates_at_start_by_default(sqlite_url: str, tmp_path: Path) -> None:
    """The embedded quick start needs no extra step."""
    migrate(sqlite_url, previous_revision())

    listed = db_cli("runs", url=sqlite_url, data_dir=tmp_path)

    assert listed.returncode == 0, listed.stderr
    assert current_revision(sqlite_url) == head_revision()


def test_sqlite_with_auto_migrate_off_refuses(sqlite_url: str, tmp_path: Path) -> None:
    migrate(sqlite_url, previous_revision())

    listed = db_cli("runs", url=sqlite_url, data_dir=tmp_path, GITOPS_AUTO_MIGRATE="false")

    assert listed.returncode == EXIT_USAGE
    assert UPGRADE_HINT in listed.stderr
    assert current_revision(sqlite_url) == previous_revision()


def test_the_default_sqlite_store_of_the_quick_start_is_created(tmp_path: Path) -> None:
    """No database URL at all: the SQLite file under the data dir, migrated on first use."""
    listed = run_cli("runs", data_dir=tmp_path)

    assert listed.returncode == 0, listed.stderr
    assert current_revision(f"sqlite:///{tmp_path}/gitops-runner.db") == head_revision()


def test_the_start_up_check_knows_the_shipped_head() -> None:
    """SCHEMA_HEAD spares every command the Alembic import; a new migration must move it."""
    script = ScriptDirectory.from_config(alembic_config())

    assert head_revision() == script.get_current_head()


def test_a_current_schema_is_checked_without_alembic(sqlite_url: str) -> None:
    migrate(sqlite_url)
    probe = (
        "import sys\n"
        "from runner.store.db import prepare_schema\n"
        f"state = prepare_schema({sqlite_url!r}, auto_migrate=True)\n"
        "assert state.up_to_date, state\n"
        "print(sorted(name for name in sys.modules if name.startswith('alembic')))\n"
    )

    checked = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )

    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == "[]"


# ---- a new SQLite file from the schema template (the CLI server) -------------------------

# What a database file holds besides its tables: a template-made file must agree on it.
FILE_PRAGMAS = ("page_size", "encoding", "auto_vacuum", "user_version", "application_id")


@pytest.fixture(scope="module")
def template() -> SchemaTemplate:
    built = SchemaTemplate.build()
    assert built is not None, "this Python's sqlite3 cannot serialize a database"
    return built


def file_schema(path: Path) -> dict[str, object]:
    """Everything a database file says about its schema, read with plain sqlite3."""
    connection = sqlite3.connect(path)
    try:
        return {
            "sqlite_master": connection.execute(
                "SELECT * FROM sqlite_master ORDER BY type, name"
            ).fetchall(),
            "alembic_version": connection.execute("SELECT * FROM alembic_version").fetchall(),
            **{
                pragma: connection.execute(f"PRAGMA {pragma}").fetchall() for pragma in FILE_PRAGMAS
            },
            "integrity_check": connection.execute("PRAGMA integrity_check").fetchall(),
        }
    finally:
        connection.close()


def connection_settings(url: str) -> tuple[object, ...]:
    """What the store sets on each connection (make_engine), as a connection sees it."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return tuple(
                connection.exec_driver_sql(f"PRAGMA {pragma}").scalar()
                for pragma in ("journal_mode", "foreign_keys", "synchronous", "busy_timeout")
            )
    finally:
        engine.dispose()


def test_a_file_made_from_the_template_is_the_migrated_schema(
    template: SchemaTemplate, tmp_path: Path
) -> None:
    migrated, made = tmp_path / "migrated.db", tmp_path / "made" / "gitops-runner.db"
    migrate(f"sqlite:///{migrated}")

    assert template.create(f"sqlite:///{made}")

    assert file_schema(made) == file_schema(migrated)
    assert file_schema(made)["alembic_version"] == [(head_revision(),)]
    assert connection_settings(f"sqlite:///{made}") == connection_settings(f"sqlite:///{migrated}")
    assert connection_settings(f"sqlite:///{made}")[0] == "wal"
    with Store.open(f"sqlite:///{made}", upgrade=False) as store:
        assert schema_state(store.engine).up_to_date
        run_id = store.runs.start(
            repo="github.com/acme/infra",
            project="app",
            dir="infra/app",
            workspace="default",
            command="plan",
            trigger=Trigger.CLI,
        )
        store.runs.finish(run_id, "success")
        assert store.runs.get_run(run_id) is not None


def test_the_template_never_replaces_a_database_that_is_there(
    template: SchemaTemplate, sqlite_url: str, tmp_path: Path
) -> None:
    migrate(sqlite_url, previous_revision())
    run_id = add_a_run(sqlite_url)
    leftover_wal = tmp_path / "other" / "gitops-runner.db-wal"
    leftover_wal.parent.mkdir()
    leftover_wal.write_bytes(b"a WAL of a database that was removed")

    assert not template.create(sqlite_url)
    assert not template.create(f"sqlite:///{tmp_path}/other/gitops-runner.db")

    assert current_revision(sqlite_url) == previous_revision()  # left for migrate()
    engine = make_engine(sqlite_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT id FROM runs")).scalars().all() == [run_id]
    engine.dispose()
    assert sorted(path.name for path in leftover_wal.parent.iterdir()) == [leftover_wal.name]


def test_a_symlink_planted_at_the_database_name_is_not_written_through(
    template: SchemaTemplate, tmp_path: Path
) -> None:
    """Someone who can plant a link in the data dir must not get the runner to write a
    database over another file (or create one elsewhere)."""
    victim, missing = tmp_path / "victim.txt", tmp_path / "elsewhere.db"
    victim.write_text("precious")
    for target in (victim, missing):
        data_dir = tmp_path / f"data-{target.stem}"
        data_dir.mkdir()
        (data_dir / "gitops-runner.db").symlink_to(target)

        assert not template.create(f"sqlite:///{data_dir}/gitops-runner.db")

    assert victim.read_text() == "precious"
    assert not missing.exists()


def test_of_commands_racing_for_a_new_file_one_creates_it(
    template: SchemaTemplate, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/gitops-runner.db"
    start = threading.Barrier(8)

    def race(_: int) -> bool:
        start.wait()
        return template.create(url)

    with ThreadPoolExecutor(max_workers=8) as pool:
        created = list(pool.map(race, range(8)))

    assert created.count(True) == 1
    assert schema_state(url).up_to_date
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gitops-runner.db"]


def test_a_cold_command_migrates_its_new_file_as_before(tmp_path: Path) -> None:
    """Only the CLI server has a template: a command run in its own process migrates
    (the migration's lock file beside the database shows it)."""
    assert not create_from_schema_template(f"sqlite:///{tmp_path}/x/gitops-runner.db")

    listed = run_cli("runs", data_dir=tmp_path / "data")

    assert listed.returncode == 0, listed.stderr
    assert (tmp_path / "data" / "gitops-runner.db.migrate.lock").exists()
    assert current_revision(f"sqlite:///{tmp_path}/data/gitops-runner.db") == head_revision()
