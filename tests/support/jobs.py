"""Job helpers the queues do not need, and a scaled-out deployment in processes.

The queues supersede in the background (cancellation.Superseder); tests that check
what a job obsoletes want it done when the call returns (`submit_event`).

`Deployment` runs real `gitops-runner serve` and `gitops-runner worker` processes on
one PostgreSQL database and one Redis (a queue name of its own), as a scaled-out
installation does; tests post webhooks to the web processes over HTTP and read the
outcome from the database.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from redis import Redis, RedisError

from runner.engine.project_mutex import ProjectMutex
from runner.events.comment_parser import parse_comment
from runner.events.model import CommentEvent, RepoRef
from runner.jobs.cancellation import Superseded, supersede
from runner.jobs.inprocess import InProcessQueue, QueueRole
from runner.jobs.model import WorkEvent
from runner.jobs.queue import JobTiming, enqueue_event
from runner.store.deliveries import DeliveryRef
from runner.store.jobs import JobRecord
from runner.store.store import Store

# Short leases and polls, so tests of the queues finish quickly.
FAST = JobTiming(lease_s=10.0, heartbeat_s=1.0, poll_s=0.05, lease_grace_s=0.0)

REPO = RepoRef(
    forge="github",
    full_name="acme/infra",
    clone_url="https://github.com/acme/infra.git",
    html_url="https://github.com/acme/infra",
    default_branch="main",
)


@contextmanager
def started_queues(mutex: ProjectMutex, **defaults: Any) -> Iterator[Callable[..., InProcessQueue]]:
    """`make(store, role, handler, **options)`: a started `InProcessQueue` (2 workers,
    `FAST` timing, `defaults` then `options`), every one stopped when the block ends."""
    made: list[InProcessQueue] = []

    def make(store: Store, role: QueueRole, handler: Any, **options: Any) -> InProcessQueue:
        queue = InProcessQueue(
            store, handler, 2, mutex=mutex, timing=FAST, role=role, **{**defaults, **options}
        )
        made.append(queue)
        queue.start()
        return queue

    try:
        yield make
    finally:
        for queue in made:
            queue.stop(timeout=0)


def submit_event(
    store: Store, event: WorkEvent, delivery: DeliveryRef | None = None
) -> tuple[int, Superseded]:
    """`enqueue_event`, then supersede what the job obsoletes, synchronously."""
    job_id = enqueue_event(store, event, delivery)
    return job_id, supersede(store, event, job_id)


def comment_event(repo: RepoRef, number: int, body: str, author: str = "bob") -> CommentEvent:
    """A PR comment as the webhook hands it on: its body parsed once, here."""
    return CommentEvent(
        repo=repo,
        pr_number=number,
        comment_id=1,
        body=body,
        author=author,
        author_is_bot=False,
        command=parse_comment(body),
    )


# ---- a scaled-out deployment in processes ---------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_url_or_skip() -> str:
    """GITOPS_TEST_REDIS_URL (default: the local server) if it answers; skip, or fail on CI."""
    url = os.environ.get("GITOPS_TEST_REDIS_URL") or DEFAULT_REDIS_URL
    try:
        Redis.from_url(url, socket_connect_timeout=3).ping()
    except RedisError as error:
        message = f"Redis not reachable at {url}: {error}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (CI=true requires it; set GITOPS_TEST_REDIS_URL)")
        pytest.skip(f"{message}; set GITOPS_TEST_REDIS_URL to run Redis tests")
    return url


def runner_env(data_dir: Path, values: Mapping[str, str]) -> dict[str, str]:
    """The environment of a runner process: none of the host's GITOPS_* settings."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("GITOPS_")}
    for name in ("WEB_CONCURRENCY", "GUNICORN_CMD_ARGS"):
        inherited.pop(name, None)
    return inherited | {"PYTHONPATH": str(ROOT), "GITOPS_DATA_DIR": str(data_dir)} | dict(values)


class RunnerProcess:
    """`gitops-runner ARGS` in a subprocess; its output goes to `log` (read it on failure)."""

    def __init__(self, name: str, args: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._sink = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runner", *args],
            cwd=ROOT,
            env=dict(env),
            # One pipe for both: gunicorn logs to stderr, RQ to stdout.
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._drain, name=f"log-{name}", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _drain(self) -> None:
        # Keep reading, or a full pipe would block the process.
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._sink.write(line)
            self._sink.flush()
            self._lines.put(line)

    def wait_for_line(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"{self.name}: no {pattern!r}:\n{self.log.read_text()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL, then reap it: a zombie's pid would still look alive to recovery."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._sink.close()


class Deployment:
    """Web and worker processes on one PostgreSQL database and one Redis, as a scaled-out
    deployment runs them; the test reads the outcome from the same database."""

    def __init__(self, root: Path, database_url: str, values: Mapping[str, str]) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.values = {
            "GITOPS_DATABASE_URL": database_url,
            "GITOPS_QUEUE": "rq",
            "GITOPS_QUEUE_NAME": f"gitops-test-{uuid.uuid4().hex[:12]}",
            "GITOPS_HOST": "127.0.0.1",
            "GITOPS_PORT": "0",
            "GITOPS_PARALLELISM": "2",
            **values,
        }
        self.webs: list[RunnerProcess] = []
        self.workers: list[RunnerProcess] = []
        self.urls: list[str] = []
        self.store = Store.open(database_url, upgrade=False)

    def _env(self, name: str) -> dict[str, str]:
        return runner_env(self.root / name, self.values)

    def start_web(self, *options: str) -> str:
        """`gitops-runner serve` on a port the OS picks; its base URL."""
        name = f"web{len(self.webs) + 1}"
        web = RunnerProcess(name, [*options, "serve"], self._env(name), self.root / f"{name}.log")
        self.webs.append(web)
        port = web.wait_for_line(r"Listening at: http://127\.0\.0\.1:(\d+)").group(1)
        url = f"http://127.0.0.1:{port}"
        self.urls.append(url)
        return url

    def start_worker(self, *options: str, kinds: str | None = None) -> RunnerProcess:
        name = f"worker{len(self.workers) + 1}"
        args = [*options, "worker", *(["--kinds", kinds] if kinds else [])]
        worker = RunnerProcess(name, args, self._env(name), self.root / f"{name}.log")
        self.workers.append(worker)
        worker.wait_for_line(r"Listening on", timeout=60)  # RQ: ready for messages
        return worker

    def logs(self) -> str:
        parts = [f"== {p.name}\n{p.log.read_text()[-3000:]}" for p in self.webs + self.workers]
        return "\n".join(parts)

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.logs()}")
            time.sleep(0.2)

    def idle(self) -> bool:
        return not any(j.status.value in ("queued", "running") for j in self.store.jobs.list())

    def stop(self) -> None:
        for process in self.webs + self.workers:
            process.stop()
        self.store.close()


def owner_pid(record: JobRecord) -> int | None:
    """The pid in a job's lease owner (`host:pid:start:label:nonce.`)."""
    if not record.lease_owner:
        return None
    return int(record.lease_owner.split(":")[1])
