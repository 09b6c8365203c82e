"""ProjectMutex: both implementations, against real threads, processes, files and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner.engine.project_mutex import (
    FileMutex,
    MutexBusy,
    PostgresMutex,
    ProjectMutex,
    build_mutex,
)
from runner.settings import Settings
from runner.store.db import make_engine
from runner.store.store import Store

# Generous: only reached when something is broken.
DEADLINE_S = 60.0

MutexFactory = Callable[[], ProjectMutex]


def _make(kind: str, where: str) -> ProjectMutex:
    """Build a mutex from picklable arguments (used in child processes too)."""
    if kind == "file":
        return FileMutex(Path(where))
    return PostgresMutex(make_engine(where))


@pytest.fixture(params=["file", pytest.param("postgres", marks=pytest.mark.postgres)])
def mutex_spec(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(kind, where): a lock directory, or a PostgreSQL URL."""
    if request.param == "file":
        return "file", str(tmp_path / "locks")
    return "postgres", request.getfixturevalue("postgres_url")


@pytest.fixture
def mutex(mutex_spec: tuple[str, str]) -> Iterator[ProjectMutex]:
    made = _make(*mutex_spec)
    yield made
    if isinstance(made, PostgresMutex):
        made.close()


@pytest.fixture
def key() -> str:
    # Advisory locks are per database, shared by parallel test workers: unique keys.
    return f"github.com/acme/infra|envs/{uuid.uuid4().hex}|default"


def test_exclusive_across_eight_threads(mutex: ProjectMutex, key: str) -> None:
    inside = 0
    most = 0
    entries = 0
    guard = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        nonlocal inside, most, entries
        start.wait(DEADLINE_S)
        for _ in range(10):
            with mutex.hold(key, timeout=DEADLINE_S):
                with guard:
                    inside += 1
                    entries += 1
                    most = max(most, inside)
                time.sleep(0.001)  # widen the window a second holder would need
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert not any(thread.is_alive() for thread in threads)
    assert entries == 80
    assert most == 1


def _hammer(kind: str, where: str, key: str, log: str, rounds: int) -> None:
    """Child process: enter and leave the mutex `rounds` times, logging both."""
    mutex = _make(kind, where)
    me = os.getpid()
    for _ in range(rounds):
        with mutex.hold(key, timeout=DEADLINE_S):
            _append(log, f"enter {me}")
            time.sleep(0.002)
            _append(log, f"leave {me}")


def _append(path: str, line: str) -> None:
    # O_APPEND: each short line lands whole, whichever process writes it.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def test_exclusive_across_two_processes(
    mutex_spec: tuple[str, str], key: str, tmp_path: Path
) -> None:
    log = tmp_path / "log.txt"
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_hammer, args=(*mutex_spec, key, str(log), 25)) for _ in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(DEADLINE_S)
    assert [child.exitcode for child in children] == [0, 0]
    lines = log.read_text().splitlines()
    assert len(lines) == 100
    # Strictly enter/leave pairs of one process: nobody entered while another was inside.
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):
        assert enter.startswith("enter ")
        assert leave == "leave " + enter.removeprefix("enter ")
    assert len({line.split()[1] for line in lines}) == 2


def test_no_wait_raises_busy_while_held_by_another_thread(mutex: ProjectMutex, key: str) -> None:
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with mutex.hold(key):
            held.set()
            release.wait(DEADLINE_S)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(DEADLINE_S)
        with pytest.raises(MutexBusy) as busy, mutex.hold(key, wait=False):
            pass
        assert busy.value.key == key
        with pytest.raises(MutexBusy), mutex.hold(key, timeout=0.05):
            pass
    finally:
        release.set()
        thread.join(DEADLINE_S)
    with mutex.hold(key, wait=False):
        pass


def _hold_until_killed(kind: str, where: str, key: str, flag: str) -> None:
    mutex = _make(kind, where)
    with mutex.hold(key):
        Path(flag).touch()
        time.sleep(DEADLINE_S * 10)


def test_no_wait_raises_busy_while_held_by_another_process_and_death_releases(
    mutex_spec: tuple[str, str], mutex: ProjectMutex, key: str, tmp_path: Path
) -> None:
    flag = tmp_path / "held"
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=_hold_until_killed, args=(*mutex_spec, key, str(flag)))
    child.start()
    try:
        _wait_for(flag.exists)
        with pytest.raises(MutexBusy), mutex.hold(key, wait=False):
            pass
    finally:
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(DEADLINE_S)
    # A holder that dies (no clean-up at all) frees the key.
    with mutex.hold(key, timeout=DEADLINE_S):
        pass


def test_distinct_keys_do_not_exclude_each_other(mutex: ProjectMutex, key: str) -> None:
    other = key + "-other"
    with mutex.hold(key), mutex.hold(other, wait=False):
        pass


def test_not_reentrant(mutex: ProjectMutex, key: str) -> None:
    with mutex.hold(key), pytest.raises(RuntimeError, match="not reentrant"), mutex.hold(key):
        pass
    with mutex.hold(key, wait=False):
        pass


def test_file_mutex_names_files_by_hash(tmp_path: Path) -> None:
    mutex = FileMutex(tmp_path)
    path = mutex.path_for("github.com/acme/infra|a/b|default")
    assert path.parent == tmp_path
    assert "/" not in path.name and "|" not in path.name
    assert path != mutex.path_for("github.com/acme/infra|a/b|prod")


def test_advisory_lock_ids_are_signed_64_bit() -> None:
    ids = {PostgresMutex.lock_id(f"key-{n}") for n in range(1000)}
    assert len(ids) == 1000
    assert all(-(2**63) <= value < 2**63 for value in ids)


def test_build_mutex_follows_the_database(db_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=db_url)
    with Store.open(db_url) as store:
        built = build_mutex(settings, store)
        if store.dialect == "postgresql":
            assert isinstance(built, PostgresMutex)
            built.close()
        else:
            assert isinstance(built, FileMutex)
            assert built.path_for("k").parent == tmp_path / "locks"


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)
