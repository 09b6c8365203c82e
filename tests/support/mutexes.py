"""The per-state mutex a process builds (`wiring.build_mutex`), for tests of the queue."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from runner.engine.project_mutex import ProjectMutex, build_mutex
from runner.settings import Settings
from runner.store.store import Store


@contextmanager
def process_mutex(data_dir: Path, store: Store) -> Iterator[ProjectMutex]:
    """The mutex `build_mutex` gives a process with this data dir, closed afterwards."""
    made = build_mutex(Settings(data_dir=data_dir), store)
    try:
        yield made
    finally:
        close = getattr(made, "close", None)
        if close is not None:
            close()
