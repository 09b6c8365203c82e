"""The job layer: in-process and RQ queues, cancellation, recovery, PR-group ordering.

Real databases (SQLite and PostgreSQL), real threads, real processes, real Redis.
Handlers are small recording classes; nothing is mocked. Nothing asserts on time:
tests wait (with a generous deadline) for things to happen, then check what happened.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from runner.engine.project_mutex import FileMutex, ProjectMutex, build_mutex
from runner.events.commands import Command, CommandError
from runner.events.model import (
    CommentEvent,
    PullRequestAction,
    PullRequestEvent,
    PullRequestRef,
)
from runner.jobs import cancellation
from runner.jobs.inprocess import InProcessQueue
from runner.jobs.model import WorkEvent, decode_event, encode_event, pr_group
from runner.jobs.queue import (
    JobRunner,
    Outcome,
    enqueue_event,
)
from runner.jobs.recovery import recover
from runner.jobs.rq_queue import RQQueue, send_message
from runner.settings import Settings
from runner.store.deliveries import DeliveryRef, DuplicateDelivery
from runner.store.jobs import JobRecord, JobStatus
from runner.store.owners import new_owner_id, owner_is_gone, process_owner_prefix
from runner.store.store import Store
from runner.wiring import build_queue
from tests.support.jobs import FAST, REPO, comment_event, submit_event
from tests.support.mutexes import process_mutex

DEADLINE_S = 60.0
ROOT = Path(__file__).resolve().parent.parent


# ---- events ---------------------------------------------------------------------------


def pr_event(number: int, action: PullRequestAction = "opened", sha: str = "a") -> PullRequestEvent:
    """A PR event; `sha` doubles as the tag the test handlers act on."""
    return PullRequestEvent(
        repo=REPO,
        pr=PullRequestRef(
            number=number,
            html_url=f"https://github.com/acme/infra/pull/{number}",
            author="alice",
            head_sha=sha,
            head_ref="feature",
            base_ref="main",
            base_sha="b" * 40,
            head_repo_full_name="acme/infra",
            is_fork=False,
            is_draft=False,
        ),
        action=action,
        merged=action == "closed" and sha.startswith("merged"),
        merge_commit_sha="c" * 40 if action == "closed" and sha.startswith("merged") else None,
        sender="alice",
    )


def comment(number: int, body: str) -> CommentEvent:
    """A comment; its body is the tag: `block-…` waits for release, `fail-…` raises,
    `apply-…` counts as an apply."""
    return comment_event(REPO, number, body)


def tag_of(event: WorkEvent) -> str:
    return event.pr.head_sha if isinstance(event, PullRequestEvent) else event.body


def is_apply_event(event: WorkEvent) -> bool:
    if isinstance(event, PullRequestEvent):
        return event.merged
    return event.body.startswith("apply")


# ---- handlers -------------------------------------------------------------------------


class RecordingHandler:
    """Records starts, ends and cancellations; `block-*` jobs wait for `release(tag)`."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self.log: list[tuple[str, str]] = []  # (what, tag), in order
        self.interrupted: list[str] = []
        self._gates: dict[str, threading.Event] = {}
        self._active: dict[str, int] = {}
        self.most_active_per_group = 0
        self.most_active = 0

    def handle(self, event: WorkEvent, cancel: threading.Event) -> None:
        tag, group = tag_of(event), pr_group(event)
        with self._guard:
            self.log.append(("start", tag))
            self._active[group] = self._active.get(group, 0) + 1
            self.most_active_per_group = max(self.most_active_per_group, self._active[group])
            self.most_active = max(self.most_active, sum(self._active.values()))
        try:
            if tag.startswith("block"):
                gate = self._gate(tag)
                while not (gate.is_set() or cancel.is_set()):
                    gate.wait(0.01)
                if cancel.is_set():
                    self._record("cancelled", tag)
                    return
            elif tag.startswith("slow"):
                time.sleep(0.02)
            if tag.startswith("fail"):
                raise RuntimeError(f"boom {tag}")
        finally:
            with self._guard:
                self._active[group] -= 1
                self.log.append(("end", tag))

    def is_apply(self, event: WorkEvent) -> bool:
        return is_apply_event(event)

    def report_interrupted(self, event: WorkEvent) -> None:
        self._record("interrupted", tag_of(event))
        with self._guard:
            self.interrupted.append(tag_of(event))

    def release(self, tag: str) -> None:
        self._gate(tag).set()

    def _gate(self, tag: str) -> threading.Event:
        with self._guard:
            return self._gates.setdefault(tag, threading.Event())

    def _record(self, what: str, tag: str) -> None:
        with self._guard:
            self.log.append((what, tag))

    def tags(self, what: str) -> list[str]:
        with self._guard:
            return [tag for kind, tag in self.log if kind == what]

    def wait_for(self, what: str, tag: str) -> None:
        _wait_for(lambda: tag in self.tags(what), f"{what} {tag}")


class FileRecordingHandler:
    """For other processes: appends `what tag pid` lines to a file; `block-*` jobs wait
    for a `<file>.release-<tag>` file to appear (or for cancellation)."""

    def __init__(self, path: str) -> None:
        self._path = path

    def handle(self, event: WorkEvent, cancel: threading.Event) -> None:
        tag = tag_of(event)
        self._write("start", tag)
        if tag.startswith("block"):
            release = Path(f"{self._path}.release-{tag}")
            deadline = time.monotonic() + DEADLINE_S
            while not (release.exists() or cancel.is_set()) and time.monotonic() < deadline:
                cancel.wait(0.02)
            if cancel.is_set():
                self._write("cancelled", tag)
                return
        self._write("end", tag)

    def is_apply(self, event: WorkEvent) -> bool:
        return is_apply_event(event)

    def report_interrupted(self, event: WorkEvent) -> None:
        self._write("interrupted", tag_of(event))

    def _write(self, what: str, tag: str) -> None:
        _append(self._path, f"{what} {tag} {os.getpid()}")


def file_recording_handler(settings: Settings, store: Store) -> FileRecordingHandler:
    """Handler factory for worker processes (the RQ worker imports it by path)."""
    return FileRecordingHandler(os.environ["GITOPS_TEST_RECORD_FILE"])


def _records(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split()[:2]) for line in path.read_text().splitlines()]  # type: ignore[misc]


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


# ---- fixtures and helpers -------------------------------------------------------------


@pytest.fixture
def mutex(tmp_path: Path, store: Store) -> Iterator[ProjectMutex]:
    with process_mutex(tmp_path, store) as made:
        yield made


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
def make_queue(
    store: Store, handler: RecordingHandler, mutex: ProjectMutex
) -> Iterator[Callable[..., InProcessQueue]]:
    made: list[InProcessQueue] = []

    def make(
        workers: int = 2,
        *,
        on: Store | None = None,
        handler_: Any = None,
        start: bool = True,
    ) -> InProcessQueue:
        queue = InProcessQueue(on or store, handler_ or handler, workers, mutex=mutex, timing=FAST)
        made.append(queue)
        if start:
            queue.start()
        return queue

    yield make
    for queue in made:
        queue.stop(timeout=0)


def status_of(store: Store, job_id: int) -> JobStatus:
    record = store.jobs.get(job_id)
    assert record is not None
    return record.status


def wait_for_status(store: Store, job_id: int, *statuses: JobStatus) -> JobRecord:
    _wait_for(lambda: status_of(store, job_id) in statuses, f"job {job_id} to be {statuses}")
    record = store.jobs.get(job_id)
    assert record is not None
    return record


def wait_until_finished(store: Store, job_ids: list[int]) -> None:
    finished = {JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.INTERRUPTED}
    _wait_for(
        lambda: all(status_of(store, job_id) in finished for job_id in job_ids),
        f"jobs {job_ids} to finish",
    )


def _wait_for(condition: Callable[[], bool], what: str = "a condition") -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# ---- in-process queue -----------------------------------------------------------------


def test_submitted_jobs_run_once(
    store: Store, handler: RecordingHandler, make_queue: Callable[..., InProcessQueue]
) -> None:
    queue = make_queue(workers=4)
    ids = [queue.submit(comment(number % 7, f"ok-{number}")) for number in range(30)]
    wait_until_finished(store, ids)
    assert all(status_of(store, job_id) is JobStatus.DONE for job_id in ids)
    assert sorted(handler.tags("start")) == sorted(f"ok-{number}" for number in range(30))


def test_handler_exception_fails_the_job_and_the_worker_goes_on(
    store: Store, handler: RecordingHandler, make_queue: Callable[..., InProcessQueue]
) -> None:
    queue = make_queue(workers=1)
    failing = queue.submit(comment(1, "fail-1"))
    after = queue.submit(comment(2, "ok-2"))
    wait_until_finished(store, [failing, after])
    record = store.jobs.get(failing)
    assert record is not None and record.status is JobStatus.FAILED
    assert record.error == "RuntimeError: boom fail-1"
    assert status_of(store, after) is JobStatus.DONE


def test_unreadable_job_fails_and_the_worker_goes_on(
    store: Store, make_queue: Callable[..., InProcessQueue]
) -> None:
    kind, payload = encode_event(comment(1, "ok"))
    future = store.jobs.enqueue(kind, payload, version=99)
    queue = make_queue(workers=1)
    after = queue.submit(comment(2, "ok-2"))
    wait_until_finished(store, [future, after])
    record = store.jobs.get(future)
    assert record is not None and record.status is JobStatus.FAILED
    assert "version=99" in (record.error or "")
    assert status_of(store, after) is JobStatus.DONE


# ---- the job format: a comment's command is parsed once, by the webhook ------------------


def test_a_comment_job_carries_its_parsed_command_as_json() -> None:
    event = comment(1, "gitops plan -p app -- -target=module.vpc")
    kind, payload = encode_event(event)
    assert payload["command"] == {
        "name": "plan",
        "project": "app",
        "dir": None,
        "workspace": None,
        "extra_args": ["-target=module.vpc"],
        "args": [],  # import / state rm arguments (an optional field: older jobs decode)
    }
    assert decode_event(kind, payload) == event


def test_a_refused_command_and_a_plain_comment_survive_the_round_trip() -> None:
    for body in ("gitops destroy", "looks good"):
        event = comment(1, body)
        assert decode_event(*encode_event(event)) == event
    assert isinstance(comment(1, "gitops destroy").command, CommandError)


def test_a_comment_job_from_the_previous_version_is_parsed_on_decode() -> None:
    """Rolling upgrade: version 1 rows stored the text only."""
    kind, payload = encode_event(comment(1, "gitops apply -d infra/db"))
    del payload["command"]
    decoded = decode_event(kind, payload, version=1)
    assert isinstance(decoded, CommentEvent)
    assert decoded.command == Command(name="apply", dir="infra/db")


def test_a_version_1_row_in_the_store_decodes_with_its_command(store: Store) -> None:
    kind, payload = encode_event(comment(2, "gitops apply"))
    del payload["command"]
    job_id = store.jobs.enqueue(kind, payload, version=1)
    record = store.jobs.get(job_id)
    assert record is not None
    event = decode_event(record.kind, record.payload, record.version)
    assert isinstance(event, CommentEvent) and event.command == Command(name="apply")


def test_two_queues_on_one_database_never_run_a_job_twice(
    store: Store,
    migrated_url: str,
    handler: RecordingHandler,
    make_queue: Callable[..., InProcessQueue],
) -> None:
    # Two Stores, two queues: what two gunicorn worker processes each build.
    other_store = Store.open(migrated_url, upgrade=False)
    try:
        first = make_queue(workers=3, start=False)
        second = make_queue(workers=3, on=other_store, start=False)
        ids = [first.submit(comment(number, f"ok-{number}")) for number in range(80)]
        first.start()
        second.start()
        wait_until_finished(store, ids)
        assert all(status_of(store, job_id) is JobStatus.DONE for job_id in ids)
        started = handler.tags("start")
        assert sorted(started) == sorted(f"ok-{number}" for number in range(80))
    finally:
        other_store.close()


def _serve(url: str, data_dir: str, record: str, stop_flag: str) -> None:
    """Child process: an in-process queue, as a gunicorn worker runs one, until told."""
    store = Store.open(url, upgrade=False)
    settings = Settings(data_dir=Path(data_dir), database_url=url)
    queue = InProcessQueue(
        store,
        FileRecordingHandler(record),
        3,
        mutex=build_mutex(settings, store),
        timing=FAST,
    )
    queue.start()
    while not Path(stop_flag).exists():
        time.sleep(0.02)
    queue.stop(timeout=DEADLINE_S)
    store.close()


def test_two_processes_on_one_database_never_run_a_job_twice(
    store: Store, migrated_url: str, tmp_path: Path
) -> None:
    record, stop_flag = tmp_path / "record.txt", tmp_path / "stop"
    ids = [submit_event(store, comment(number, f"ok-{number}"))[0] for number in range(60)]
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(
            target=_serve, args=(migrated_url, str(tmp_path), str(record), str(stop_flag))
        )
        for _ in range(2)
    ]
    for child in children:
        child.start()
    try:
        wait_until_finished(store, ids)
    finally:
        stop_flag.touch()
        for child in children:
            child.join(DEADLINE_S)
    assert [child.exitcode for child in children] == [0, 0]
    assert all(status_of(store, job_id) is JobStatus.DONE for job_id in ids)
    started = [tag for what, tag in _records(record) if what == "start"]
    assert sorted(started) == sorted(f"ok-{number}" for number in range(60))


def test_jobs_of_one_pr_run_one_at_a_time_others_in_parallel(
    store: Store, handler: RecordingHandler, make_queue: Callable[..., InProcessQueue]
) -> None:
    queue = make_queue(workers=3)
    first = queue.submit(comment(1, "block-a1"))
    second = queue.submit(comment(1, "ok-a2"))
    other = queue.submit(comment(2, "block-b1"))

    # PR 2 runs while PR 1's first job runs ...
    handler.wait_for("start", "block-a1")
    handler.wait_for("start", "block-b1")
    # ... and PR 1's second job waits (claimed, but not started) until the first ends.
    wait_for_status(store, second, JobStatus.RUNNING)
    assert "ok-a2" not in handler.tags("start")
    handler.release("block-a1")
    wait_until_finished(store, [first, second])
    log = handler.log
    assert log.index(("end", "block-a1")) < log.index(("start", "ok-a2"))
    assert status_of(store, other) is JobStatus.RUNNING
    handler.release("block-b1")
    wait_until_finished(store, [other])
    assert handler.most_active_per_group == 1
    assert handler.most_active >= 2


def test_pr_groups_keep_order_and_exclusion_across_two_queues(
    store: Store,
    migrated_url: str,
    handler: RecordingHandler,
    make_queue: Callable[..., InProcessQueue],
) -> None:
    other_store = Store.open(migrated_url, upgrade=False)
    try:
        first = make_queue(workers=3, start=False)
        second = make_queue(workers=3, on=other_store, start=False)
        submitted = {
            number: [f"slow-{number}-{step}" for step in range(5)] for number in range(1, 4)
        }
        ids = []
        for step in range(5):
            for number, tags in submitted.items():
                ids.append(first.submit(comment(number, tags[step])))
        first.start()
        second.start()
        wait_until_finished(store, ids)
    finally:
        other_store.close()
    assert handler.most_active_per_group == 1
    started = handler.tags("start")
    for tags in submitted.values():
        assert [tag for tag in started if tag in tags] == tags


def test_submit_does_not_wait_for_superseding(
    store: Store, make_queue: Callable[..., InProcessQueue], monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    real_supersede = cancellation.supersede_groups

    def gated_supersede(*args: Any) -> cancellation.Superseded:
        gate.wait(DEADLINE_S)
        return real_supersede(*args)

    monkeypatch.setattr(cancellation, "supersede_groups", gated_supersede)
    queue = make_queue(workers=1, start=False)  # no worker: the jobs stay where they are
    old = queue.submit(pr_event(1, "opened", "ok-old"))

    newest = queue.submit(pr_event(1, "updated", "ok-new"))  # returns; superseding waits

    assert status_of(store, old) is JobStatus.QUEUED
    gate.set()
    record = wait_for_status(store, old, JobStatus.CANCELLED)
    assert f"superseded by job {newest}" in (record.error or "")
    assert status_of(store, newest) is JobStatus.QUEUED


def test_a_burst_of_pushes_leaves_only_the_newest_autoplan(
    store: Store, make_queue: Callable[..., InProcessQueue]
) -> None:
    queue = make_queue(workers=1, start=False)
    opened = queue.submit(pr_event(1, "opened", "ok-0"))
    command = queue.submit(comment(1, "ok-command"))  # asked for by a person: kept
    other_pr = queue.submit(pr_event(2, "opened", "ok-other"))
    pushes = [queue.submit(pr_event(1, "updated", f"ok-{n}")) for n in range(1, 30)]

    older = [opened, *pushes[:-1]]
    _wait_for(
        lambda: all(status_of(store, job) is JobStatus.CANCELLED for job in older),
        "the older autoplans to be cancelled",
    )
    kept = (command, other_pr, pushes[-1])
    assert [status_of(store, job) for job in kept] == [JobStatus.QUEUED] * 3


def test_one_superseding_pass_covers_every_pr_pending_and_stop_finishes_it(store: Store) -> None:
    passes: list[cancellation.Superseded] = []
    gate = threading.Event()

    def on_done(result: cancellation.Superseded) -> None:
        passes.append(result)
        gate.wait(DEADLINE_S)  # the thread is busy: what is requested meanwhile pends

    superseder = cancellation.Superseder(store, on_done)
    busy = enqueue_event(store, pr_event(9, "updated", "z"))
    superseder.request(busy, pr_event(9, "updated", "z"))
    _wait_for(lambda: len(passes) == 1, "the first pass")
    opened = {number: enqueue_event(store, pr_event(number, "opened", "a")) for number in (1, 2)}
    pushes = {number: enqueue_event(store, pr_event(number, "updated", "b")) for number in (1, 2)}
    closed = enqueue_event(store, pr_event(2, "closed", "c"))
    for job_id, event in [
        (pushes[1], pr_event(1, "updated", "b")),
        (pushes[2], pr_event(2, "updated", "b")),
        (closed, pr_event(2, "closed", "c")),
    ]:
        assert superseder.request(job_id, event)
    gate.set()

    assert superseder.stop(timeout=DEADLINE_S)  # what was pending is done first

    # One pass for both PRs; PR 2's close coalesced with its push, whose own job went
    # with the autoplan.
    assert len(passes) == 2
    assert passes[1].superseding == [pushes[1], closed]
    cancelled = sorted([opened[1], opened[2], pushes[2]])
    assert sorted(passes[1].queued) == cancelled
    assert [status_of(store, job) for job in cancelled] == [JobStatus.CANCELLED] * 3
    # Stopped: a request is done at once, on the caller's thread.
    later = enqueue_event(store, pr_event(3, "opened", "a"))
    push = enqueue_event(store, pr_event(3, "updated", "b"))
    assert superseder.request(push, pr_event(3, "updated", "b"))
    assert status_of(store, later) is JobStatus.CANCELLED
    assert not superseder.request(later, pr_event(3, "opened", "a"))  # supersedes nothing


def test_a_failed_superseding_pass_is_logged_and_dropped(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    passes: list[cancellation.Superseded] = []
    superseder = cancellation.Superseder(store, passes.append)
    old = enqueue_event(store, pr_event(1, "opened", "a"))
    push = enqueue_event(store, pr_event(1, "updated", "b"))
    with store.engine.begin() as connection:  # the store fails the pass
        connection.exec_driver_sql("ALTER TABLE jobs RENAME TO jobs_away")
    try:
        superseder.request(push, pr_event(1, "updated", "b"))
        _wait_for(lambda: len(passes) == 1, "the failed pass")
    finally:
        with store.engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE jobs_away RENAME TO jobs")
    other = enqueue_event(store, pr_event(2, "opened", "a"))
    other_push = enqueue_event(store, pr_event(2, "updated", "b"))
    superseder.request(other_push, pr_event(2, "updated", "b"))
    assert superseder.stop(timeout=DEADLINE_S)

    assert passes[0] == cancellation.Superseded(superseding=[push])
    assert "superseding failed" in caplog.text
    # Dropped, not retried: PR 1's autoplan stays (it skips itself when it runs).
    assert status_of(store, old) is JobStatus.QUEUED
    assert status_of(store, other) is JobStatus.CANCELLED


def test_jobs_carry_their_pr_group(store: Store) -> None:
    event = pr_event(4, "opened", "ok")
    record = store.jobs.get(enqueue_event(store, event))
    assert record is not None and record.group_key == pr_group(event) == pr_group(comment(4, "x"))


def test_a_duplicate_delivery_is_not_queued_again(
    store: Store, make_queue: Callable[..., InProcessQueue]
) -> None:
    queue = make_queue(workers=1, start=False)
    delivery = DeliveryRef("d-1", "github", "pull_request")
    first = queue.submit(pr_event(1, "opened", "ok"), delivery=delivery)

    with pytest.raises(DuplicateDelivery):
        queue.submit(pr_event(1, "updated", "ok-again"), delivery=delivery)

    assert [record.id for record in store.jobs.list()] == [first]


def test_new_push_cancels_queued_autoplan_and_signals_the_running_one(
    store: Store, handler: RecordingHandler, make_queue: Callable[..., InProcessQueue]
) -> None:
    queue = make_queue(workers=1)
    running = queue.submit(pr_event(1, "opened", "block-old"))
    handler.wait_for("start", "block-old")
    queued = queue.submit(pr_event(1, "ready", "block-queued"))  # does not supersede
    command = queue.submit(comment(1, "ok-command"))  # asked for by a person: kept
    elsewhere = queue.submit(pr_event(2, "opened", "ok-other-pr"))

    newest = queue.submit(pr_event(1, "updated", "ok-newest"))

    handler.wait_for("cancelled", "block-old")
    wait_until_finished(store, [running, queued, command, elsewhere, newest])
    assert status_of(store, running) is JobStatus.CANCELLED
    assert status_of(store, queued) is JobStatus.CANCELLED
    assert "block-queued" not in handler.tags("start")
    assert [status_of(store, job) for job in (command, elsewhere, newest)] == [JobStatus.DONE] * 3
    record = store.jobs.get(running)
    assert record is not None and f"superseded by job {newest}" in (record.error or "")


def test_running_autoplan_in_another_process_hears_of_the_push_through_the_store(
    store: Store,
    migrated_url: str,
    handler: RecordingHandler,
    make_queue: Callable[..., InProcessQueue],
) -> None:
    other_store = Store.open(migrated_url, upgrade=False)
    try:
        runs = make_queue(workers=1)
        submits = make_queue(workers=1, on=other_store, handler_=RecordingHandler(), start=False)
        running = runs.submit(pr_event(5, "opened", "block-plan"))
        handler.wait_for("start", "block-plan")
        closed = submits.submit(pr_event(5, "closed", "ok-closed"))
        handler.wait_for("cancelled", "block-plan")
        wait_until_finished(store, [running, closed])
        assert status_of(store, running) is JobStatus.CANCELLED
        assert status_of(store, closed) is JobStatus.DONE
    finally:
        other_store.close()


def test_stop_interrupts_running_jobs_and_gives_back_waiting_ones(
    store: Store, handler: RecordingHandler, make_queue: Callable[..., InProcessQueue]
) -> None:
    queue = make_queue(workers=2)
    running = queue.submit(comment(1, "block-long"))
    waiting = queue.submit(comment(1, "ok-next"))
    handler.wait_for("start", "block-long")
    wait_for_status(store, waiting, JobStatus.RUNNING)

    assert queue.stop(timeout=0.1)

    assert "block-long" in handler.tags("cancelled")
    # It never started: back in the queue for another worker, or the next start.
    assert status_of(store, waiting) is JobStatus.QUEUED
    assert "ok-next" not in handler.tags("start")
    assert status_of(store, running) is JobStatus.DONE


# ---- restart and recovery -------------------------------------------------------------


def test_queued_jobs_run_when_a_new_queue_starts(
    store: Store, handler: RecordingHandler, make_queue: Callable[..., InProcessQueue]
) -> None:
    before = make_queue(workers=1, start=False)  # a process that died before its workers ran
    ids = [before.submit(comment(number, f"ok-{number}")) for number in range(3)]
    make_queue(workers=2)
    wait_until_finished(store, ids)
    assert sorted(handler.tags("start")) == ["ok-0", "ok-1", "ok-2"]


def _orphan(store: Store, event: WorkEvent, owner: str, lease_s: float) -> int:
    """A job left running by a worker that is gone."""
    job_id, _ = submit_event(store, event)
    claimed = store.jobs.claim_id(job_id, owner, lease_s=lease_s)
    assert claimed is not None and claimed.id == job_id
    return job_id


def test_running_plan_with_expired_lease_is_run_again(
    store: Store, handler: RecordingHandler, make_queue: Callable[..., InProcessQueue]
) -> None:
    job_id = _orphan(store, comment(1, "ok-plan"), "other-host:1:1:w0:dead.", lease_s=0)
    make_queue(workers=1)
    record = wait_for_status(store, job_id, JobStatus.DONE)
    assert record.attempts == 2
    assert handler.tags("start") == ["ok-plan"]
    assert handler.interrupted == []


def test_running_apply_is_interrupted_and_reported_never_rerun(
    store: Store, handler: RecordingHandler, make_queue: Callable[..., InProcessQueue]
) -> None:
    apply = _orphan(store, comment(1, "apply-prod"), "other-host:1:1:w0:dead.", lease_s=0)
    merged = _orphan(store, pr_event(2, "closed", "merged-1"), "other-host:1:1:w1:dead.", 0)
    queue = make_queue(workers=1)
    after = queue.submit(comment(3, "ok-after"))
    wait_until_finished(store, [after])
    for job_id in (apply, merged):
        record = store.jobs.get(job_id)
        assert record is not None and record.status is JobStatus.INTERRUPTED
        assert "lease expired" in (record.error or "")
    assert sorted(handler.interrupted) == ["apply-prod", "merged-1"]
    assert "apply-prod" not in handler.tags("start")


def test_a_plan_that_keeps_dying_is_interrupted_after_three_attempts(
    store: Store, handler: RecordingHandler
) -> None:
    job_id, _ = submit_event(store, comment(1, "ok-plan"))
    outcomes = []
    for _ in range(3):
        assert store.jobs.claim_id(job_id, "other-host:1:1:w:dead.", lease_s=0) is not None
        report = recover(store, handler, lease_grace=0)
        outcomes.append((report.requeued, report.interrupted))
    assert outcomes == [([job_id], []), ([job_id], []), ([], [job_id])]
    assert status_of(store, job_id) is JobStatus.INTERRUPTED
    assert handler.interrupted == []  # report_interrupted is about applies


def test_recovery_leaves_live_jobs_alone(store: Store, handler: RecordingHandler) -> None:
    live = _orphan(store, comment(1, "ok"), new_owner_id(process_owner_prefix(), "w"), 3600)
    remote = _orphan(store, comment(2, "ok"), "other-host:1:1:w:x.", lease_s=3600)
    report = recover(store, handler, lease_grace=0)
    assert report.requeued == report.interrupted == []
    assert status_of(store, live) is JobStatus.RUNNING
    assert status_of(store, remote) is JobStatus.RUNNING


def _claim_and_die(url: str, job_id: int) -> None:
    """Child process: claim a job under this process's owner id, then exit abruptly."""
    store = Store.open(url, upgrade=False)
    owner = new_owner_id(process_owner_prefix(), "w0")
    assert store.jobs.claim_id(job_id, owner, lease_s=3600) is not None
    os._exit(0)


def test_jobs_of_a_dead_process_of_this_host_are_recovered_before_their_lease_ends(
    store: Store, migrated_url: str, handler: RecordingHandler
) -> None:
    plan, _ = submit_event(store, comment(1, "ok-plan"))
    apply, _ = submit_event(store, comment(2, "apply-now"))
    context = multiprocessing.get_context("spawn")
    for job_id in (plan, apply):
        child = context.Process(target=_claim_and_die, args=(migrated_url, job_id))
        child.start()
        child.join(DEADLINE_S)
        assert child.exitcode == 0
    for job_id in (plan, apply):
        record = store.jobs.get(job_id)
        assert record is not None and record.status is JobStatus.RUNNING
        assert owner_is_gone(record.lease_owner)

    report = recover(store, handler, lease_grace=3600)

    assert (report.requeued, report.interrupted) == ([plan], [apply])
    assert handler.interrupted == ["apply-now"]
    assert "worker process is gone" in (store.jobs.get(apply).error or "")  # type: ignore[union-attr]
    assert recover(store, handler).requeued == []  # idempotent


def test_owner_ids() -> None:
    prefix = process_owner_prefix()
    owner = new_owner_id(prefix, "w1")
    assert owner.startswith(prefix + ":w1:") and owner.endswith(".")
    assert owner != new_owner_id(prefix, "w1")
    assert not owner_is_gone(owner)  # this very process
    assert not owner_is_gone("other-host:1:1:w:x.")  # not ours to judge
    assert not owner_is_gone("legacy-worker")
    host = prefix.split(":")[0]
    assert owner_is_gone(f"{host}:{2**22 + 7}:1:w:x.")  # beyond pid_max: no such process


# ---- store additions used by the queues -----------------------------------------------


def test_claim_id_takes_only_that_queued_job(store: Store) -> None:
    first = store.jobs.enqueue("comment", {})
    second = store.jobs.enqueue("comment", {})
    taken = store.jobs.claim_id(second, "w")
    assert taken is not None and taken.id == second and taken.status is JobStatus.RUNNING
    assert store.jobs.claim_id(second, "w2") is None  # already taken
    assert store.jobs.cancel(first)
    assert store.jobs.claim_id(first, "w") is None  # cancelled


def test_cancel_running_and_recover_job(store: Store) -> None:
    job = store.jobs.enqueue("comment", {})
    store.jobs.claim("w1.")
    assert store.jobs.cancel_running(job, "superseded")
    assert not store.jobs.heartbeat(job, "w1.")
    assert not store.jobs.complete(job, "w1.")
    record = store.jobs.get(job)
    assert record is not None and (record.status, record.error) == (
        JobStatus.CANCELLED,
        "superseded",
    )
    assert not store.jobs.cancel_running(job, "again")

    other = store.jobs.enqueue("comment", {})
    store.jobs.claim("w2.", lease_s=3600)
    assert store.jobs.recover_job(other, retry=True, reason="x", owner="w3.") is None
    assert (
        store.jobs.recover_job(other, retry=True, reason="x", expired_before=record.created_at)
        is None
    )
    back = store.jobs.recover_job(other, retry=True, reason="gone", owner="w2.")
    assert back is not None and back.status is JobStatus.QUEUED
    store.jobs.claim("w4.")
    stopped = store.jobs.recover_job(other, retry=False, reason="gone")
    assert stopped is not None and stopped.status is JobStatus.INTERRUPTED


def test_runner_gives_back_a_job_cancelled_while_waiting(store: Store, tmp_path: Path) -> None:
    mutex = FileMutex(tmp_path / "locks")
    handler = RecordingHandler()
    runner = JobRunner(store, handler, mutex, owner_prefix=process_owner_prefix(), timing=FAST)
    job_id, _ = submit_event(store, pr_event(9, "opened", "ok-late"))
    with mutex.hold("pr-group:" + pr_group(pr_event(9))):  # the PR is busy elsewhere
        outcome: list[Outcome | None] = []
        thread = threading.Thread(target=lambda: outcome.append(runner.run_id(job_id, "t")))
        thread.start()
        wait_for_status(store, job_id, JobStatus.RUNNING)
        submit_event(store, pr_event(9, "updated", "ok-new"))
        thread.join(DEADLINE_S)
    assert outcome == [Outcome.CANCELLED]
    assert handler.tags("start") == []
    assert runner.run_id(job_id, "t") is None


def test_a_running_job_without_a_group_still_holds_its_prs_turn(
    store: Store, tmp_path: Path
) -> None:
    handler = RecordingHandler()
    runner = JobRunner(
        store, handler, FileMutex(tmp_path), owner_prefix=process_owner_prefix(), timing=FAST
    )
    old = store.jobs.enqueue(*encode_event(comment(9, "ok-old")))  # as before 0004: no group
    assert store.jobs.claim_id(old, "other-host:1:1:w:alive.", lease_s=3600) is not None
    newer = enqueue_event(store, comment(9, "ok-new"))
    outcome: list[Outcome | None] = []
    thread = threading.Thread(target=lambda: outcome.append(runner.run_id(newer, "t")))
    thread.start()
    wait_for_status(store, newer, JobStatus.RUNNING)  # claimed, waiting for its turn
    time.sleep(20 * FAST.poll_s)  # many turns offered; the older job of the PR keeps it

    assert handler.tags("start") == []
    store.jobs.complete(old)
    thread.join(DEADLINE_S)
    assert outcome == [Outcome.DONE]
    assert handler.tags("start") == ["ok-new"]


def test_a_dead_workers_job_does_not_hold_up_its_pr(store: Store, tmp_path: Path) -> None:
    handler = RecordingHandler()
    runner = JobRunner(
        store, handler, FileMutex(tmp_path), owner_prefix=process_owner_prefix(), timing=FAST
    )
    _orphan(store, comment(7, "ok-orphan"), "other-host:1:1:w:dead.", lease_s=0)
    submit_event(store, comment(7, "ok-next"))
    # No recovery has run: the orphan is still "running", older, of the same PR.
    assert runner.run_next("t") is Outcome.DONE
    assert handler.tags("start") == ["ok-next"]


def test_build_queue_follows_settings(
    store: Store, tmp_path: Path, handler: RecordingHandler
) -> None:
    inprocess = build_queue(Settings(data_dir=tmp_path, workers=2), store, handler)
    assert isinstance(inprocess, InProcessQueue)
    remote = build_queue(Settings(data_dir=tmp_path, queue="rq"), store, handler)
    assert isinstance(remote, RQQueue)


# ---- RQ -------------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("GITOPS_TEST_REDIS_URL") or "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError as error:
        message = f"Redis not reachable at {url}: {error}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (CI=true requires it; set GITOPS_TEST_REDIS_URL)")
        pytest.skip(f"{message}; set GITOPS_TEST_REDIS_URL to run RQ tests")
    return url


@pytest.fixture
def rq_queue(store: Store, redis_url: str) -> Iterator[RQQueue]:
    queue = RQQueue(store, redis_url, queue_name=f"gitops-test-{uuid.uuid4().hex}")
    queue.start()
    yield queue
    queue.rq_queue.delete(delete_jobs=True)
    queue.stop()


def _start_worker(
    queue: RQQueue, db_url: str, redis_url: str, tmp_path: Path, record: Path
) -> subprocess.Popen[bytes]:
    """`run_worker(..., burst=True)` in a real process, as `gitops-runner worker` runs it."""
    env = {
        **os.environ,
        "GITOPS_DATA_DIR": str(tmp_path),
        "GITOPS_DATABASE_URL": db_url,
        "GITOPS_REDIS_URL": redis_url,
        "GITOPS_QUEUE": "rq",
        "GITOPS_TEST_RECORD_FILE": str(record),
    }
    script = (
        "import sys\n"
        "from runner.jobs.rq_queue import run_worker\n"
        "from runner.settings import load_settings\n"
        "from tests.test_jobs import file_recording_handler\n"
        "ok = run_worker(load_settings(), file_recording_handler, burst=True,"
        " queue_name=sys.argv[1])\n"
    )
    return subprocess.Popen([sys.executable, "-c", script, queue.rq_queue.name], cwd=ROOT, env=env)


def test_rq_worker_runs_each_job_once(
    store: Store, migrated_url: str, redis_url: str, rq_queue: RQQueue, tmp_path: Path
) -> None:
    record = tmp_path / "record.txt"
    ids = [rq_queue.submit(comment(number, f"ok-{number}")) for number in range(5)]
    # A message delivered twice (or re-sent) must not run its job twice.
    assert not send_message(rq_queue.rq_queue, ids[0], attempt=0)
    rq_queue.rq_queue.enqueue_call(
        "runner.jobs.rq_queue.run_stored_job", args=(ids[0],), timeout=-1
    )
    worker = _start_worker(rq_queue, migrated_url, redis_url, tmp_path, record)
    assert worker.wait(DEADLINE_S) == 0
    assert all(status_of(store, job_id) is JobStatus.DONE for job_id in ids)
    started = [tag for what, tag in _records(record) if what == "start"]
    assert sorted(started) == [f"ok-{number}" for number in range(5)]


def test_rq_worker_hears_of_a_new_push_through_the_store(
    store: Store, migrated_url: str, redis_url: str, rq_queue: RQQueue, tmp_path: Path
) -> None:
    record = tmp_path / "record.txt"
    running = rq_queue.submit(pr_event(3, "opened", "block-old"))
    worker = _start_worker(rq_queue, migrated_url, redis_url, tmp_path, record)
    try:
        _wait_for(lambda: ("start", "block-old") in _records(record), "the autoplan to start")
        newest = rq_queue.submit(pr_event(3, "updated", "ok-new"))
        assert worker.wait(DEADLINE_S) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    records = _records(record)
    assert ("cancelled", "block-old") in records
    assert records.index(("cancelled", "block-old")) < records.index(("start", "ok-new"))
    assert status_of(store, running) is JobStatus.CANCELLED
    assert status_of(store, newest) is JobStatus.DONE


def test_rq_submit_persists_the_job_even_when_redis_is_down(store: Store) -> None:
    queue = RQQueue(store, "redis://127.0.0.1:1/0", queue_name=f"gitops-test-{uuid.uuid4().hex}")
    job_id = queue.submit(comment(1, "ok"))
    assert status_of(store, job_id) is JobStatus.QUEUED  # a worker start sends its message


def test_rq_submit_records_the_delivery_with_the_job_and_supersedes(store: Store) -> None:
    queue = RQQueue(store, "redis://127.0.0.1:1/0", queue_name=f"gitops-test-{uuid.uuid4().hex}")
    old = queue.submit(pr_event(1, "opened", "ok-old"))
    delivery = DeliveryRef("d-rq", "github", "pull_request")
    newest = queue.submit(pr_event(1, "updated", "ok-new"), delivery=delivery)
    with pytest.raises(DuplicateDelivery):
        queue.submit(pr_event(1, "updated", "ok-new"), delivery=delivery)
    wait_for_status(store, old, JobStatus.CANCELLED)
    assert status_of(store, newest) is JobStatus.QUEUED
    assert [record.id for record in store.jobs.list()] == [old, newest]
    assert queue.stop(timeout=DEADLINE_S)


def test_rq_worker_start_resends_lost_messages_and_recovers(
    store: Store, migrated_url: str, redis_url: str, rq_queue: RQQueue, tmp_path: Path
) -> None:
    record = tmp_path / "record.txt"
    lost, _ = submit_event(store, comment(1, "ok-lost"))  # persisted, never reached Redis
    host = process_owner_prefix().split(":")[0]
    dead_here = f"{host}:{2**22 + 7}:1:rq:dead."  # a process of this host that is gone
    orphan = _orphan(store, comment(2, "ok-orphan"), dead_here, lease_s=3600)
    # A row of another kind (an API-triggered drift scan) is not the RQ workers' to run.
    other_kind = store.jobs.enqueue("drift_scan", {"repo": None})
    worker = _start_worker(rq_queue, migrated_url, redis_url, tmp_path, record)
    assert worker.wait(DEADLINE_S) == 0
    assert status_of(store, lost) is JobStatus.DONE
    assert status_of(store, other_kind) is JobStatus.QUEUED
    record_of_orphan = store.jobs.get(orphan)
    assert record_of_orphan is not None
    assert (record_of_orphan.status, record_of_orphan.attempts) == (JobStatus.DONE, 2)
    started = [tag for what, tag in _records(record) if what == "start"]
    assert sorted(started) == ["ok-lost", "ok-orphan"]
