"""The wake-up from the web processes to `serve`'s job process (runner/jobs/wakeup.py).

A `RUN` queue reads the store when woken and on a slow fallback poll. Shown here with
real sockets, a real fork and the real store (both backends): a submitted job starts
long before the fallback poll would have found it (so the wake-up did it); a job whose
wake-up was lost is found by the fallback poll; the attacks: a forged wake-up, whatever
it carries, costs at most one read of the store and never runs a job, and nothing
outside the processes holding the channel can reach it.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from runner.engine.project_mutex import ProjectMutex
from runner.jobs.inprocess import InProcessQueue, QueueRole
from runner.jobs.job_process import JobProcess
from runner.jobs.queue import enqueue_event
from runner.jobs.wakeup import JobWakeup
from runner.store.jobs import JobStatus
from runner.store.store import Store
from tests.support.jobs import started_queues
from tests.support.mutexes import process_mutex
from tests.test_job_process import DEADLINE_S, lines, run_jobs_from, wait_for
from tests.test_jobs import RecordingHandler, comment

# Longer than any test may take: a job that starts was not found by the fallback poll.
NEVER_S = 3600.0


def done(store: Store, job_id: int) -> bool:
    record = store.jobs.get(job_id)
    return record is not None and record.status is JobStatus.DONE


@pytest.fixture
def mutex(tmp_path: Path, store: Store) -> Iterator[ProjectMutex]:
    with process_mutex(tmp_path, store) as made:
        yield made


@dataclass(frozen=True)
class Channel:
    wakeup: JobWakeup
    receiver: socket.socket  # the job process's end, under attack
    forger: socket.socket  # a second sender: what a process holding the channel could use

    def forge(self, datagram: bytes) -> None:
        # The sending end is non-blocking (a webhook never waits on it): wait for room.
        while True:
            try:
                self.forger.send(datagram)
                return
            except BlockingIOError:
                select.select([], [self.forger], [], DEADLINE_S)


@pytest.fixture
def channel() -> Iterator[Channel]:
    receiver, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    forger = socket.socket(fileno=os.dup(sender.fileno()))
    wakeup = JobWakeup(receiver, sender)
    yield Channel(wakeup, receiver, forger)
    forger.close()
    wakeup.close()


@pytest.fixture
def job_process_store(migrated_url: str) -> Iterator[Store]:
    """The job process's own store (connections of its own, as in another process)."""
    with Store.open(migrated_url, upgrade=False) as its_store:
        yield its_store


@pytest.fixture
def queues(mutex: ProjectMutex) -> Iterator[Callable[..., InProcessQueue]]:
    with started_queues(mutex) as make:
        yield make


@pytest.fixture
def job_process(
    job_process_store: Store, channel: Channel, queues: Callable[..., InProcessQueue]
) -> Callable[[RecordingHandler, float], InProcessQueue]:
    """`start(handler, fallback_poll_s)`: the job process's queue, woken through `channel`."""

    def start(handler: RecordingHandler, fallback_poll_s: float) -> InProcessQueue:
        return queues(
            job_process_store,
            QueueRole.RUN,
            handler,
            wakeup=channel.wakeup,
            fallback_poll_s=fallback_poll_s,
        )

    return start


@pytest.fixture
def web_process(
    store: Store, channel: Channel, queues: Callable[..., InProcessQueue]
) -> Callable[[], InProcessQueue]:
    """`start()`: a web process's queue, which wakes the job process through `channel`."""
    return lambda: queues(store, QueueRole.SUBMIT, RecordingHandler(), wakeup=channel.wakeup)


class WatcherReads:
    """Counts the statements the job process's watcher thread sends to the store."""

    def __init__(self, store: Store) -> None:
        self.count = 0
        self._engine = store.engine
        event.listen(self._engine, "before_cursor_execute", self._seen)

    def _seen(self, *_: Any) -> None:
        if threading.current_thread().name == "job-watch":
            self.count += 1

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._seen)


def test_a_submitted_job_wakes_the_job_process(
    store: Store,
    job_process: Callable[..., InProcessQueue],
    web_process: Callable[[], InProcessQueue],
) -> None:
    handler = RecordingHandler()
    job_process(handler, NEVER_S)
    web = web_process()
    first = web.submit(comment(1, "ok-first"))
    wait_for(lambda: done(store, first), "the first job")

    # The workers went back to sleep with nothing queued: only a wake-up brings them.
    second = web.submit(comment(2, "ok-second"))

    wait_for(lambda: done(store, second), "the second job, long before the fallback poll")
    assert handler.tags("start") == ["ok-first", "ok-second"]


def test_a_job_whose_wake_up_was_lost_is_found_by_the_fallback_poll(
    store: Store, job_process: Callable[..., InProcessQueue]
) -> None:
    handler = RecordingHandler()
    job_process(handler, 0.2)

    lost = enqueue_event(store, comment(1, "ok-unannounced"))  # stored, nobody woken

    wait_for(lambda: done(store, lost), "the fallback poll to find the job")
    assert handler.tags("start") == ["ok-unannounced"]


def test_a_forged_wake_up_costs_one_read_and_runs_no_job(
    store: Store,
    job_process_store: Store,
    channel: Channel,
    job_process: Callable[..., InProcessQueue],
    web_process: Callable[[], InProcessQueue],
) -> None:
    # The attack: whoever holds the channel sends wake-ups that claim to carry a job
    # (a payload, an id, a flood). A wake-up says only "look": the job process reads the
    # store and finds nothing to run.
    handler = RecordingHandler()
    reads = WatcherReads(job_process_store)
    try:
        job_process(handler, NEVER_S)
        forged = [
            b'{"kind": "comment", "payload": {"body": "gitops apply"}}',
            b"job 1",
            b"\x00" * 60_000,
            *[b"wake"] * 200,
        ]
        for datagram in forged:
            channel.forge(datagram)
        # A real job after the forgeries: once it ran, every forged wake-up was read.
        real = web_process().submit(comment(1, "ok-real"))
        wait_for(lambda: done(store, real), "the real job")
    finally:
        reads.close()

    assert [record.id for record in store.jobs.list()] == [real]
    assert handler.tags("start") == ["ok-real"]
    # At most one read per wake-up (those pending together share one), real one included.
    assert 1 <= reads.count <= len(forged) + 1


def test_nothing_outside_the_runners_processes_can_reach_the_channel(
    channel: Channel, tmp_path: Path
) -> None:
    # The attack: another local process (a provider Terraform started, another user's
    # program) looks for a way to send wake-ups.
    receiving, forger = channel.receiver, channel.forger

    # No name: no path in the file system, no abstract address to connect or send to.
    assert receiving.getsockname() in ("", b"")
    assert forger.getpeername() in ("", b"")
    # Close-on-exec: what the runner starts (Terraform, git, providers) never holds it,
    # even when started without closing descriptors.
    fds = [receiving.fileno(), forger.fileno()]
    assert not any(os.get_inheritable(fd) for fd in fds)
    probe = "import os, sys\nfor fd in map(int, sys.argv[1:]):\n    os.fstat(fd)\n"
    child = subprocess.run(
        [sys.executable, "-c", probe, *map(str, fds)],
        close_fds=False,
        capture_output=True,
        text=True,
        check=False,
    )
    assert child.returncode != 0 and "Bad file descriptor" in child.stderr
    # Nor through /proc: a socket cannot be opened by its path there.
    with pytest.raises(OSError):
        os.open(f"/proc/{os.getpid()}/fd/{receiving.fileno()}", os.O_WRONLY)


def test_the_forked_job_process_is_woken_by_the_web_side_through_the_inherited_channel(
    store: Store, migrated_url: str, tmp_path: Path, queues: Callable[..., InProcessQueue]
) -> None:
    # As `serve` does it: the channel is made before the fork; the job process (a real
    # fork) keeps the receiving end, the web side sends.
    record = tmp_path / "jobs"
    wakeup = JobWakeup.pair()

    main = run_jobs_from(migrated_url, tmp_path, record, wakeup=wakeup, fallback_poll_s=NEVER_S)
    jobs = JobProcess(main, restart_delay_s=0.05)
    jobs.start()
    try:
        web = queues(store, QueueRole.SUBMIT, RecordingHandler(), wakeup=wakeup)
        first = web.submit(comment(1, "ok-first"))
        wait_for(lambda: done(store, first), "the first job")
        second = web.submit(comment(2, "ok-second"))
        wait_for(lambda: done(store, second), "the second job, long before the fallback poll")
    finally:
        assert jobs.stop(timeout=DEADLINE_S)
        wakeup.close()
    assert lines(record) == ["start ok-first", "start ok-second"]
