"""Scaled out: PR plan throughput with 1, 2 and 4 workers, and the cost of a queue hop.

Throughput. A real deployment in processes (tests/support/jobs.py `Deployment`): one
`gitops-runner serve` and W `gitops-runner worker` processes (RQ) on the machine's
PostgreSQL and Redis, a fake GitHub over HTTP, and the embedded Terraform (or the one
`locate_terraform` finds). Each round opens `--prs` pull requests at once, each changing
its own project (no lock contention between them), posts their signed `opened`
webhooks, and times from the first POST until every job has ended. The workload is
`latency` from bench/plan_vs_loop.py: each project reads chained
`terraform_remote_state` data sources from a local HTTP backend answering after
`--latency-ms`, which is what real plans spend their time on (cloud APIs). A worker
runs one job at a time, so while one plan waits on I/O another worker's plan runs.

Queue hop. The time from a job's row being written (`created_at`) to a worker claiming
it (`started_at`), both stamped by the database host's clock through the store, for
jobs submitted one at a time to an idle queue: the in-process queue (a thread woken by
`submit`) versus RQ (a message through Redis to a `gitops-runner worker` process). The
job is a `reconcile` of a repository the server does not reconcile: the worker's handler
refuses it at once (in-process, a handler that does nothing), so only the hop is timed.

    .venv/bin/python bench/scale_out.py [--workers 1,2,4] [--prs 8] [--latency-ms 400]
                                        [--hops 20]
    .venv/bin/python bench/scale_out.py --smoke     # 1 and 2 workers, 2 PRs, 5 hops (CI)

Needs PostgreSQL and Redis (GITOPS_TEST_POSTGRES_URL, GITOPS_TEST_REDIS_URL, defaults:
the local servers); without them it says so and exits 0, except with CI=true.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg
from plan_vs_loop import LatencyBackend, latency_project_tf
from psycopg import sql
from push_to_comment import World
from redis import Redis, RedisError
from sqlalchemy import make_url

from runner.engine.project_mutex import build_mutex
from runner.jobs.inprocess import InProcessQueue
from runner.jobs.payloads import ReconcileJob
from runner.jobs.queue import JobTiming
from runner.jobs.registry import JobRegistry
from runner.jobs.rq_queue import RQQueue
from runner.settings import Settings
from runner.store import Store, migrate
from tests.support.github_payloads import post_delivery
from tests.support.jobs import Deployment
from tests.support.pr_world import TOKEN, WEBHOOK_SECRET

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
ENDED = frozenset({"done", "failed", "interrupted", "cancelled"})


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def fresh_schema(server_url: str) -> Iterator[str]:
    """A migrated schema of its own on the server, dropped afterwards; its URL."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(server_url), autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    url = make_url(server_url).update_query_dict({"options": f"-csearch_path={schema}"})
    rendered = url.render_as_string(hide_password=False)
    try:
        migrate(rendered)
        yield rendered
    finally:
        with psycopg.connect(_libpq(server_url), autocommit=True) as connection:
            drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            connection.execute(drop)


def servers_or_exit() -> tuple[str, str]:
    postgres = os.environ.get("GITOPS_TEST_POSTGRES_URL") or DEFAULT_POSTGRES
    redis = os.environ.get("GITOPS_TEST_REDIS_URL") or DEFAULT_REDIS
    try:
        with psycopg.connect(_libpq(postgres), connect_timeout=3):
            pass
        Redis.from_url(redis, socket_connect_timeout=3).ping()
    except (psycopg.Error, RedisError) as error:
        print(f"scale_out: PostgreSQL or Redis unreachable ({error}); nothing measured")
        sys.exit(1 if os.environ.get("CI", "").lower() == "true" else 0)
    return postgres, redis


# ---- throughput ---------------------------------------------------------------------------


class PerProjectWorld(World):
    """`World` whose pull requests each change one project of their own: no PR waits for
    another's lock, in a round or across rounds (a PR's locks last until it closes)."""

    next_index = 0

    def open_one(self, version: str) -> int:
        index, self.next_index = self.next_index, self.next_index + 1
        branch = f"svc{index}-{version}"
        self.origin.branch(branch, from_="main").checkout(branch)
        self.origin.write({self.path(index): self.text(index, version)})
        head = self.origin.commit(f"change svc{index} ({version})")
        self.origin.push("origin", branch)
        self.origin.checkout("main")
        return self.github.open_pull(
            "acme/infra",
            head_sha=head,
            head_ref=branch,
            base_sha=self.origin.repo.commit("main").hexsha,
            user="alice",
            files=[self.path(index)],
        )


def throughput_round(
    cluster: Deployment, web: str, world: PerProjectWorld, prs: int, tag: str
) -> float:
    """Seconds from the first webhook of `prs` new PRs until all their jobs ended."""
    numbers = [world.open_one(tag) for _ in range(prs)]
    payloads = [world.payload("opened", number) for number in numbers]
    before = {job.id for job in cluster.store.jobs.list()}
    started = time.perf_counter()
    threads = [
        threading.Thread(
            target=post_delivery,
            args=(f"{web}/events", "pull_request", payload, WEBHOOK_SECRET),
            kwargs={"delivery_id": f"{tag}-{i}"},
        )
        for i, payload in enumerate(payloads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    def ended() -> bool:
        jobs = [job for job in cluster.store.jobs.list() if job.id not in before]
        return len(jobs) == prs and all(job.status.value in ENDED for job in jobs)

    cluster.wait_until(ended, "the round's plans", timeout=600)
    elapsed = time.perf_counter() - started
    failed = [
        j for j in cluster.store.jobs.list() if j.id not in before and j.status.value != "done"
    ]
    if failed:
        raise SystemExit(f"jobs did not succeed: {[(j.id, j.error) for j in failed]}")
    return elapsed


def measure_throughput(
    cluster: Deployment, world: PerProjectWorld, workers: list[int], prs: int
) -> dict[int, float]:
    """One web process; workers are added between rounds (1, then 2, then 4 running)."""
    web = cluster.start_web()
    results: dict[int, float] = {}
    for count in sorted(workers):
        while len(cluster.workers) < count:
            cluster.start_worker()
        # Warm-up: each worker's repository cache, as a runner in service has it.
        throughput_round(cluster, web, world, count, f"warm{count}")
        results[count] = throughput_round(cluster, web, world, prs, f"w{count}")
        print(f"  {count} worker(s): {prs} PR plans in {results[count]:.1f} s", flush=True)
    return results


@contextmanager
def deployment(root: Path, database_url: str, redis_url: str, world: World) -> Iterator[Deployment]:
    cluster = Deployment(
        root / "deploy",
        database_url,
        {
            "GITOPS_REDIS_URL": redis_url,
            "GITOPS_GITHUB_TOKEN": TOKEN,
            "GITOPS_GITHUB_API_URL": world.github.api_url,
            "GITOPS_GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "GITOPS_API_TOKEN": "bench-api-token-0123456789",
        },
    )
    try:
        yield cluster
    finally:
        cluster.stop()


# ---- the queue hop ------------------------------------------------------------------------


class Nothing:
    """A reconcile handler that does nothing: only the queue's own time is measured."""

    def handle(self, event: object, cancel: threading.Event) -> None:
        return None

    def is_apply(self, event: object) -> bool:
        return False

    def report_interrupted(self, event: object) -> None:
        pass


def hop_seconds(store: Store, submit: object, count: int) -> list[float]:
    """created_at → started_at of `count` jobs, each submitted once the previous ended."""
    hops = []
    for index in range(count):
        job_id = submit(ReconcileJob(repo=f"file:///nowhere/{uuid.uuid4().hex}", sha=str(index)))  # type: ignore[operator]
        deadline = time.monotonic() + 60
        while (record := store.jobs.get(job_id)) is None or record.status.value not in ENDED:
            if time.monotonic() > deadline:
                raise SystemExit(f"job {job_id} did not end")
            time.sleep(0.005)
        assert record.started_at is not None
        hops.append((record.started_at - record.created_at).total_seconds())
    return hops


def measure_hops(cluster: Deployment, redis_url: str, count: int) -> dict[str, list[float]]:
    """The same jobs through an in-process queue here and through Redis to the workers."""
    store = cluster.store
    settings = Settings(data_dir=cluster.root / "hop")  # type: ignore[call-arg]
    inprocess = InProcessQueue(
        store,
        JobRegistry({"reconcile": Nothing()}),
        1,
        mutex=build_mutex(settings, store),
        timing=JobTiming(),
    )
    inprocess.start()
    try:
        hop_seconds(store, inprocess.submit, 2)  # warm-up
        results = {"in-process": hop_seconds(store, inprocess.submit, count)}
    finally:
        inprocess.stop(timeout=10)
    queue = RQQueue(store, redis_url, cluster.values["GITOPS_QUEUE_NAME"])
    try:
        hop_seconds(store, queue.submit, 2)  # warm-up
        results["RQ (Redis)"] = hop_seconds(store, queue.submit, count)
    finally:
        queue.stop()
    return results


def describe(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"median {statistics.median(ordered) * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4", help="worker counts to compare")
    parser.add_argument("--prs", type=int, default=8, help="PRs per round, one project each")
    parser.add_argument("--latency-ms", type=int, default=400)
    parser.add_argument("--hops", type=int, default=20, help="jobs timed per queue")
    parser.add_argument("--smoke", action="store_true", help="small sizes, for CI")
    args = parser.parse_args()
    if args.smoke:
        args.workers, args.prs, args.hops, args.latency_ms = "1,2", 2, 5, 200
    workers = [int(part) for part in args.workers.split(",")]
    postgres, redis = servers_or_exit()
    with (
        tempfile.TemporaryDirectory(prefix="bench-scale-out-") as tmp,
        fresh_schema(postgres) as url,
    ):
        root = Path(tmp)
        backend = LatencyBackend(args.latency_ms / 1000)
        text = partial(latency_text, backend.port)
        projects = sum(workers) + len(workers) * args.prs  # warm-up rounds + measured ones
        world = PerProjectWorld(root / "world", text, projects)
        try:
            with deployment(root, url, redis, world) as cluster:
                print(f"throughput: {args.prs} PRs, latency workload ({args.latency_ms} ms a read)")
                seconds = measure_throughput(cluster, world, workers, args.prs)
                base = seconds[min(workers)]
                for count, elapsed in seconds.items():
                    rate = args.prs / elapsed * 60
                    speedup = base / elapsed
                    print(f"  {count} worker(s): {rate:.1f} plans/min, x{speedup:.2f}")
                print(f"enqueue → start, {args.hops} jobs one at a time:")
                for name, hops in measure_hops(cluster, redis, args.hops).items():
                    print(f"  {name}: {describe(hops)}")
        finally:
            world.github.stop()
            backend.close()


def latency_text(port: int, index: int, version: str) -> str:
    return latency_project_tf(index, port, version)


if __name__ == "__main__":
    main()
