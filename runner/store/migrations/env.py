"""Alembic environment for the store.

Runs in two ways: from `runner.store.db.migrate()`, which hands over an open
connection (inside its migration lock and transaction), or from the alembic CLI
with `-x url=...` / GITOPS_DATABASE_URL. Either way the engine is built by
`make_engine`, so URL translation and SQLite pragmas match the runner's.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

# Tables defined outside models.py register on the same metadata when imported.
import runner.store.drift_models
import runner.store.leases
import runner.store.reconcile_models  # noqa: F401
from runner.store.db import make_engine, normalize_url
from runner.store.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("GITOPS_DATABASE_URL")
    )
    if not url:
        raise RuntimeError("no database URL: pass -x url=... or set GITOPS_DATABASE_URL")
    return normalize_url(url).render_as_string(hide_password=False)


def _configure(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode recreates the table instead.
        render_as_batch=sqlite,
        # make_engine emits a real BEGIN on SQLite, so its DDL is transactional too:
        # a failed revision leaves no half-built table behind.
        transactional_ddl=True,
        compare_type=True,
    )


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        # The caller owns the connection and its transaction (and the migration lock).
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as new_connection:
            _configure(new_connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


# Logging is configured only for the CLI; inside the runner it would replace the app's.
if config.config_file_name is not None and "connection" not in config.attributes:
    fileConfig(config.config_file_name)

if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
