"""`RQQueue`: jobs run by RQ workers (`gitops-runner worker`), on this or other machines.

The store stays the source of truth; Redis only carries "run stored job N" messages.
`submit` persists the job, then enqueues `run_stored_job(N)`. The worker claims that
exact row (a duplicate message, or one for a job cancelled meanwhile, does nothing),
runs it like the in-process queue does (`JobRunner`: lease, PR-group turn, handler,
outcome) and records the outcome in the store. A message lost with Redis is re-sent
when a worker starts: it sends one for every queued job that has none.

Message ids are `<queue>-job-<job id>-<attempt>`: a job re-queued after a crash gets a new
message, a message already waiting is never sent twice.

Each family of kinds has its own RQ queue: `gitops-runner` (PR events, the name it had
before there were others), `gitops-runner-drift`, `gitops-runner-reconcile`. A worker
started with `--kinds drift` listens on the drift queue only, so it never receives a
message it would have to skip, and a worker of an older version (which knows only the
first queue) never sees a new kind's messages.

Messages are JSON (RQ's `JSONSerializer`), never pickle: whoever can write to Redis
must not be able to run code in a worker by unpickling. A message carries only the
job id; the job itself is the versioned JSON row in the store (`runner/jobs/model.py`).
A plain `rq worker` must be started with `--serializer rq.serializers.JSONSerializer`.

The worker process needs a `JobHandler`. `run_worker(settings, handler_factory)`
builds it once; a plain `rq worker <queue>` builds it on first use from the
environment: settings from `GITOPS_*` (plus the YAML file named by
`GITOPS_CONFIG_FILE`), the factory from `GITOPS_JOB_HANDLER_FACTORY`
(`module:function`, called with (settings, store); default: the registry of every
kind, `runner.wiring:job_registry`).
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
from runner.jobs.model import FAMILIES, KINDS, JobHandler, JobPayload, kind_for
from runner.jobs.queue import JobRunner, JobTiming, enqueue_job
from runner.jobs.recovery import recover
from runner.jobs.registry import JobRegistry, handled_kinds
from runner.settings import Settings, load_settings
from runner.store.deliveries import DeliveryRef
from runner.store.jobs import JobStatus
from runner.store.owners import process_owner_prefix
from runner.store.store import Store

log = logging.getLogger(__name__)

DEFAULT_QUEUE_NAME = "gitops-runner"
HANDLER_FACTORY_ENV = "GITOPS_JOB_HANDLER_FACTORY"
DEFAULT_HANDLER_FACTORY = "runner.wiring:job_registry"
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
        self._queues = RoutedQueues(self._connection, queue_name)
        self._guard = threading.Lock()
        self._unsent: list[tuple[int, str]] = []  # persisted, but Redis was unreachable
        # Workers elsewhere learn of superseded jobs from the store: nothing to signal.
        self._superseder = Superseder(store, lambda _result: None)

    @property
    def rq_queue(self) -> Queue:
        """The queue of PR events (the one every version of the runner knows)."""
        return self._queues.for_kind("pull_request")

    @property
    def queues(self) -> RoutedQueues:
        return self._queues

    def submit(self, event: JobPayload, *, delivery: DeliveryRef | None = None) -> int:
        # Persisted before Redis hears of it. If Redis is down the job still exists: its
        # message goes with the next submit that reaches Redis, or when a worker starts.
        job_id = enqueue_job(self._store, event, delivery)
        self._superseder.request(job_id, event)  # type: ignore[arg-type]
        with self._guard:
            self._unsent.append((job_id, kind_for(event).name))
            pending, self._unsent = self._unsent, []
        for index, (pending_id, kind) in enumerate(pending):
            try:
                send_message(self._queues.for_kind(kind), pending_id, attempt=0)
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


class RoutedQueues:
    """The RQ queue of each family of kinds, on one connection (see the module docstring)."""

    def __init__(self, connection: Redis, queue_name: str = DEFAULT_QUEUE_NAME) -> None:
        self._connection = connection
        self._name = queue_name
        self._queues: dict[str, Queue] = {}

    def name_for(self, kind: str) -> str:
        family = KINDS[kind].family
        return self._name if family == "pr" else f"{self._name}-{family}"

    def for_kind(self, kind: str) -> Queue:
        name = self.name_for(kind)
        if name not in self._queues:
            self._queues[name] = Queue(name, connection=self._connection, serializer=SERIALIZER)
        return self._queues[name]

    def for_kinds(self, kinds: tuple[str, ...]) -> list[Queue]:
        """The queues a worker of `kinds` listens on, each once."""
        return list({self.name_for(k): self.for_kind(k) for k in kinds}.values())


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


def send_missing_messages(
    store: Store, queues: RoutedQueues, kinds: tuple[str, ...] | None = None
) -> int:
    """One message for every queued job (of `kinds`) lacking one (Redis lost them, or a
    crash), on the queue of its kind. Rows of kinds this runner does not know are left
    for a runner that does."""
    wanted = kinds if kinds is not None else tuple(KINDS)
    return sum(
        send_message(queues.for_kind(record.kind), record.id, record.attempts)
        for record in store.jobs.list(status=JobStatus.QUEUED)
        if record.kind in wanted
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
# Set while `run_worker`'s maintenance thread recovers periodically: then a job's start
# need not recover too (it costs a write transaction per job).
_maintained = threading.Event()


def build_context(
    settings: Settings, handler_factory: HandlerFactory, kinds: tuple[str, ...] | None = None
) -> WorkerContext:
    """Store, handler (narrowed to `kinds`) and runner of one worker process."""
    store = Store.open(settings.resolved_database_url)
    handler = narrow(handler_factory(settings, store), kinds)
    timing = JobTiming.for_lease(settings.job_lease_seconds)
    runner = JobRunner(
        store,
        handler,
        build_mutex(settings, store),
        owner_prefix=process_owner_prefix(),
        timing=timing,
    )
    return WorkerContext(store, handler, runner, timing)


def narrow(handler: JobHandler, kinds: tuple[str, ...] | None) -> JobHandler:
    """`handler` for `kinds` only; a ValueError when it cannot run some of them."""
    if kinds is None:
        return handler
    missing = sorted(set(kinds) - set(handled_kinds(handler)))
    if missing:
        raise ValueError(f"this worker's handler runs no {', '.join(missing)} jobs")
    if isinstance(handler, JobRegistry):
        return handler.only(kinds)
    return handler


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

    Returns the outcome ("skipped" if the job was taken, cancelled or already ended, or
    is of a kind this worker does not run).
    """
    context = _current_context()
    if not _maintained.is_set():  # a plain `rq worker`: every job start is a recovery point
        _recover(context, _current_queues())
    outcome = context.runner.run_id(job_id, "rq")
    return "skipped" if outcome is None else outcome.value


def _current_queues() -> RoutedQueues | None:
    from rq import get_current_job

    current = get_current_job()
    if current is None:
        return None
    # Queue names end in the family: the PR queue's name is the base of the others.
    base = current.origin
    for family in FAMILIES:
        if family != "pr":  # the PR queue has no suffix (RoutedQueues.name_for)
            base = base.removesuffix(f"-{family}")
    return RoutedQueues(current.connection, base)


def _recover(context: WorkerContext, queues: RoutedQueues | None) -> None:
    # At start-up, then every half lease (`Maintenance`); in a plain `rq worker`, at every
    # job start.
    report = recover(
        context.store, context.handler, context.timing.lease_grace_s, context.runner.kinds
    )
    if queues is not None:
        for job_id in report.requeued:
            record = context.store.jobs.get(job_id)
            if record is not None and record.status == JobStatus.QUEUED:
                send_message(queues.for_kind(record.kind), job_id, record.attempts)


class Maintenance:
    """Recovery while the worker waits on Redis: a dead worker's plan is re-queued (and
    its message sent) within half a lease, even when no new job arrives to trigger it."""

    def __init__(self, context: WorkerContext, queues: RoutedQueues) -> None:
        self._context = context
        self._queues = queues
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-recovery", daemon=True)

    def __enter__(self) -> Maintenance:
        self._thread.start()
        _maintained.set()
        return self

    def __exit__(self, *_exc: object) -> None:
        _maintained.clear()
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(self._context.timing.recovery_every_s):
            try:
                _recover(self._context, self._queues)
            except Exception:
                log.exception("job recovery failed; retrying later")


def run_worker(
    settings: Settings,
    handler_factory: HandlerFactory,
    burst: bool = False,
    *,
    queue_name: str = DEFAULT_QUEUE_NAME,
    kinds: tuple[str, ...] | None = None,
) -> bool:
    """Run an RQ worker on the queues of `kinds` (default: every kind its handler runs)
    until stopped (or, with `burst`, until idle).

    A `SimpleWorker`: jobs run in this process, one at a time, with the handler built
    once here. A forking worker would hand the handler's open connections (HTTP,
    database) to one short-lived child after another. Terraform runs in its own
    processes anyway; a crash of this one is what the store's leases recover from.
    Must run in the main thread (RQ installs signal handlers: SIGTERM = finish the
    current job, then exit).
    """
    global _context
    _context = build_context(settings, handler_factory, kinds)
    connection = Redis.from_url(settings.redis_url)
    queues = RoutedQueues(connection, queue_name)
    _recover(_context, queues)
    sent = send_missing_messages(_context.store, queues, _context.runner.kinds)
    if sent:
        log.info("sent %d missing job message(s)", sent)
    listened = queues.for_kinds(_context.runner.kinds)
    log.info("worker for %s on %s", ", ".join(_context.runner.kinds), [q.name for q in listened])
    worker = SimpleWorker(listened, connection=connection, serializer=SERIALIZER)
    with Maintenance(_context, queues):
        return worker.work(burst=burst)
