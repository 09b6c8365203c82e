"""`gitops-runner serve`: the web service under gunicorn, started from Python.

Process model: the gunicorn master only listens and supervises; it never builds the
app, so it holds no database connection and no job thread. Each worker process
builds its own services (Store, job queue) and app after the fork (`preload_app` is
off), then `post_worker_init` starts that process's job workers and `worker_exit`
stops them. The same hooks serve plain `gunicorn -c deploy/gunicorn.conf.py
'runner.wiring:create_app_from_env()'`, which imports `gunicorn_options` from here.

Processes: one per core, at most two, when the job workers run elsewhere (`serve`'s
job process, or RQ workers): a process answers webhooks on one GIL, and a second one
on a second core nearly doubles what a burst gets through (issue 10, measured). When
each web process would run a pool of job workers of its own (the in-process queue
without the job process), one. `WEB_CONCURRENCY` overrides both.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger as GunicornLogger
from sqlalchemy.exc import SQLAlchemyError

from runner.observability.logs import gunicorn_logconfig
from runner.settings import Settings
from runner.store.store import Store
from runner.web.app import (
    check_webhook_secrets,
    create_app,
    start_app_workers,
    stop_app_workers,
    warm_app,
)
from runner.web.auth.session import with_session_secret
from runner.web.auth.startup import check_sign_in
from runner.web.context import WebServices
from runner.web.metrics import MULTIPROC_ENV

logger = logging.getLogger(__name__)

ServicesFactory = Callable[[Settings], WebServices]

DEFAULT_THREADS = 8
# More web processes than this add memory and write-lock contention, not acknowledgements.
MAX_DEFAULT_PROCESSES = 2


def post_worker_init(worker: Any) -> None:
    """Start the job workers of this worker process's app, once the app is loaded.

    Not `post_fork`: that runs before the app, and so before the Store and queue the
    job workers belong to, exist in the new process.
    """
    app = getattr(worker, "wsgi", None)
    start_app_workers(app)
    warm_app(app)
    keep_booted_objects_out_of_collections()


def keep_booted_objects_out_of_collections() -> None:
    """Move what booting built (modules, the app, its services) out of the collector's
    reach: it lives as long as the process, and a collection never frees any of it.

    Otherwise the first full collection after the first burst of requests walks all of
    it while holding the GIL: a ~150 ms stall of every request in flight, measured as
    the first round's p99 of `bench/webhook_ack.py` (~200 ms, later rounds ~75 ms).
    Objects made later are collected as before.
    """
    gc.collect()
    gc.freeze()


def worker_exit(server: Any, worker: Any) -> None:
    """Stop this worker process's job workers (also called in the master, app-less)."""
    stop_app_workers(getattr(worker, "wsgi", None))


class RunnerGunicornLogger(GunicornLogger):
    """gunicorn's logger with the access log off unless asked for (`--access-logfile`).

    Given a `logconfig_dict` (ours: masked text or JSON lines), gunicorn formats and
    writes an access line for every request whatever `accesslog` says: ~4 % of the
    web process's CPU under a webhook burst (issue 10, profiled), for lines nobody
    asked for. Asked for, they go out through our handlers, masked, as before.
    """

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        if self.cfg.accesslog is None:
            return
        super().access(resp, req, environ, request_time)


def bind_address(settings: Settings) -> str:
    host = settings.host
    # An IPv6 literal must be bracketed, or its colons read as the port separator.
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{settings.port}"


def web_processes(web_runs_jobs: bool) -> int:
    """How many gunicorn worker processes: `WEB_CONCURRENCY` (gunicorn's usual
    variable) if set; else one when each process runs job workers, and otherwise one
    per core this process may use, at most `MAX_DEFAULT_PROCESSES`."""
    configured = os.environ.get("WEB_CONCURRENCY")
    if configured:
        return int(configured)
    if web_runs_jobs:
        return 1
    return max(1, min(MAX_DEFAULT_PROCESSES, usable_cores()))


def usable_cores() -> int:
    # The cores this process may run on (taskset, cpusets), not the machine's count.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_connections(threads: int) -> int:
    """Connections one process takes at a time: twice its threads.

    With several processes on one listening socket, each takes what it can; past this
    cap the rest wait in the kernel's queue for whichever process frees up first,
    instead of in the thread queue of a busy one (p99 76-95 ms instead of 98-141 ms,
    issue 10). The second half is room for idle keep-alive connections.
    """
    return 2 * threads


def gunicorn_options(settings: Settings, *, web_runs_jobs: bool = True) -> dict[str, Any]:
    """gunicorn settings for the runner; deploy/gunicorn.conf.py uses the same values.

    `web_runs_jobs`: whether each web process runs job workers (sizes `workers`, see
    `web_processes`); `settings.workers` is not used here, it sizes those job pools.
    """
    return {
        "bind": [bind_address(settings)],
        "workers": web_processes(web_runs_jobs),
        "worker_class": "gthread",
        "threads": DEFAULT_THREADS,
        "worker_connections": worker_connections(DEFAULT_THREADS),
        # Building the app after the fork is what keeps DB connections per process.
        "preload_app": False,
        # Recycling a worker would cut its running Terraform jobs short.
        "max_requests": 0,
        "timeout": 60,
        # On shutdown, time for job workers to reach a safe point before SIGKILL.
        "graceful_timeout": 120,
        "keepalive": 5,
        "post_worker_init": post_worker_init,
        "worker_exit": worker_exit,
        # Text or JSON lines (GITOPS_LOG_FORMAT), the runner's secrets masked.
        "logconfig_dict": gunicorn_logconfig(settings.log_format, settings.secret_values()),
        "logger_class": RunnerGunicornLogger,
        "proc_name": "gitops-runner",
        # gunicorn >= 25 opens a control socket in $HOME by default: one path shared by
        # every instance on the host, and a write to $HOME the container need not allow.
        "control_socket_disable": True,
    }


class RunnerServer(BaseApplication):
    """gunicorn configured in code; each worker builds services and app in `load()`."""

    def __init__(
        self,
        settings: Settings,
        services_factory: ServicesFactory,
        options: Mapping[str, Any],
    ) -> None:
        self._settings = settings
        self._services_factory = services_factory
        self._options = dict(options)
        super().__init__(prog="gitops-runner serve")

    def load_config(self) -> None:
        for name, value in self._options.items():
            # Skipped like in a config file: settings newer than the installed gunicorn.
            if name in self.cfg.settings:
                self.cfg.set(name, value)
        given = self._apply_env_args()
        if "worker_connections" not in given and "worker_connections" in self.cfg.settings:
            # Follows the threads an operator chose (e.g. --threads 16).
            self.cfg.set("worker_connections", worker_connections(self.cfg.threads))

    def _apply_env_args(self) -> set[str]:
        # GUNICORN_CMD_ARGS is the operator's escape hatch (e.g. "--access-logfile -"),
        # as with the gunicorn command. A config file is for plain gunicorn instead
        # (deploy/gunicorn.conf.py), so --config is not read here.
        parser = self.cfg.parser()
        args = parser.parse_args(self.cfg.get_cmd_args_from_env())
        given = set()
        for name, value in vars(args).items():
            if value is not None and name not in ("args", "config"):
                self.cfg.set(name.lower(), value)
                given.add(name.lower())
        return given

    def load(self) -> Any:
        # Runs in the worker process, after the fork: the Store and the queue built
        # here are this process's own.
        return create_app(self._settings, self._services_factory(self._settings))


def check_startup(settings: Settings) -> None:
    """The checks `serve` makes before forking: webhook secrets, then sign-in."""
    check_webhook_secrets(settings)
    check_sign_in(settings, lambda: stored_token_count(settings))


def stored_token_count(settings: Settings) -> int:
    """Usable stored API tokens, read in a connection of its own that is closed at once
    (the gunicorn master keeps no database connection); 0 before the first migration."""
    try:
        with Store.open(settings.resolved_database_url, upgrade=False) as store:
            return store.tokens.count_usable()
    except SQLAlchemyError:
        return 0


def run_server(
    settings: Settings,
    services_factory: ServicesFactory,
    overrides: Mapping[str, Any] | None = None,
    *,
    web_runs_jobs: bool = True,
) -> None:
    """Serve the web app under gunicorn until stopped (SIGTERM/SIGINT); blocks.

    `services_factory(settings)` is called once in each worker process; `web_runs_jobs`
    says whether those services run job workers (see `web_processes`). Raises
    WebConfigError (no webhook secret) or AuthConfigError (a dashboard nobody can sign
    in to) before starting anything.
    """
    check_startup(settings)
    # Made before the fork, so a cookie one process signed is good in the others (and
    # before the log set-up, which masks it like every secret).
    settings = with_session_secret(settings)
    options = {**gunicorn_options(settings, web_runs_jobs=web_runs_jobs), **(overrides or {})}
    if int(options["workers"]) > 1:
        share_metrics_between_workers(settings.data_dir / "prometheus")
    logger.info("serving on %s", bind_address(settings))
    RunnerServer(settings, services_factory, options).run()


def share_metrics_between_workers(directory: Path) -> None:
    """prometheus-client's multiprocess mode, set up in the master before the fork.

    Each worker process then writes its webhook counters to files in `directory`, and
    a scrape (answered by any one worker) sums them all. An operator's own
    PROMETHEUS_MULTIPROC_DIR is kept; files of an earlier run are removed, or their
    counts would be added to this one's.
    """
    from prometheus_client import values

    path = Path(os.environ.get(MULTIPROC_ENV) or directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    # The client picks its value store when first imported, which the master has
    # already done; choose again so that the forked workers write to files.
    values.ValueClass = values.get_value_class()
