"""Webhook acknowledgement latency of the real `gitops-runner serve` under concurrent load.

Starts the service exactly as `gitops-runner serve` does (a subprocess running the CLI:
gunicorn, one worker process, gthread, the in-process job queue in that worker), on a
free loopback port, with a temporary data dir (SQLite) and a webhook secret. Then N
concurrent clients each send M correctly signed `pull_request` deliveries with unique
`X-GitHub-Delivery` ids, and the time from sending a request to receiving its answer is
measured on the client side. Reports p50 / p95 / p99 / max and the throughput, per round
and over all rounds (issue target: p99 < 100 ms), plus the server's own
`gitops_webhook_ack_seconds` histogram from `/metrics`.

The queued jobs must stay harmless but real, so they run in the same process and
compete for CPU like in production: `GITOPS_GITHUB_API_URL` points at a fake GitHub
(tests/support/fake_github.py, in this process) where every PR has a head sha other
than the one in the deliveries. Each job therefore makes one API call, sees that the
delivery is stale and skips ("superseded autoplan"); nothing is cloned or planned.
`GITOPS_WORKERS=1` (one job thread).

By default each delivery opens a new connection, as GitHub's Hookshot does;
`--keep-alive` reuses one `requests.Session` connection per client.

    .venv/bin/python bench/webhook_ack.py                 # 50 clients x 20, 3 rounds
    .venv/bin/python bench/webhook_ack.py --action opened
    .venv/bin/python bench/webhook_ack.py --smoke         # 5 clients x 4, 1 round (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
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
    data_dir: Path, port: int, github: FakeGitHub, log: Path, processes: int = 1
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
        # gunicorn worker processes; `serve` reads the usual variable (runner/web/server.py).
        "WEB_CONCURRENCY": str(processes),
    }
    argv = [str(Path(sys.executable).parent / "gitops-runner"), "serve"]
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


def run_round(
    url: str, batches: list[list[Delivery]], keep_alive: bool, rate: float | None = None
) -> RoundResult:
    """All clients start together and send their deliveries.

    Closed loop (default): each client sends its next delivery as soon as the previous
    one is answered, so the server sees `clients` requests in flight all the time.
    Open loop (`rate`): delivery k of client i is due at t0 + (k * clients + i) / rate
    and its latency counts from that due time, so time spent waiting for a free client
    (the server falling behind) is not hidden (no coordinated omission).
    """
    clients = len(batches)
    latencies: list[list[float]] = [[] for _ in batches]
    failures: list[str] = []
    barrier = threading.Barrier(clients + 1)
    t0 = 0.0

    def client(index: int) -> None:
        session = requests.Session() if keep_alive else None
        barrier.wait()
        for number, delivery in enumerate(batches[index]):
            headers = delivery.headers if keep_alive else delivery.headers | {"Connection": "close"}
            if rate is not None:
                due = t0 + (number * clients + index) / rate
                time.sleep(max(0.0, due - time.perf_counter()))
                start = due
            else:
                start = time.perf_counter()
            try:
                if session is not None:
                    reply = session.post(url, data=delivery.body, headers=headers, timeout=30)
                else:
                    reply = requests.post(url, data=delivery.body, headers=headers, timeout=30)
            except requests.RequestException as error:
                failures.append(f"client {index}: {error}")
                continue
            latencies[index].append(time.perf_counter() - start)
            if reply.status_code != 202:
                failures.append(f"client {index}: HTTP {reply.status_code} {reply.text[:200]}")
        if session is not None:
            session.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    t0 = time.perf_counter() + 0.05  # read by the clients only after the barrier
    barrier.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    return RoundResult([value for values in latencies for value in values], wall, failures)


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and its children so far (Linux /proc; else 0).

    Tells how the two cores were shared between the server and this load generator.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        total = 0
        for member in [str(pid), *children]:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks
    except (OSError, IndexError, ValueError):
        return 0.0


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


def job_counts(data_dir: Path) -> str:
    """How far the single job worker got through the queued (harmless) jobs."""
    store = Store.open(f"sqlite:///{data_dir / 'gitops-runner.db'}")
    try:
        counts = {status.value: len(store.jobs.list(status=status)) for status in JobStatus}
    finally:
        store.close()
    return "jobs by status: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v)


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
        "--processes", type=int, default=1, help="gunicorn worker processes (WEB_CONCURRENCY)"
    )
    parser.add_argument("--smoke", action="store_true", help="5 clients x 4, one round (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.requests, args.rounds = 5, 4, 1

    load_before = os.getloadavg()
    github = start_fake_github(args.clients)
    results: list[RoundResult] = []
    cpu: list[tuple[float, float]] = []  # (server, this process) per round
    with tempfile.TemporaryDirectory(prefix="gitops-bench-ack-") as scratch:
        root = Path(scratch)
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        log = root / "serve.log"
        server = start_server(root / "data", port, github, log, args.processes)
        try:
            wait_ready(base_url, server, log)
            # Warm-up (not measured): first request per code path, SQLite file creation.
            warm = build_deliveries(github, min(args.clients, 5), 1, args.action, -1)
            run_round(f"{base_url}/events", warm, args.keep_alive)
            for round_number in range(args.rounds):
                batches = build_deliveries(
                    github, args.clients, args.requests, args.action, round_number
                )
                server_cpu, own_cpu = process_tree_cpu_s(server.pid), time.process_time()
                results.append(run_round(f"{base_url}/events", batches, args.keep_alive, args.rate))
                cpu.append(
                    (
                        process_tree_cpu_s(server.pid) - server_cpu,
                        time.process_time() - own_cpu,
                    )
                )
            # With several processes this is whichever process answers: its share only.
            histogram = server_histogram(base_url)
            jobs = job_counts(root / "data")
        finally:
            stop_server(server)
            github.stop()
    load_after = os.getloadavg()

    connection = "keep-alive" if args.keep_alive else "new connection per delivery"
    loop = f"open loop at {args.rate:g} req/s" if args.rate else "closed loop"
    print(
        f"gitops-runner serve (gunicorn: {args.processes} process(es) x 8 threads, 1 job worker "
        f"each): {args.clients} clients x "
        f"{args.requests} `{args.action}` deliveries x {args.rounds} round(s), {loop}, "
        f"{connection}"
    )
    print(
        f"load average before {load_before[0]:.2f} / after {load_after[0]:.2f} "
        f"(cpus: {os.cpu_count()})"
    )
    for number, (result, (server_cpu, own_cpu)) in enumerate(zip(results, cpu, strict=True), 1):
        print(
            f"round {number}: {describe(result.latencies, result.wall_s)}  "
            f"cpu server {server_cpu:4.1f} s ({server_cpu / len(result.latencies) * 1000:.1f} "
            f"ms/delivery) / bench {own_cpu:4.1f} s in {result.wall_s:4.1f} s"
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
