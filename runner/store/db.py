"""Engine, sessions and schema migration: the plumbing every repository in the store uses.

Two backends are supported. SQLite (the default, one file under the data dir) for a
single node; PostgreSQL (psycopg 3) when several processes or hosts share the state.
Repositories never see the difference except where atomicity needs dialect help
(`SELECT … FOR UPDATE SKIP LOCKED` is simply not rendered on SQLite, where a write
transaction already holds the database's single write lock).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
import uuid
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock
from sqlalchemy import Connection, Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from runner.settings import SettingsError

if TYPE_CHECKING:  # Alembic is imported only to migrate, never for the start-up check
    from alembic.config import Config
    from alembic.script import ScriptDirectory

DATABASE_FILENAME = "gitops-runner.db"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# For the alembic CLI only (writing new revisions); the runner configures Alembic in code.
ALEMBIC_INI = Path(__file__).resolve().parent / "alembic.ini"
# The newest migration in MIGRATIONS_DIR (tests/test_migrations.py keeps it equal to
# Alembic's head). Every command checks the schema at start-up; with the head known and
# the revision read by one query, a current schema costs no Alembic import (~0.1 s).
SCHEMA_HEAD = "0007"
_VERSION_TABLE = "alembic_version"

# SQLite waits this long for another writer before failing with "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Several processes may start at once and all call migrate(); they queue for this long.
MIGRATION_LOCK_TIMEOUT_S = 300.0
# Execution option marking the engine used for write transactions (see _begin_sqlite).
_WRITE_OPTION = "gitops_write"
# Advisory lock keys are bigint and scoped to one database; a fixed hash keeps ours
# apart from other applications' keys.
_MIGRATION_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"gitops-runner:migrate").digest()[:8], "big", signed=True
)
# What SQLite itself creates a database file with (SQLITE_DEFAULT_FILE_PERMISSIONS),
# before the umask.
_SQLITE_FILE_MODE = 0o644

log = logging.getLogger(__name__)


def default_database_url(data_dir: Path) -> str:
    """The URL used when none is configured: one SQLite file under the data dir."""
    return f"sqlite:///{Path(data_dir).expanduser() / DATABASE_FILENAME}"


def normalize_url(url: str | URL) -> URL:
    """Route plain `postgresql://` (and `postgres://`) URLs to psycopg 3.

    People paste URLs from their cloud console; SQLAlchemy would pick psycopg2 for
    those, which is not installed.
    """
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str | URL) -> Engine:
    """Create an engine configured for concurrent use by threads and processes."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = _make_sqlite_engine(parsed)
    else:
        # pre_ping: a PostgreSQL restart must not surface as errors on the next request.
        engine = create_engine(parsed, pool_pre_ping=True)
    _forget_connections_after_fork(engine)
    return engine


def _forget_connections_after_fork(engine: Engine) -> None:
    # Forking workers (RQ, gunicorn with preload) inherit the pool; a connection used
    # by two processes corrupts both sides. The child drops the inherited ones without
    # closing them (they still belong to the parent) and opens its own.
    reference = weakref.ref(engine)

    def reset_in_child() -> None:
        alive = reference()
        if alive is not None:
            alive.dispose(close=False)

    os.register_at_fork(after_in_child=reset_in_child)


def _make_sqlite_engine(url: URL) -> Engine:
    in_memory = url.database in (None, "", ":memory:")
    if not in_memory:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        # An in-memory database exists per connection: share one so it stays one database.
        poolclass=StaticPool if in_memory else None,
    )
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_sqlite)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # Take BEGIN away from the sqlite3 module: it would not emit one before SELECTs,
    # and it could not emit BEGIN IMMEDIATE for write transactions (see _begin_sqlite).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL itself needs the lock another process may hold.
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _begin_sqlite(conn: Any) -> None:
    # A deferred transaction that reads and then writes fails at once with SQLITE_BUSY
    # when another connection wrote in between (the busy timeout does not apply to a lock
    # upgrade). Write transactions therefore take the write lock up front; reads stay
    # deferred so they never wait for writers (WAL).
    immediate = conn.get_execution_options().get(_WRITE_OPTION, False)
    # Straight to the driver: SQLAlchemy's execution path (a context, events, a result)
    # cost more CPU than the BEGIN itself, on every transaction (issue 10, profiled).
    conn.connection.driver_connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """An engine plus the two kinds of session the repositories use: read and write."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        write_engine = engine.execution_options(**{_WRITE_OPTION: True})
        self._write_engine = write_engine
        self._read_sessions = sessionmaker(bind=engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(bind=write_engine, expire_on_commit=False)
        self._writer = _process_writer_lock(engine)

    @classmethod
    def from_url(cls, url: str | URL) -> Database:
        return cls(make_engine(url))

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`: the few places that need dialect-specific SQL ask this."""
        return self.engine.dialect.name

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for queries; nothing it does is committed."""
        with self._read_sessions() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session in one transaction, committed on success and rolled back on error.

        On SQLite the transaction holds the database write lock from its first
        statement, so a read-then-write inside it is atomic across processes. Threads
        of this process first queue on a lock of this `Database` (see
        `_process_writer_lock`); other processes still meet at SQLite's busy timeout.
        """
        with self._writer, self._write_sessions() as session, session.begin():
            yield session

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """`write()` without the ORM: a Core connection in the same kind of transaction
        (the writer lock, BEGIN IMMEDIATE on SQLite; committed on success).

        For the hottest paths only (the webhook's one write, claiming and finishing
        jobs), which run prebuilt Core statements: a Session's set-up, unit of work and
        ORM execution path cost more CPU there than SQLite does (issue 10, profiled).
        """
        with self._writer, self._write_engine.begin() as connection:
            yield connection

    @contextmanager
    def read_connection(self) -> Iterator[Connection]:
        """`read()` without the ORM, for prebuilt Core statements on hot paths."""
        with self.engine.connect() as connection:
            yield connection

    def connect_now(self) -> None:
        """Open the pool's first connection now (a web worker's boot, before it takes
        requests) rather than on the clock of the first request that needs one."""
        with self.read_connection() as connection:
            connection.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        """Close pooled connections (at shutdown, or in a child process after fork)."""
        self.engine.dispose()


def _process_writer_lock(engine: Engine) -> AbstractContextManager[Any]:
    """What threads of this process hold around a write transaction.

    SQLite has one writer at a time, and a connection waiting for the write lock does
    not wait on the lock: its busy handler sleeps and retries, in steps growing to
    100 ms, so under contention a writer may sleep long after the lock was freed (the
    webhook benchmark saw a quarter of all request time there). A Python lock hands
    over at once; SQLite's busy timeout is then only met between processes. It gives up
    after the same busy timeout as SQLite, with the same error. Reentrant, so a nested
    write still fails at SQLite's busy timeout as it always did instead of hanging.
    PostgreSQL writers do not exclude each other: no lock.
    """
    if engine.dialect.name != "sqlite":
        return nullcontext()
    return _WriterLock()


class _WriterLock:
    """A reentrant lock with SQLite's busy timeout, that a forked child gets back unlocked.

    A child forked while another thread held the lock would inherit it held, by a
    thread that does not exist in the child, and never get it. Like the pooled
    connections (`_forget_connections_after_fork`), the child starts afresh.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        reference = weakref.ref(self)

        def reset_in_child() -> None:
            alive = reference()
            if alive is not None:
                alive._lock = threading.RLock()

        os.register_at_fork(after_in_child=reset_in_child)

    def __enter__(self) -> bool:
        if not self._lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
            # What SQLite itself raises once its busy timeout has run out.
            raise OperationalError(
                "BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked")
            )
        return True

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic config pointing at the migrations shipped inside the package.

    Used by `migrate()` and by anyone running Alembic commands programmatically
    (e.g. `command.revision(alembic_config(url), autogenerate=True, message=...)`);
    no alembic.ini is needed. `runner/store/alembic.ini` exists for the alembic CLI.
    """
    from alembic.config import Config

    config = Config()
    # configparser treats "%" as interpolation; paths and passwords may contain it.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if url is not None:
        rendered = normalize_url(url).render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def migrate(target: str | URL | Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (default: the newest).

    Every process calls this at start-up, possibly at the same time, so runs are
    serialised: a transaction-scoped advisory lock on PostgreSQL, a lock file next to
    the database on SQLite. Whoever comes second finds the schema current: a no-op.
    An Engine may be passed instead of a URL (an in-memory SQLite database only
    exists inside its own engine).
    """
    engine = target if isinstance(target, Engine) else make_engine(target)
    try:
        if engine.dialect.name == "postgresql":
            _migrate_postgresql(engine, revision)
        else:
            _migrate_sqlite(engine, revision)
    finally:
        if engine is not target:
            engine.dispose()


def _migrate_postgresql(engine: Engine, revision: str) -> None:
    # PostgreSQL DDL is transactional: migrations and lock end together at commit.
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        _upgrade(connection, revision)


def _migrate_sqlite(engine: Engine, revision: str) -> None:
    # The write option makes this a BEGIN IMMEDIATE transaction: reading the current
    # revision and then writing cannot be interleaved with another migrating process.
    writer = engine.execution_options(**{_WRITE_OPTION: True})
    database = engine.url.database
    if database in (None, "", ":memory:"):
        with writer.begin() as connection:
            _upgrade(connection, revision)
        return
    # The file lock queues start-ups for longer than SQLite's busy timeout would.
    lock = filelock.FileLock(f"{database}.migrate.lock", timeout=MIGRATION_LOCK_TIMEOUT_S)
    with lock, writer.begin() as connection:
        _upgrade(connection, revision)


def _upgrade(connection: Any, revision: str) -> None:
    from alembic import command

    config = alembic_config()
    # env.py runs on this connection (inside our lock and transaction), not a new one.
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def current_revision(target: str | URL | Engine) -> str | None:
    """The schema revision a database is at (None before the first migration)."""
    engine = target if isinstance(target, Engine) else make_engine(target)
    try:
        with engine.connect() as connection:
            return _recorded_revision(connection)
    finally:
        if engine is not target:
            engine.dispose()


def _recorded_revision(connection: Connection) -> str | None:
    """The row Alembic keeps in its version table; Alembic itself only for the odd case
    of several rows (branches this package never ships)."""
    if not inspect(connection).has_table(_VERSION_TABLE):
        return None
    rows = connection.execute(text(f"SELECT version_num FROM {_VERSION_TABLE}")).all()
    if len(rows) <= 1:
        return rows[0][0] if rows else None
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    """The newest revision shipped with this version of the package."""
    return SCHEMA_HEAD


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema is, against what this version of the package ships."""

    current: str | None  # None: an empty database
    head: str | None

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    @property
    def known(self) -> bool:
        """False when the database was migrated by a newer gitops-runner than this one."""
        return self.current is None or _is_shipped(self.current)

    def describe(self) -> str:
        """One line for `gitops-runner db current` and the refusal to start."""
        at = f"revision {self.current}" if self.current else "empty (no tables yet)"
        if self.up_to_date:
            return f"the database schema is at {at}: up to date"
        if not self.known:
            return (
                f"the database schema is at revision {self.current}, which this version of "
                f"gitops-runner does not know (its newest is {self.head}): a newer version "
                "migrated it; run that version"
            )
        return f"the database schema is {at}; this version of gitops-runner needs {self.head}"


class SchemaOutOfDate(SettingsError):
    """A process that may not migrate found the schema behind (or ahead of) the package."""

    def __init__(self, state: SchemaState) -> None:
        hint = (
            ": run `gitops-runner db upgrade` first (or set GITOPS_AUTO_MIGRATE=true)"
            if state.known
            else ""
        )
        super().__init__(state.describe() + hint)
        self.state = state


def schema_state(target: str | URL | Engine) -> SchemaState:
    """The database's revision and the package's newest, read without changing anything."""
    return SchemaState(current=current_revision(target), head=head_revision())


def prepare_schema(target: str | URL | Engine, *, auto_migrate: bool) -> SchemaState:
    """What every process does at start-up: migrate, or check and refuse.

    With `auto_migrate` the schema is brought to head (safe in several processes at
    once, see `migrate`); a schema a newer version wrote is never touched. Without, an
    out-of-date schema raises `SchemaOutOfDate`, whose message names `gitops-runner db
    upgrade`: on PostgreSQL migrations are a deployment step, so a rolling upgrade never
    has old processes meet a new schema they were not written for, or a dozen replicas
    race to alter tables.
    """
    state = schema_state(target)
    if auto_migrate and not state.up_to_date and state.known:
        migrate(target)
        state = schema_state(target)
    if not state.up_to_date:
        raise SchemaOutOfDate(state)
    return state


@cache
def migrations() -> ScriptDirectory:
    """The migrations shipped in the package: read once per process (the CLI server
    reads them before its first command)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def _is_shipped(revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return migrations().get_revision(revision) is not None
    except CommandError:  # "Can't locate revision identified by ..."
        return False


# ---- A new SQLite file from the migrated schema (the CLI server) ----------------------------
#
# A served command in a new data dir would spend ~50 ms of its critical path migrating a
# new database (Alembic runs seven revisions of DDL, ~40 statements). The CLI server runs
# the very same migrations once, into an in-memory database, and keeps its bytes; such a
# command writes them to its new file instead. The migrations stay the only source of the
# schema: the bytes are what they build (tests/test_migrations.py compares a file made
# this way with a migrated one). A cold command has no template and migrates as before.


class SchemaTemplate:
    """The bytes of a SQLite database migrated to head, to create new files from."""

    def __init__(self, image: bytes) -> None:
        self._image = image

    @classmethod
    def build(cls) -> SchemaTemplate | None:
        """Migrate an in-memory database to head and keep its bytes; None where this
        Python's SQLite cannot serialize a database."""
        if not hasattr(sqlite3.Connection, "serialize"):
            return None
        engine = make_engine("sqlite://")
        try:
            migrate(engine)
            with engine.connect() as connection:
                if _recorded_revision(connection) != SCHEMA_HEAD:
                    return None
                return cls(connection.connection.driver_connection.serialize())
        finally:
            engine.dispose()

    def create(self, url: str | URL) -> bool:
        """Create the SQLite file of `url` from the template when nothing of that
        database exists yet; True when it did, False when the caller must migrate.

        The file appears complete or not at all, and only where nothing is: the bytes go
        to a new unguessable name first (flushed to disk, so a crash cannot leave a
        half-written database under the real name), which is then hard-linked to the
        real name. A link never replaces anything, so of two commands racing the first
        wins and the second opens its file; a symbolic link planted at the name is not
        followed. Anything unusual (not a plain file URL, a leftover `-wal`, a
        filesystem without hard links) returns False. Per-connection settings (WAL, busy
        timeout, foreign keys) are not in the bytes: `make_engine` sets them on every
        connection, this file's first one included.
        """
        path = _template_target(url)
        if path is None:
            return False
        staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.new")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_durably(staging, self._image)
            os.link(staging, path)
        except OSError:  # FileExistsError: another command created it first
            return False
        finally:
            with contextlib.suppress(OSError):
                staging.unlink(missing_ok=True)
        log.info("created %s from the migrated schema (revision %s)", path, SCHEMA_HEAD)
        return True


# The CLI server's template (`build_schema_template` at warm-up), inherited by every
# command it forks; None in any other process.
_schema_template: SchemaTemplate | None = None


def build_schema_template() -> None:
    """Keep a `SchemaTemplate` for the commands this process will fork (the CLI server)."""
    global _schema_template
    _schema_template = SchemaTemplate.build()


def create_from_schema_template(url: str | URL) -> bool:
    """`SchemaTemplate.create` with this process's template; False without one."""
    template = _schema_template
    return template is not None and template.create(url)


def _template_target(url: str | URL) -> Path | None:
    """The file a template may create for `url`: a plain SQLite file path none of whose
    database files exist yet (a stale `-wal` would be replayed into the new file)."""
    parsed = normalize_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or parsed.query or not database:
        return None
    if database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database)
    if any(os.path.lexists(f"{path}{suffix}") for suffix in ("", "-wal", "-journal")):
        return None
    return path


def _write_durably(path: Path, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, _SQLITE_FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
