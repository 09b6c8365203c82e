"""What an idle job process costs the store, and how fast it starts a submitted job.

`serve`'s job process runs an `InProcessQueue` in the `RUN` role; the web processes
store jobs in the `SUBMIT` role. This runs both in this process on one real store (a
fresh SQLite file, or a fresh PostgreSQL database), as `serve` wires them (with the
wake-up channel when the code has one), and measures:

- idle: statements the RUN queue sends over `--idle-s` seconds with nothing to do
  (SQLAlchemy's `before_cursor_execute`, every thread of the queue), and on PostgreSQL
  the database's transactions (`pg_stat_database` xact_commit + xact_rollback; only this
  process uses the database) and this process's CPU time;
- hop: for `--hops` jobs submitted one at a time to the idle queue, the time from
  `submit` returning to the handler starting (monotonic clock, one process).

    PYTHONPATH=<tree> .venv/bin/python job_process_idle.py [--store sqlite|postgres]
                                                          [--idle-s 10] [--hops 20]
    .venv/bin/python bench/job_process_idle.py --smoke    # 1 s idle, 3 hops (CI)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import event, make_url

# The tree this script is in, unless PYTHONPATH names another (a side-by-side "before").
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from runner.engine.project_mutex import build_mutex
from runner.events.model import CommentEvent
from runner.jobs import inprocess
from runner.jobs.inprocess import InProcessQueue, QueueRole
from runner.settings import Settings
from runner.store.store import Store
from tests.support.jobs import REPO

POSTGRES = os.environ.get("GITOPS_TEST_POSTGRES_URL") or "postgresql://postgres@127.0.0.1:5432/test"


class StampingHandler:
    """Notes when each job started (monotonic); does nothing else."""

    def __init__(self) -> None:
        self.started: dict[int, float] = {}
        self.arrived = threading.Condition()

    def handle(self, event: Any, cancel: threading.Event) -> None:
        with self.arrived:
            self.started[event.comment_id] = time.monotonic()
            self.arrived.notify_all()

    def is_apply(self, event: Any) -> bool:
        return False

    def report_interrupted(self, event: Any) -> None:
        pass


def comment(number: int) -> CommentEvent:
    return CommentEvent(
        repo=REPO,
        pr_number=number,
        comment_id=number,
        body="hello",
        author="bob",
        author_is_bot=False,
        command=None,
    )


def fresh_postgres() -> str:
    name = f"bench_idle_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(
        make_url(POSTGRES).set(drivername="postgresql").render_as_string(hide_password=False),
        autocommit=True,
    ) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)


def drop_postgres(url: str) -> None:
    with psycopg.connect(admin_url(url), autocommit=True) as admin:
        name = sql.Identifier(make_url(url).database)
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def admin_url(url: str) -> str:
    parsed = make_url(url).set(drivername="postgresql", database="postgres")
    return parsed.render_as_string(hide_password=False)


def postgres_xacts(url: str) -> int:
    parsed = make_url(url)
    with psycopg.connect(
        parsed.set(drivername="postgresql", database="postgres").render_as_string(
            hide_password=False
        ),
        autocommit=True,
    ) as admin:
        admin.execute("SELECT pg_stat_clear_snapshot()")
        row = admin.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (parsed.database,),
        ).fetchone()
    return int(row[0])


def wake_up_channel() -> Any:
    """The channel `serve` makes before forking; None for code from before it existed."""
    try:
        from runner.jobs.wakeup import JobWakeup
    except ImportError:
        return None
    return JobWakeup.pair()


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def hop_ms(web: InProcessQueue, handler: StampingHandler, number: int) -> float:
    """From `submit` returning (the job committed) to its handler starting, idle before."""
    time.sleep(0.3)  # idle again between jobs
    web.submit(comment(number))
    submitted = time.monotonic()
    with handler.arrived:
        handler.arrived.wait_for(lambda: number in handler.started, timeout=30)
    return (handler.started[number] - submitted) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--hops", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="1 s idle, 3 hops (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.idle_s, args.hops = 1.0, 3
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as scratch:
        measure(args, Path(scratch))


def measure(args: argparse.Namespace, data_dir: Path) -> None:
    url = f"sqlite:///{data_dir / 'db.sqlite'}" if args.store == "sqlite" else fresh_postgres()
    store = Store.open(url)
    web_store = Store.open(url, upgrade=False)
    wakeup = wake_up_channel()
    options = {} if wakeup is None else {"wakeup": wakeup}
    handler = StampingHandler()
    settings = Settings(data_dir=data_dir, database_url=url, workers=2)
    run = InProcessQueue(
        store, handler, 2, mutex=build_mutex(settings, store), role=QueueRole.RUN, **options
    )
    web = InProcessQueue(
        web_store,
        handler,
        1,
        mutex=build_mutex(settings, web_store),
        role=QueueRole.SUBMIT,
        **options,
    )
    statements = 0

    def seen(*_: Any) -> None:
        nonlocal statements
        statements += 1

    event.listen(store.engine, "before_cursor_execute", seen)
    run.start()
    time.sleep(1.0)  # start-up recovery done, workers asleep
    before_statements, before_cpu = statements, cpu_s()
    before_xacts = postgres_xacts(url) if args.store == "postgres" else 0
    time.sleep(args.idle_s)
    idle_statements = statements - before_statements
    idle_cpu = cpu_s() - before_cpu
    per_s = args.idle_s
    line = (
        f"idle {args.store}: {idle_statements / per_s:.2f} statements/s, "
        f"CPU {idle_cpu / per_s * 1000:.2f} ms/s"
    )
    if args.store == "postgres":
        line += f", {(postgres_xacts(url) - before_xacts) / per_s:.2f} transactions/s"
    fallback = getattr(inprocess, "DEFAULT_FALLBACK_POLL_S", None)
    watch = getattr(inprocess, "DEFAULT_WATCH_S", None)
    channel = "yes" if wakeup else "no"
    print(f"{line}  (wake-up channel: {channel}; fallback {fallback}, watch {watch})")
    hops = [hop_ms(web, handler, number) for number in range(1, args.hops + 1)]
    hops.sort()
    print(
        f"hop {args.store}: submit -> handler start median {statistics.median(hops):.1f} ms, "
        f"p90 {hops[int(len(hops) * 0.9) - 1]:.1f} ms, max {hops[-1]:.1f} ms (n={len(hops)})"
    )
    run.stop(timeout=5)
    store.close()
    web_store.close()
    if args.store == "postgres":
        drop_postgres(url)


if __name__ == "__main__":
    main()
