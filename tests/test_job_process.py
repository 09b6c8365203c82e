"""`serve`'s job process (runner/jobs/job_process.py) and the queue roles it uses.

The web processes' queues only store jobs (`QueueRole.SUBMIT`); one forked job process
finds them in the store, supersedes and runs them (`QueueRole.RUN`). Real forks, real
signals, the real store; the attacks: a killed job process's jobs are recovered by the
rules of runner/jobs/recovery.py (a plan runs again, an apply never does, a finished job
never runs twice), and a `serve` killed outright leaves no job process behind.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from runner.engine.project_mutex import ProjectMutex, build_mutex
from runner.jobs.cancellation import newest_by_group, supersede_groups
from runner.jobs.inprocess import InProcessQueue, QueueRole
from runner.jobs.job_process import JobProcess, run_queue
from runner.jobs.model import WorkEvent, kind_of
from runner.jobs.queue import enqueue_event
from runner.settings import Settings
from runner.store.jobs import JobStatus
from runner.store.store import Store
from runner.web.server import web_processes
from tests.support.fake_github import FakeGitHub
from tests.support.github_payloads import build_delivery, fake_sha, pull_request_event
from tests.support.jobs import FAST, REPO, comment_event, started_queues
from tests.support.mutexes import process_mutex
from tests.test_jobs import RecordingHandler, pr_event, tag_of

DEADLINE_S = 60.0
TOKEN = "ghp-test-token-123456"
ROOT = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def status(store: Store, job_id: int) -> JobStatus:
    record = store.jobs.get(job_id)
    assert record is not None
    return record.status


@pytest.fixture
def mutex(tmp_path: Path, store: Store) -> Iterator[ProjectMutex]:
    with process_mutex(tmp_path, store) as made:
        yield made


@pytest.fixture
def queues(store: Store, mutex: ProjectMutex) -> Iterator[Callable[..., InProcessQueue]]:
    with started_queues(mutex, fallback_poll_s=0.01) as make:

        def on_store(role: QueueRole, handler: object, on: Store | None = None) -> InProcessQueue:
            return make(on or store, role, handler)

        yield on_store


# ---- the roles ------------------------------------------------------------------------


def test_a_submitting_web_process_runs_and_supersedes_nothing_the_job_process_does(
    store: Store, migrated_url: str, queues: Callable[..., InProcessQueue]
) -> None:
    web_handler, job_handler = RecordingHandler(), RecordingHandler()
    web = queues(QueueRole.SUBMIT, web_handler)
    old = web.submit(pr_event(1, "opened", "ok-old"))
    newest = web.submit(pr_event(1, "updated", "ok-new"))
    other = web.submit(comment_event(REPO, 2, "ok-comment"))

    # The web side stored them and started no thread that could touch them.
    assert web.running_jobs() == []
    assert [status(store, job) for job in (old, newest, other)] == [JobStatus.QUEUED] * 3

    # The job process (its own store connection, as in another process) takes over.
    with Store.open(migrated_url, upgrade=False) as its_store:
        queues(QueueRole.RUN, job_handler, on=its_store)
        wait_for(lambda: status(store, newest) is JobStatus.DONE, "the newest push to run")
        wait_for(lambda: status(store, other) is JobStatus.DONE, "the comment to run")
    record = store.jobs.get(old)
    assert record is not None and record.status is JobStatus.CANCELLED
    assert f"superseded by job {newest}" in (record.error or "")
    assert sorted(job_handler.tags("start")) == ["ok-comment", "ok-new"]
    assert web_handler.tags("start") == []


def test_superseding_many_prs_at_once_cancels_what_one_push_at_a_time_would(
    store: Store,
) -> None:
    jobs: list[tuple[int, WorkEvent]] = []

    def stored(event: WorkEvent) -> int:
        job_id = enqueue_event(store, event)
        jobs.append((job_id, event))
        return job_id

    opened = {number: stored(pr_event(number, "opened", f"ok-{number}-0")) for number in (1, 2)}
    command = stored(comment_event(REPO, 1, "ok-command"))  # a person asked: kept
    untouched = stored(pr_event(3, "opened", "ok-3-0"))  # no push to PR 3
    pushes = [stored(pr_event(1, "updated", f"ok-1-{n}")) for n in (1, 2, 3)]
    closed = stored(pr_event(2, "closed", "ok-2-closed"))

    newest = newest_by_group(jobs)
    result = supersede_groups(store, newest)

    cancelled = sorted([opened[1], *pushes[:-1], opened[2]])
    assert sorted(result.queued) == cancelled and result.running == []
    for job_id in cancelled:
        assert status(store, job_id) is JobStatus.CANCELLED
    for job_id in (command, untouched, pushes[-1], closed):
        assert status(store, job_id) is JobStatus.QUEUED
    record = store.jobs.get(opened[2])
    assert (
        record is not None and record.error == f"superseded by job {closed} (pull request closed)"
    )
    assert {kind_of(event) for _, event in newest.values()} == {"pull_request"}


# ---- the process ----------------------------------------------------------------------


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def append(path: Path, line: str) -> None:
    with path.open("a") as sink:
        sink.write(line + "\n")


def pids_started(path: Path) -> list[int]:
    return [int(line.split()[1]) for line in lines(path) if line.startswith("started")]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not reaped yet by its parent) has ended too.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def note_life(record: Path) -> Callable[[threading.Event], None]:
    def main(stop: threading.Event) -> None:
        append(record, f"started {os.getpid()}")
        stop.wait()
        append(record, f"stopped {os.getpid()}")

    return main


def test_stopping_serve_stops_its_job_process_gracefully(tmp_path: Path) -> None:
    record = tmp_path / "life"
    jobs = JobProcess(note_life(record), restart_delay_s=0.05)
    jobs.start()
    wait_for(lambda: len(pids_started(record)) == 1, "the job process to start")

    assert jobs.stop(timeout=DEADLINE_S)

    (pid,) = pids_started(record)
    assert lines(record) == [f"started {pid}", f"stopped {pid}"]
    assert not alive(pid)


def test_a_job_process_that_dies_is_replaced(tmp_path: Path) -> None:
    record = tmp_path / "life"
    jobs = JobProcess(note_life(record), restart_delay_s=0.05)
    jobs.start()
    try:
        wait_for(lambda: len(pids_started(record)) == 1, "the job process to start")
        os.kill(pids_started(record)[0], signal.SIGKILL)
        wait_for(lambda: len(pids_started(record)) == 2, "a new job process")
    finally:
        jobs.stop(timeout=DEADLINE_S)
    first, second = pids_started(record)
    assert first != second and not alive(first) and not alive(second)


def test_a_serve_killed_outright_leaves_no_job_process_running(tmp_path: Path) -> None:
    # The attack: `serve` SIGKILLed (OOM killer, kill -9). Its job process must not go
    # on running jobs beside the next `serve`'s job process.
    record = tmp_path / "life"
    script = textwrap.dedent(
        f"""
        import threading, time
        from pathlib import Path
        from runner.jobs.job_process import JobProcess
        from tests.test_job_process import note_life
        JobProcess(note_life(Path({str(record)!r}))).start()
        time.sleep(600)
        """
    )
    serve = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        wait_for(lambda: len(pids_started(record)) == 1, "the job process to start")
        serve.kill()
        serve.wait()
        (pid,) = pids_started(record)
        wait_for(lambda: not alive(pid), "the orphaned job process to end")
    finally:
        serve.kill()
    assert lines(record) == [f"started {pid}", f"stopped {pid}"]


# ---- a killed job process's jobs: recovery.py's rules ------------------------------------


class BlockingHandler:
    """Appends `start <tag>` lines; tags with `block` wait for a release file; tags with
    `apply` are applies (never re-run after a crash: interrupted and reported)."""

    def __init__(self, record: Path) -> None:
        self._record = record

    def handle(self, event: WorkEvent, cancel: threading.Event) -> None:
        tag = tag_of(event)
        append(self._record, f"start {tag}")
        release = self._record.with_name(f"release-{tag}")
        while "block" in tag and not (release.exists() or cancel.is_set()):
            cancel.wait(0.02)

    def is_apply(self, event: WorkEvent) -> bool:
        return "apply" in tag_of(event)

    def report_interrupted(self, event: WorkEvent) -> None:
        append(self._record, f"interrupted {tag_of(event)}")


def run_jobs_from(
    url: str, data_dir: Path, record: Path, **queue_options: Any
) -> Callable[[threading.Event], None]:
    """What `wiring.run_job_process` does, with the test's handler (and `queue_options`
    for its queue, e.g. the wake-up channel)."""

    def main(stop: threading.Event) -> None:
        with Store.open(url, upgrade=False) as store:
            queue = InProcessQueue(
                store,
                BlockingHandler(record),
                2,
                mutex=build_mutex(Settings(data_dir=data_dir), store),
                timing=FAST,
                role=QueueRole.RUN,
                **queue_options,
            )
            run_queue(queue, stop, stop_timeout_s=0.1)

    return main


def test_jobs_of_a_killed_job_process_are_recovered_once_and_an_apply_never_reruns(
    store: Store, migrated_url: str, tmp_path: Path
) -> None:
    record = tmp_path / "jobs"
    started = lambda tag: [line for line in lines(record) if line == f"start {tag}"]  # noqa: E731
    jobs = JobProcess(run_jobs_from(migrated_url, tmp_path, record), restart_delay_s=0.05)
    finished = enqueue_event(store, comment_event(REPO, 1, "ok-finished"))
    jobs.start()
    try:
        wait_for(lambda: status(store, finished) is JobStatus.DONE, "the first job to finish")
        plan = enqueue_event(store, comment_event(REPO, 2, "block-plan"))
        apply = enqueue_event(store, comment_event(REPO, 3, "block-apply"))
        wait_for(lambda: started("block-plan") and started("block-apply"), "both to start")
        victim = jobs.pid
        assert victim is not None

        os.kill(victim, signal.SIGKILL)  # mid-plan and mid-apply

        wait_for(lambda: len(started("block-plan")) == 2, "the plan to run again")
        record.with_name("release-block-plan").touch()
        wait_for(lambda: status(store, plan) is JobStatus.DONE, "the re-run plan to finish")
        wait_for(lambda: status(store, apply) is JobStatus.INTERRUPTED, "the apply to stop")
    finally:
        jobs.stop(timeout=DEADLINE_S)
    assert jobs.pid is None or not alive(victim)
    assert len(started("ok-finished")) == 1
    assert len(started("block-apply")) == 1
    assert "interrupted block-apply" in lines(record)


def test_a_pr_event_the_web_side_stored_runs_once_in_the_job_process(
    store: Store, migrated_url: str, tmp_path: Path, queues: Callable[..., InProcessQueue]
) -> None:
    record = tmp_path / "jobs"
    web = queues(QueueRole.SUBMIT, RecordingHandler())
    jobs = JobProcess(run_jobs_from(migrated_url, tmp_path, record), restart_delay_s=0.05)
    jobs.start()
    try:
        ids = [web.submit(pr_event(number, "opened", f"ok-{number}")) for number in range(8)]
        wait_for(
            lambda: all(status(store, job) is JobStatus.DONE for job in ids), "the jobs to run"
        )
    finally:
        jobs.stop(timeout=DEADLINE_S)
    assert sorted(lines(record)) == sorted(f"start ok-{number}" for number in range(8))


# ---- `gitops-runner serve` -------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_serve_runs_the_jobs_in_its_job_process_not_in_gunicorn(tmp_path: Path) -> None:
    from runner import wiring

    if not hasattr(wiring, "run_job_process"):
        pytest.skip("the runner/wiring.py and runner/cli.py patch is not applied yet")
    github = FakeGitHub(token=TOKEN).start()
    github.add_repo("acme/infra", clone_url="file:///nonexistent/infra.git")
    # The PR's head moved on: the autoplan fetches it, sees a stale delivery and skips.
    number = github.open_pull(
        "acme/infra", head_sha=fake_sha("head"), head_ref="f", base_sha=fake_sha("base"),
        user="alice", files=["main.tf"],
    )  # fmt: skip
    stale = dataclasses.replace(github.pull("acme/infra", number), head_sha=fake_sha("old"))
    payload = pull_request_event("opened", github.repo("acme/infra"), stale, "alice")
    env = {name: value for name, value in os.environ.items() if not name.startswith("GITOPS_")}
    env |= {
        "GITOPS_DATA_DIR": str(tmp_path / "data"),
        "GITOPS_HOST": "127.0.0.1",
        "GITOPS_PORT": "0",
        "GITOPS_GITHUB_WEBHOOK_SECRET": "s3cret",
        "GITOPS_GITHUB_TOKEN": TOKEN,
        "GITOPS_GITHUB_API_URL": github.api_url,
        "GITOPS_DASHBOARD": "off",
        "GITOPS_WORKERS": "1",
    }
    env.pop("GUNICORN_CMD_ARGS", None)
    serve = subprocess.Popen(
        [sys.executable, "-m", "runner", "serve"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = listening_url(serve)
        body, headers = build_delivery("pull_request", payload, "s3cret", "serve-1")
        answer = requests.post(f"{url}/events", data=body, headers=headers, timeout=60)
        assert answer.status_code == 202
        with Store.open(f"sqlite:///{tmp_path / 'data' / 'gitops-runner.db'}") as store:
            job = answer.json()["job"]
            wait_for(lambda: status(store, job) is JobStatus.DONE, "the job to run")
            record = store.jobs.get(job)
        assert record is not None and record.lease_owner is not None
        runner_pid = int(record.lease_owner.split(":")[1])
        processes = children_of(serve.pid)
        # The job process beside serve's default web processes (one per core, at most 2).
        assert len(processes) == 1 + web_processes(web_runs_jobs=False)
        assert runner_pid in processes
        # The job process, at its lower priority; the others answer webhooks.
        web = [pid for pid in processes if pid != runner_pid]
        assert all(niceness(runner_pid) > niceness(pid) for pid in web)
    finally:
        serve.terminate()
        serve.communicate(timeout=120)
        github.stop()
    assert not alive(runner_pid)


def listening_url(process: subprocess.Popen[str]) -> str:
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if "Listening at: " in line:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # keep draining
            return line.split("Listening at: ", 1)[1].split()[0]
    raise AssertionError("serve exited before listening:\n" + "".join(seen))
