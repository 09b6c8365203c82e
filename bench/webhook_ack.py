"""Webhook acknowledgement latency of the real `gitops-runner serve` under concurrent load.

Starts the service exactly as `gitops-runner serve` does (a subprocess running the CLI:
gunicorn with its default web processes, gthread, and the job process beside them), on a
free loopback port, with a temporary data dir (SQLite) and a webhook secret. Then N
clients each send M correctly signed `pull_request` deliveries with unique
`X-GitHub-Delivery` ids, and the time from sending a request to receiving its answer is
measured on the client side. Reports p50 / p95 / p99 / max and the throughput, per round
and over all rounds (issue target: p99 < 100 ms), the CPU per delivery of the server,
of the load generator and of the rest of this process (the fake GitHub), plus the
server's own `gitops_webhook_ack_seconds` histogram from `/metrics`.

The load generator is one thread driving non-blocking sockets (`LoadLoop`): requests
are built and signed before the clock starts, so it costs ~0.1-0.2 ms of CPU per
delivery on the cores it shares with the server, and no client waits for this
process's GIL before it can read its answer.

The queued jobs must stay harmless but real, so they run as in production and compete
for the same cores: in `serve`'s job process (`GITOPS_JOB_PROCESS`, the default), or in
the web process itself with `--no-job-process`. `GITOPS_GITHUB_API_URL` points at a fake GitHub
(tests/support/fake_github.py, in this process) where every PR has a head sha other
than the one in the deliveries. Each job therefore makes one API call, sees that the
delivery is stale and skips ("superseded autoplan"); nothing is cloned or planned.
`GITOPS_WORKERS=1` (one job thread). The server's CPU below is its whole process tree
(web and job processes).

By default each delivery opens a new connection, as GitHub's Hookshot does;
`--keep-alive` reuses one connection per client.

    .venv/bin/python bench/webhook_ack.py                 # 50 clients x 20, 3 rounds, closed loop
    .venv/bin/python bench/webhook_ack.py --burst         # waves of 50 sent at once
    .venv/bin/python bench/webhook_ack.py --rate 300      # open loop: 300 deliveries/s
    .venv/bin/python bench/webhook_ack.py --action opened
    .venv/bin/python bench/webhook_ack.py --processes 2 --threads 16   # gunicorn sizing
    .venv/bin/python bench/webhook_ack.py --no-job-process  # jobs on the web process's threads
    .venv/bin/python bench/webhook_ack.py --smoke         # 5 clients x 4, 1 round (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.store.jobs import JobStatus
from runner.store.store import Store
from tests.support.fake_github import FakeGitHub
from tests.support.github_payloads import (
    build_delivery,
    fake_sha,
    pull_request_event,
)

FULL_NAME = "acme/infra"
SECRET = "bench-webhook-secret"
TOKEN = "ghp-bench-token-123456"
TARGET_P99_S = 0.100
# Server-side histogram buckets (runner/web/app.py `_ACK_BUCKETS`) reported back.
REPORTED_BUCKETS = ("0.01", "0.025", "0.05", "0.1", "0.25")


@dataclass(frozen=True)
class Delivery:
    """One pre-built request: built and signed before the clock starts."""

    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class RoundResult:
    """Client-side latencies (seconds) of one round and its wall time."""

    latencies: list[float]
    wall_s: float
    failures: list[str]
    client_cpu_s: float  # the load loop's own CPU (its thread only)


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with `fraction` of the samples at or below."""
    index = max(0, min(len(sorted_values) - 1, int(fraction * len(sorted_values) + 0.999999) - 1))
    return sorted_values[index]


def start_fake_github(clients: int) -> FakeGitHub:
    """A fake GitHub where PR i (one per client) has a head sha no delivery carries.

    The queued autoplans then fetch the PR, see a newer head and skip: the job path
    is exercised without cloning a repository or running Terraform.
    """
    github = FakeGitHub(token=TOKEN).start()
    github.add_repo(FULL_NAME, clone_url="file:///nonexistent/bench-infra.git")
    github.set_permission(FULL_NAME, "alice", "write")
    for client in range(clients):
        github.open_pull(
            FULL_NAME,
            head_sha=fake_sha("current-head", client),
            head_ref=f"feature-{client}",
            base_sha=fake_sha("base"),
            user="alice",
            files=["infra/app/main.tf"],
        )
    return github


def build_deliveries(
    github: FakeGitHub, clients: int, per_client: int, action: str, round_number: int
) -> list[list[Delivery]]:
    """`per_client` signed deliveries for each client, for its own PR (number client + 1)."""
    repo = github.repo(FULL_NAME)
    batches: list[list[Delivery]] = []
    for client in range(clients):
        pull = github.pull(FULL_NAME, client + 1)
        batch = []
        for index in range(per_client):
            stale = dataclasses.replace(
                pull, head_sha=fake_sha("delivered-head", round_number, client, index)
            )
            before = fake_sha("before", round_number, client, index)
            payload = pull_request_event(
                action,
                repo,
                stale,
                "alice",
                before=before if action == "synchronize" else None,
                hosts=github.hosts,
            )
            body, headers = build_delivery("pull_request", payload, SECRET, str(uuid.uuid4()))
            batch.append(Delivery(body, headers))
        batches.append(batch)
    return batches


def start_server(
    data_dir: Path,
    port: int,
    github: FakeGitHub,
    log: Path,
    processes: int | None = None,
    threads: int | None = None,
    gunicorn_args: str = "",
    database_url: str | None = None,
    job_process: bool = True,
) -> subprocess.Popen:
    """`gitops-runner serve` configured through the environment, as an operator would."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GITOPS_", "GUNICORN_")) and key != "WEB_CONCURRENCY"
    }
    env |= {
        "GITOPS_DATA_DIR": str(data_dir),
        "GITOPS_HOST": "127.0.0.1",
        "GITOPS_PORT": str(port),
        "GITOPS_GITHUB_WEBHOOK_SECRET": SECRET,
        "GITOPS_GITHUB_TOKEN": TOKEN,
        "GITOPS_GITHUB_API_URL": github.api_url,
        "GITOPS_WORKERS": "1",
        # Webhooks only: the dashboard (which would need sign-in) is not measured here.
        "GITOPS_DASHBOARD": "off",
        "GITOPS_METRICS_PUBLIC": "true",  # the server's own ack histogram is read below
        "GITOPS_JOB_PROCESS": "true" if job_process else "false",
    }
    if processes is not None:
        # gunicorn worker processes; `serve` reads the usual variable (runner/web/server.py).
        env["WEB_CONCURRENCY"] = str(processes)
    if database_url is not None:  # migrated by the bench (`fresh_schema`)
        env["GITOPS_DATABASE_URL"] = database_url
    # The operator's escape hatch (runner/web/server.py), e.g. "--worker-connections 8".
    extra = f"--threads {threads} " if threads is not None else ""
    if extra or gunicorn_args:
        env["GUNICORN_CMD_ARGS"] = extra + gunicorn_args
    # `python -m runner serve` is what the installed command runs for `serve` (never
    # handed to a CLI server), and works for a copy of older code on PYTHONPATH.
    argv = [sys.executable, "-m", "runner", "serve"]
    with log.open("wb") as sink:
        # A session of its own: the whole gunicorn tree is stopped by this child's pgid.
        return subprocess.Popen(
            argv, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_ready(base_url: str, server: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Poll `/healthz` until the worker has built its app and answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM the gunicorn tree we started (graceful), SIGKILL it if it hangs."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


# ---- the load generator: one thread, non-blocking sockets -----------------------------
# Client threads with `requests` cost ~1.3 ms CPU per delivery on the same two cores as
# the server, and each queued for this process's GIL before it could read its answer,
# which counted as server latency. One selector loop over raw sockets sends pre-built
# request bytes and reads the answers instead; its own CPU is measured
# (`time.thread_time` of the loop) and reported apart from the fake GitHub's.

ROUND_TIMEOUT_S = 120.0  # a round still unanswered by then fails (and the bench stops)


def request_bytes(host: str, delivery: Delivery, keep_alive: bool) -> bytes:
    """The whole HTTP/1.1 request, built before the clock starts."""
    headers = delivery.headers | {
        "Host": host,
        "Content-Length": str(len(delivery.body)),
        "Connection": "keep-alive" if keep_alive else "close",
    }
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"POST /events HTTP/1.1\r\n{head}\r\n".encode("latin-1") + delivery.body


def parse_response(data: bytes | bytearray) -> int | None:
    """The status once the head and the Content-Length body have arrived, else None."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(data[:end]).decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if len(data) < end + 4 + length:
        return None
    return int(lines[0].split(" ", 2)[1])


@dataclass
class Exchange:
    """One delivery in flight: its socket, what was sent, what came back."""

    client: int
    request: bytes
    start: float
    sock: socket.socket
    sent: int = 0
    received: bytearray = dataclasses.field(default_factory=bytearray)


class LoadLoop:
    """Sends deliveries on non-blocking sockets from one thread and times each answer.

    `start(client, request, t)` opens (or, with keep-alive, reuses) the client's
    connection and sends; `on_done(client)` is called when its answer is complete, so a
    closed loop can send the client's next delivery at once.
    """

    def __init__(self, address: tuple[str, int], keep_alive: bool) -> None:
        self._address = address
        self._keep_alive = keep_alive
        self._selector = selectors.DefaultSelector()
        self._idle: dict[int, socket.socket] = {}  # keep-alive connections between sends
        self.in_flight: dict[socket.socket, Exchange] = {}
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.on_done: Callable[[int], None] = lambda _client: None

    def start(self, client: int, request: bytes, started: float) -> None:
        sock = self._idle.pop(client, None)
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            sock.connect_ex(self._address)  # EINPROGRESS: writable once connected
        self.in_flight[sock] = Exchange(client, request, started, sock)
        self._selector.register(sock, selectors.EVENT_WRITE)

    def poll(self, timeout: float | None) -> None:
        """Wait up to `timeout` for sockets, and move every ready exchange on."""
        for key, events in self._selector.select(timeout):
            exchange = self.in_flight[key.fileobj]  # type: ignore[index]
            try:
                if events & selectors.EVENT_WRITE:
                    self._send(exchange)
                else:
                    self._receive(exchange)
            except OSError as error:
                self._end(exchange, f"client {exchange.client}: {error!r}")

    def fail_stuck(self, older_than: float) -> None:
        for exchange in list(self.in_flight.values()):
            if exchange.start < older_than:
                self._end(exchange, f"client {exchange.client}: no answer in time")

    def close(self) -> None:
        for sock in self._idle.values():
            sock.close()
        self._selector.close()

    def _send(self, exchange: Exchange) -> None:
        exchange.sent += exchange.sock.send(exchange.request[exchange.sent :])
        if exchange.sent == len(exchange.request):
            self._selector.modify(exchange.sock, selectors.EVENT_READ)

    def _receive(self, exchange: Exchange) -> None:
        chunk = exchange.sock.recv(65536)
        exchange.received += chunk
        status = parse_response(exchange.received)
        if status is None and chunk:
            return
        now = time.perf_counter()
        if status is None:
            self._end(exchange, f"client {exchange.client}: connection closed early")
            return
        self.latencies.append(now - exchange.start)
        body = bytes(exchange.received).partition(b"\r\n\r\n")[2][:200]
        failure = None if status == 202 else f"client {exchange.client}: HTTP {status} {body!r}"
        self._end(exchange, failure, reuse=self._keep_alive)

    def _end(self, exchange: Exchange, failure: str | None, reuse: bool = False) -> None:
        self._selector.unregister(exchange.sock)
        del self.in_flight[exchange.sock]
        if failure is not None:
            self.failures.append(failure)
        if reuse and failure is None:
            self._idle[exchange.client] = exchange.sock
        else:
            exchange.sock.close()
        self.on_done(exchange.client)


def run_round(
    address: tuple[str, int],
    batches: list[list[Delivery]],
    keep_alive: bool,
    mode: str = "closed",
    rate: float | None = None,
) -> RoundResult:
    """Send every batch's deliveries; latency is from a delivery's start to its answer.

    `closed`: each client sends its next delivery as soon as the previous one is
    answered, so `clients` requests are in flight all the time.
    `burst`: waves of one delivery per client, all sent at once; the next wave starts
    when the last answer of this one has come (latency from the wave's start).
    `open` (`rate`): delivery k of client i is due at t0 + (k * clients + i) / rate and
    is sent then, however many are in flight; its latency counts from that due time,
    so a server falling behind shows in the numbers (no coordinated omission).
    """
    host = f"{address[0]}:{address[1]}"
    pending = [deque(request_bytes(host, d, keep_alive) for d in batch) for batch in batches]
    loop = LoadLoop(address, keep_alive)
    cpu_before = time.thread_time()
    t0 = time.perf_counter()
    if mode == "open":
        assert rate is not None
        _open_loop(loop, pending, rate, t0)
    elif mode == "burst":
        _bursts(loop, pending)
    else:
        _closed_loop(loop, pending)
    wall = time.perf_counter() - t0
    client_cpu = time.thread_time() - cpu_before
    loop.close()
    return RoundResult(loop.latencies, wall, loop.failures, client_cpu)


def _drain(loop: LoadLoop, until: Callable[[], bool]) -> None:
    deadline = time.perf_counter() + ROUND_TIMEOUT_S
    while not until():
        loop.poll(1.0)
        if time.perf_counter() > deadline:
            loop.fail_stuck(deadline)
            return


def _closed_loop(loop: LoadLoop, pending: list[deque[bytes]]) -> None:
    def next_of(client: int) -> None:
        if pending[client]:
            loop.start(client, pending[client].popleft(), time.perf_counter())

    loop.on_done = next_of
    for client in range(len(pending)):
        next_of(client)
    _drain(loop, lambda: not loop.in_flight)


def _bursts(loop: LoadLoop, pending: list[deque[bytes]]) -> None:
    while any(pending):
        started = time.perf_counter()
        for client, queue in enumerate(pending):
            if queue:
                loop.start(client, queue.popleft(), started)
        _drain(loop, lambda: not loop.in_flight)


def _open_loop(loop: LoadLoop, pending: list[deque[bytes]], rate: float, t0: float) -> None:
    clients = len(pending)
    schedule = deque(
        (t0 + (number * clients + client) / rate, client, request)
        for client, queue in enumerate(pending)
        for number, request in enumerate(queue)
    )
    schedule = deque(sorted(schedule, key=lambda item: item[0]))
    while schedule:
        now = time.perf_counter()
        while schedule and schedule[0][0] <= now:
            due, client, request = schedule.popleft()
            loop.start(client, request, due)
        if schedule:
            loop.poll(max(0.0, schedule[0][0] - time.perf_counter()))
    _drain(loop, lambda: not loop.in_flight)


@dataclass(frozen=True)
class ServerCpu:
    """CPU seconds of the server's processes: gunicorn (master and web workers) and the
    job process, told apart by its niceness (it runs at nice > 0, `jobs/job_process.py`)."""

    web_s: float = 0.0
    jobs_s: float = 0.0

    def __sub__(self, earlier: ServerCpu) -> ServerCpu:
        return ServerCpu(self.web_s - earlier.web_s, self.jobs_s - earlier.jobs_s)


def server_cpu(pid: int) -> ServerCpu:
    """CPU (user + system) of `pid` and its children so far (Linux /proc; else zeros).

    Tells how the two cores were shared between the web process, the job process and
    this load generator.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    web = jobs = 0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for member in [str(pid), *children]:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            used = int(fields[11]) + int(fields[12])  # utime, stime
            if int(fields[16]) > 0:  # nice
                jobs += used
            else:
                web += used
    except (OSError, IndexError, ValueError):
        return ServerCpu()
    return ServerCpu(web / ticks, jobs / ticks)


def describe(latencies: list[float], wall_s: float | None) -> str:
    """One line: count, p50/p95/p99/max in ms, and throughput when a wall time is given."""
    ordered = sorted(latencies)
    parts = [
        f"n={len(ordered):5d}",
        f"p50 {percentile(ordered, 0.50) * 1000:6.1f}",
        f"p95 {percentile(ordered, 0.95) * 1000:6.1f}",
        f"p99 {percentile(ordered, 0.99) * 1000:6.1f}",
        f"max {ordered[-1] * 1000:6.1f} ms",
    ]
    if wall_s is not None:
        parts.append(f"{len(ordered) / wall_s:6.0f} req/s")
    return "  ".join(parts)


def server_histogram(base_url: str) -> str:
    """The service's own view: acks counted, mean, and share under a few bucket bounds."""
    text = requests.get(f"{base_url}/metrics", timeout=10).text
    buckets: dict[str, float] = {}
    count = total = 0.0
    for line in text.splitlines():
        if line.startswith('gitops_webhook_ack_seconds_bucket{forge="github"'):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[bound] = float(line.rsplit(" ", 1)[1])
        elif line.startswith('gitops_webhook_ack_seconds_count{forge="github"'):
            count = float(line.rsplit(" ", 1)[1])
        elif line.startswith('gitops_webhook_ack_seconds_sum{forge="github"'):
            total = float(line.rsplit(" ", 1)[1])
    if not count:
        return "server histogram: no github acks recorded"
    shares = "  ".join(
        f"<={float(bound) * 1000:g}ms {buckets[bound] / count:6.1%}"
        for bound in REPORTED_BUCKETS
        if bound in buckets
    )
    return f"server-side (handler only): n={count:.0f} mean {total / count * 1000:.1f} ms  {shares}"


def job_counts(data_dir: Path, database_url: str | None) -> str:
    """How far the single job worker got through the queued (harmless) jobs."""
    store = Store.open(database_url or f"sqlite:///{data_dir / 'gitops-runner.db'}")
    try:
        counts = {status.value: len(store.jobs.list(status=status)) for status in JobStatus}
    finally:
        store.close()
    return "jobs by status: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v)


@contextmanager
def database(postgres: bool) -> Iterator[str | None]:
    """None (the default SQLite in the data dir), or a fresh PostgreSQL schema's URL."""
    if not postgres:
        yield None
        return
    from bench.scale_out import DEFAULT_POSTGRES, fresh_schema

    with fresh_schema(os.environ.get("GITOPS_TEST_POSTGRES_URL") or DEFAULT_POSTGRES) as url:
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20, help="deliveries per client")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--action",
        choices=("synchronize", "opened"),
        default="synchronize",
        help="pull_request action; synchronize (a push) also supersedes queued autoplans",
    )
    parser.add_argument("--keep-alive", action="store_true", help="one connection per client")
    parser.add_argument(
        "--rate", type=float, help="open loop: deliveries per second over all clients"
    )
    parser.add_argument(
        "--burst",
        action="store_true",
        help="waves of one delivery per client sent at once (the next after the last answer)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        help="gunicorn worker processes (WEB_CONCURRENCY; default: serve's own)",
    )
    parser.add_argument(
        "--threads", type=int, help="gunicorn threads per process (default: serve's own)"
    )
    parser.add_argument(
        "--gunicorn-args", default="", help="more gunicorn options, as in GUNICORN_CMD_ARGS"
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="PostgreSQL (GITOPS_TEST_POSTGRES_URL, a schema of its own) instead of SQLite",
    )
    parser.add_argument(
        "--no-job-process",
        action="store_true",
        help="GITOPS_JOB_PROCESS=false: jobs on threads of the web process(es)",
    )
    parser.add_argument("--smoke", action="store_true", help="5 clients x 4, one round (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.requests, args.rounds = 5, 4, 1

    load_before = os.getloadavg()
    github = start_fake_github(args.clients)
    results: list[RoundResult] = []
    cpu: list[tuple[ServerCpu, float]] = []  # (server, this process) per round
    with (
        tempfile.TemporaryDirectory(prefix="gitops-bench-ack-") as scratch,
        database(args.postgres) as database_url,
    ):
        root = Path(scratch)
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        address = ("127.0.0.1", port)
        mode = "open" if args.rate else "burst" if args.burst else "closed"
        log = root / "serve.log"
        # Built and signed before the server starts: rounds then follow each other at once.
        warm = build_deliveries(
            github, min(args.clients, int(os.environ.get("WARM", 5))), 1, args.action, -1
        )
        rounds = [
            build_deliveries(github, args.clients, args.requests, args.action, number)
            for number in range(args.rounds)
        ]
        server = start_server(
            root / "data",
            port,
            github,
            log,
            args.processes,
            args.threads,
            args.gunicorn_args,
            database_url,
            job_process=not args.no_job_process,
        )
        try:
            wait_ready(base_url, server, log)
            # Warm-up (not measured): first request per code path, SQLite file creation.
            run_round(address, warm, args.keep_alive)
            for batches in rounds:
                cpu_before, own_cpu = server_cpu(server.pid), time.process_time()
                results.append(run_round(address, batches, args.keep_alive, mode, args.rate))
                cpu.append(
                    (
                        server_cpu(server.pid) - cpu_before,
                        time.process_time() - own_cpu,
                    )
                )
            # With several processes this is whichever process answers: its share only.
            histogram = server_histogram(base_url)
            jobs = job_counts(root / "data", database_url)
        finally:
            stop_server(server)
            github.stop()
    load_after = os.getloadavg()

    connection = "keep-alive" if args.keep_alive else "new connection per delivery"
    loop = {
        "open": f"open loop at {args.rate or 0:g} req/s",
        "burst": f"bursts of {args.clients} at once",
        "closed": "closed loop",
    }[mode]
    print(
        f"gitops-runner serve (gunicorn: {args.processes or 'default'} process(es) x "
        f"{args.threads or 'default'} threads; 1 job thread "
        f"{'in each web process' if args.no_job_process else 'in the job process'}): "
        f"{args.clients} clients x "
        f"{args.requests} `{args.action}` deliveries x {args.rounds} round(s), {loop}, "
        f"{connection}"
    )
    print(
        f"load average before {load_before[0]:.2f} / after {load_after[0]:.2f} "
        f"(cpus: {os.cpu_count()})"
    )
    print(
        "cpu per delivery: server (web processes + job process) / load loop / fake GitHub "
        "(+ rest of bench)"
    )
    for number, (result, (used, own_cpu)) in enumerate(zip(results, cpu, strict=True), 1):
        count = max(1, len(result.latencies))
        print(
            f"round {number}: {describe(result.latencies, result.wall_s)}  cpu "
            f"{used.web_s / count * 1000:.2f} + {used.jobs_s / count * 1000:.2f} / "
            f"{result.client_cpu_s / count * 1000:.2f} / "
            f"{(own_cpu - result.client_cpu_s) / count * 1000:.2f} ms in {result.wall_s:4.1f} s"
        )
    everything = [value for result in results for value in result.latencies]
    wall = sum(result.wall_s for result in results)
    print(f"all    : {describe(everything, wall)}")
    p99_per_round = [percentile(sorted(r.latencies), 0.99) for r in results]
    print(
        f"median p99 over rounds: {statistics.median(p99_per_round) * 1000:.1f} ms "
        f"(target < {TARGET_P99_S * 1000:.0f} ms)"
    )
    print(histogram)
    print(jobs)
    failures = [failure for result in results for failure in result.failures]
    if failures:
        print(f"{len(failures)} failed deliveries, first: {failures[:3]}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
