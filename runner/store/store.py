"""`Store`: one object bundling the database and every repository of the store.

The server and CLI open it once at start-up and pass it down; nothing looks it up
globally. Each repository is also usable on its own with a `Database`.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from runner.store.comments import CommentStore
from runner.store.db import (
    Database,
    create_from_schema_template,
    make_engine,
    migrate,
    prepare_schema,
)
from runner.store.deliveries import DeliveryStore
from runner.store.jobs import JobStore
from runner.store.locks import LockService
from runner.store.policies import PolicyApprovalStore
from runner.store.runs import RunStore
from runner.store.tokens import TokenStore

if TYPE_CHECKING:
    from runner.settings import Settings


class Store(Database):
    """The database plus its repositories: `locks`, `runs`, `deliveries`, `jobs`, `comments`,
    `policy_approvals`."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.locks = LockService(self)
        self.runs = RunStore(self)
        self.deliveries = DeliveryStore(self)
        self.jobs = JobStore(self)
        self.comments = CommentStore(self)
        self.policy_approvals = PolicyApprovalStore(self)
        self.tokens = TokenStore(self)

    @classmethod
    def open(cls, url: str | URL, *, upgrade: bool = True) -> Store:
        """Connect to the store at `url`, bringing its schema up to date first.

        Safe to call from several processes at once (see `db.migrate`). Pass
        `upgrade=False` where migrations are run as a separate deployment step.
        """
        engine = make_engine(url)
        if upgrade:
            migrate(engine)
        return cls(engine)

    def close(self) -> None:
        self.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def prepare_store(settings: Settings) -> None:
    """Migrate the schema, or check it (GITOPS_AUTO_MIGRATE, see `db.prepare_schema`):
    an out-of-date schema refuses to start with a message naming `gitops-runner db
    upgrade`. `serve` does it once in the master, before its workers open the store."""
    prepare_schema(settings.resolved_database_url, auto_migrate=settings.migrates_at_start)


def open_store(settings: Settings) -> Store:
    """The store, its schema prepared (as `prepare_store` does) on the store's own
    engine: one connection pool per command, not one more just for the check.

    A command served by the CLI server that may migrate creates a new SQLite file from
    the server's migrated schema instead of migrating it (`db.create_from_schema_template`);
    the check below then finds it at head, as it would after migrating."""
    url = settings.resolved_database_url
    if settings.migrates_at_start:
        create_from_schema_template(url)
    store = Store.open(url, upgrade=False)
    try:
        prepare_schema(store.engine, auto_migrate=settings.migrates_at_start)
    except BaseException:
        store.close()
        raise
    return store
