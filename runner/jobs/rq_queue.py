"""`RQQueue`: jobs run by RQ workers (`gitops-runner worker`), on this or other machines.

The store stays the source of truth; Redis only carries "run stored job N" messages.
`submit` persists the job, then enqueues `run_stored_job(N)`. The worker claims that
exact row (a duplicate message, or one for a job cancelled meanwhile, does nothing),
runs it like the in-process queue does (`JobRunner`: lease, PR-group turn, handler,
outcome) and records the outcome in the store. A message lost with Redis is re-sent
when a worker starts: it sends one for every queued job that has none.

Message ids are `<queue>-job-<job id>-<attempt>`: a job re-queued after a crash gets a new
message, a message already waiting is never sent twice.

Messages are JSON (RQ's `JSONSerializer`), never pickle: whoever can write to Redis
must not be able to run code in a worker by unpickling. A message carries only the
job id; the job itself is the versioned JSON row in the store (`runner/jobs/model.py`).
A plain `rq worker` must be started with `--serializer rq.serializers.JSONSerializer`.

The worker process needs a `JobHandler`. `run_worker(settings, handler_factory)`
builds it once; a plain `rq worker <queue>` builds it on first use from the
environment: settings from `GITOPS_*` (plus the YAML file named by
`GITOPS_CONFIG_FILE`), the factory from `GITOPS_JOB_HANDLER_FACTORY`
(`module:function`, called with (settings, store); default: the pull-request flow).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis, RedisError
from rq import Queue, SimpleWorker
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus as RQJobStatus
from rq.serializers import JSONSerializer

from runner.engine.project_mutex import build_mutex
from runner.jobs.cancellation import Superseder
from runner.jobs.model import JobHandler, WorkEvent
from runner.jobs.queue import (
    CLAIMABLE_KINDS,
    DEFAULT_TIMING,
    JobRunner,
    JobTiming,
    enqueue_event,
)
from runner.jobs.recovery import recover
from runner.settings import Settings, load_settings
from runner.store.deliveries import DeliveryRef
from runner.store.jobs import JobStatus
from runner.store.owners import process_owner_prefix
from runner.store.store import Store

log = logging.getLogger(__name__)

DEFAULT_QUEUE_NAME = "gitops-runner"
HANDLER_FACTORY_ENV = "GITOPS_JOB_HANDLER_FACTORY"
DEFAULT_HANDLER_FACTORY = "runner.wiring:pull_request_flow_handler"
# Outcomes are in the store; RQ's own record of a message is only for debugging.
_RESULT_TTL_S = 24 * 3600
_PENDING = frozenset(
    {RQJobStatus.QUEUED, RQJobStatus.STARTED, RQJobStatus.DEFERRED, RQJobStatus.SCHEDULED}
)

HandlerFactory = Callable[[Settings, Store], JobHandler]
# Every queue, worker and fetch names it: RQ's default would be pickle.
SERIALIZER = JSONSerializer


class RQQueue:
    """Submits jobs for RQ workers; runs nothing itself."""

    def __init__(
        self,
        store: Store,
        redis_url: str,
        queue_name: str = DEFAULT_QUEUE_NAME,
        *,
        connection: Redis | None = None,
    ) -> None:
        self._store = store
        self._connection = connection or Redis.from_url(redis_url)
        self._queue = Queue(queue_name, connection=self._connection, serializer=SERIALIZER)
        self._guard = threading.Lock()
        self._unsent: list[int] = []  # persisted, but Redis was unreachable
        # Workers elsewhere learn of superseded jobs from the store: nothing to signal.
        self._superseder = Superseder(store, lambda _result: None)

    @property
    def rq_queue(self) -> Queue:
        return self._queue

    def submit(self, event: WorkEvent, *, delivery: DeliveryRef | None = None) -> int:
        # Persisted before Redis hears of it. If Redis is down the job still exists: its
        # message goes with the next submit that reaches Redis, or when a worker starts.
        job_id = enqueue_event(self._store, event, delivery)
        self._superseder.request(job_id, event)
        with self._guard:
            self._unsent.append(job_id)
            pending, self._unsent = self._unsent, []
        for index, pending_id in enumerate(pending):
            try:
                send_message(self._queue, pending_id, attempt=0)
            except RedisError:
                log.exception("Redis unreachable; job %s waits for its message", pending_id)
                with self._guard:
                    self._unsent.extend(pending[index:])
                break
        return job_id

    def start(self) -> None:
        """Nothing runs here; fail early if Redis is unreachable."""
        self._connection.ping()

    def stop(self, timeout: float | None = None) -> bool:
        self._superseder.stop(timeout)
        self._connection.close()
        return True

    def running_jobs(self) -> list[int]:
        # Workers are elsewhere; the store knows what they run.
        return [record.id for record in self._store.jobs.list(status=JobStatus.RUNNING)]


def message_id(queue_name: str, job_id: int, attempt: int) -> str:
    # RQ allows letters, digits, "_" and "-" in job ids.
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', queue_name)}-job-{job_id}-{attempt}"


def send_message(queue: Queue, job_id: int, attempt: int) -> bool:
    """Enqueue `run_stored_job(job_id)` unless that message is already waiting."""
    rq_id = message_id(queue.name, job_id, attempt)
    try:
        existing = RQJob.fetch(rq_id, connection=queue.connection, serializer=SERIALIZER)
    except NoSuchJobError:
        existing = None
    if existing is not None:
        if existing.get_status() in _PENDING:
            return False
        existing.delete()  # it ran (or failed) without claiming the job: send again
    queue.enqueue_call(
        run_stored_job,
        args=(job_id,),
        job_id=rq_id,
        timeout=-1,  # Terraform steps have their own timeouts; a job has many
        result_ttl=_RESULT_TTL_S,
        description=f"gitops-runner job {job_id}",
    )
    return True


def send_missing_messages(store: Store, queue: Queue) -> int:
    """One message for every queued job lacking one (Redis lost them, or a crash).

    Only the kinds the queue runs: other rows of the jobs table (e.g. drift scans
    triggered through the API) belong to the process that wrote them.
    """
    return sum(
        send_message(queue, record.id, record.attempts)
        for record in store.jobs.list(status=JobStatus.QUEUED)
        if record.kind in CLAIMABLE_KINDS
    )


# ---- the worker side ------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerContext:
    """What `run_stored_job` needs in a worker process, built once per process."""

    store: Store
    handler: JobHandler
    runner: JobRunner
    timing: JobTiming


_context: WorkerContext | None = None


def build_context(settings: Settings, handler_factory: HandlerFactory) -> WorkerContext:
    store = Store.open(settings.resolved_database_url)
    handler = handler_factory(settings, store)
    timing = DEFAULT_TIMING
    runner = JobRunner(
        store,
        handler,
        build_mutex(settings, store),
        owner_prefix=process_owner_prefix(),
        timing=timing,
    )
    return WorkerContext(store, handler, runner, timing)


def _context_from_environment() -> WorkerContext:
    settings = load_settings(os.environ.get("GITOPS_CONFIG_FILE") or None)
    path = os.environ.get(HANDLER_FACTORY_ENV) or DEFAULT_HANDLER_FACTORY
    module_name, _, attribute = path.partition(":")
    if not attribute:
        raise ValueError(f"{HANDLER_FACTORY_ENV} must look like module:function, not {path!r}")
    factory = getattr(importlib.import_module(module_name), attribute)
    return build_context(settings, factory)


def _current_context() -> WorkerContext:
    global _context
    if _context is None:
        _context = _context_from_environment()
    return _context


def run_stored_job(job_id: int) -> str:
    """What an RQ worker executes for a message: run stored job `job_id` if still queued.

    Returns the outcome ("skipped" if the job was taken, cancelled or already ended).
    """
    context = _current_context()
    _recover(context, _current_queue())
    outcome = context.runner.run_id(job_id, "rq")
    return "skipped" if outcome is None else outcome.value


def _current_queue() -> Queue | None:
    from rq import get_current_job

    current = get_current_job()
    if current is None:
        return None
    return Queue(current.origin, connection=current.connection, serializer=SERIALIZER)


def _recover(context: WorkerContext, queue: Queue | None) -> None:
    # Workers have no background thread; every job start is a recovery point.
    report = recover(context.store, context.handler, context.timing.lease_grace_s)
    if queue is not None:
        for job_id in report.requeued:
            record = context.store.jobs.get(job_id)
            if record is not None and record.status == JobStatus.QUEUED:
                send_message(queue, job_id, record.attempts)


def run_worker(
    settings: Settings,
    handler_factory: HandlerFactory,
    burst: bool = False,
    *,
    queue_name: str = DEFAULT_QUEUE_NAME,
) -> bool:
    """Run an RQ worker on `queue_name` until stopped (or, with `burst`, until idle).

    A `SimpleWorker`: jobs run in this process, one at a time, with the handler built
    once here. A forking worker would hand the handler's open connections (HTTP,
    database) to one short-lived child after another. Terraform runs in its own
    processes anyway; a crash of this one is what the store's leases recover from.
    Must run in the main thread (RQ installs signal handlers: SIGTERM = finish the
    current job, then exit).
    """
    global _context
    _context = build_context(settings, handler_factory)
    connection = Redis.from_url(settings.redis_url)
    queue = Queue(queue_name, connection=connection, serializer=SERIALIZER)
    _recover(_context, queue)
    sent = send_missing_messages(_context.store, queue)
    if sent:
        log.info("sent %d missing job message(s)", sent)
    worker = SimpleWorker([queue], connection=connection, serializer=SERIALIZER)
    return worker.work(burst=burst)
