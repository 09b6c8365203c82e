"""`serve`'s job process: the in-process queue's jobs run beside gunicorn, not in it.

Why: a gunicorn worker process answers webhooks on one GIL. When its job threads ran
there too (claiming, leases, the PR flow's GitHub calls, superseding), they took about
half of that GIL under a webhook burst, and every acknowledgement waited for them
(issue 10, profiled). With `GITOPS_JOB_PROCESS` (on by default), `gitops-runner serve`
forks one job process before gunicorn starts: the web processes' queues only store jobs
(`QueueRole.SUBMIT`), and this process runs them (`QueueRole.RUN`), finding new ones in
the store. Nothing else changes: jobs are claimed from the store under leases as
before, so recovery (runner/jobs/recovery.py) treats this process like any other owner.

`JobProcess` is the supervisor in the `serve` process: it forks the child, forks a new
one when the child dies unexpectedly, and stops it when `serve` stops. The child ends
its jobs gracefully on SIGTERM/SIGINT (exit code 0: asked to stop, not restarted), and
when its parent is gone (a `serve` killed outright must not leave a process running
jobs beside the next `serve`'s).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

# What the child runs: it works until `stop` is set, then returns.
JobProcessMain = Callable[[threading.Event], None]

# Exit codes of the child: 0 asked to stop (not restarted), anything else restarted.
_EXIT_STOPPED = 0
_EXIT_FAILED = 1
# The child's CPU priority below the web processes' (`nice`): when both want the cores,
# acknowledgements (what forges time out on) go first, and jobs, which take seconds to
# minutes anyway, take what is left; on an idle machine the jobs get it all. Terraform
# inherits it.
DEFAULT_NICENESS = 10
# How often the child checks that its parent still runs.
_PARENT_CHECK_S = 1.0
# Signals whose handlers the child must not inherit from the parent (gunicorn's master
# installs its own for these; in the child they would drive an arbiter that is not there).
_RESET_SIGNALS = (
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCHLD,
    signal.SIGWINCH,
    signal.SIGTTIN,
    signal.SIGTTOU,
)


class StoppableQueue(Protocol):
    """What `run_queue` needs of a queue (an `InProcessQueue` in the `RUN` role)."""

    def start(self) -> None: ...

    def stop(self, timeout: float | None = None) -> bool: ...


def run_queue(queue: StoppableQueue, stop: threading.Event, stop_timeout_s: float) -> None:
    """The job process's work: run `queue` until `stop`, then stop it like a web process
    stopped its own (running jobs get `stop_timeout_s`, then they are cancelled)."""
    queue.start()
    stop.wait()
    log.info("job process stopping")
    queue.stop(timeout=stop_timeout_s)


class JobProcess:
    """Supervises one forked child running `main` (see the module docstring)."""

    def __init__(
        self,
        main: JobProcessMain,
        *,
        restart_delay_s: float = 1.0,
        stop_timeout_s: float = 60.0,
        niceness: int = DEFAULT_NICENESS,
    ) -> None:
        self._main = main
        self._niceness = niceness
        self._restart_delay_s = restart_delay_s
        self._stop_timeout_s = stop_timeout_s
        self._stopping = threading.Event()
        self._guard = threading.Lock()
        self._pid: int | None = None
        self._exited = threading.Event()
        self._monitor: threading.Thread | None = None
        self._supervisor_pid = 0

    @property
    def pid(self) -> int | None:
        """The running child's pid (None between a death and its restart)."""
        with self._guard:
            return self._pid

    def start(self) -> None:
        """Fork the child, and a thread that forks a new one if it dies (once)."""
        if self._monitor is not None:
            return
        self._supervisor_pid = os.getpid()
        self._spawn()
        self._monitor = threading.Thread(target=self._supervise, name="job-process", daemon=True)
        self._monitor.start()

    def stop(self, timeout: float | None = None) -> bool:
        """SIGTERM the child (it finishes or cancels its jobs), SIGKILL it after
        `timeout` (default: the one given at construction); True if it had ended.

        Only in the process that started it: gunicorn's workers are forks of `serve`
        and leave through the same `finally` that stops the job process; in them this
        object is a copy without a child.
        """
        if os.getpid() != self._supervisor_pid:
            return True
        self._stopping.set()
        pid = self.pid
        if pid is None:
            return True
        _signal(pid, signal.SIGTERM)
        ended = self._exited.wait(self._stop_timeout_s if timeout is None else timeout)
        if not ended:
            log.warning("job process %s did not stop in time; killing it", pid)
            _signal(pid, signal.SIGKILL)
            self._exited.wait(5.0)
        if self._monitor is not None:
            self._monitor.join(5.0)
        return ended

    def _spawn(self) -> None:
        self._exited.clear()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os._exit(_child(self._main, parent, self._niceness))
        with self._guard:
            self._pid = pid
        log.info("job process %s started", pid)

    def _supervise(self) -> None:
        while True:
            pid = self.pid
            assert pid is not None
            code = _wait_for_exit(pid)
            with self._guard:
                self._pid = None
            self._exited.set()
            if self._stopping.is_set():
                return
            if code == _EXIT_STOPPED:
                log.warning("job process %s was stopped; jobs run again after a restart", pid)
                return
            log.error("job process %s died (%s); starting a new one", pid, code)
            # A child that dies at once (e.g. the store is unreachable) is not re-forked
            # in a tight loop; its jobs are recovered by the next one (recovery.py).
            if self._stopping.wait(self._restart_delay_s):
                return
            self._spawn()


def _wait_for_exit(pid: int) -> int | str:
    """Block until `pid` (a child) has exited: its exit code, or why it is unknown.

    gunicorn's master reaps any child on SIGCHLD (`waitpid(-1)`); when it got there
    first, ours fails with ChildProcessError, and the child is gone all the same.
    """
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return "reaped elsewhere"
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return os.waitstatus_to_exitcode(status)


def _signal(pid: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, number)


def _child(main: JobProcessMain, parent: int, niceness: int) -> int:
    """The forked child's life: signals of its own, a parent check, `main`; the exit code."""
    stop = threading.Event()
    try:
        os.nice(niceness)
        for number in _RESET_SIGNALS:
            signal.signal(number, signal.SIG_DFL)
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: stop.set())
        threading.Thread(
            target=_stop_when_orphaned, args=(parent, stop), name="parent-check", daemon=True
        ).start()
        main(stop)
    except BaseException:
        log.exception("job process failed")
        return _EXIT_FAILED
    return _EXIT_STOPPED


def _stop_when_orphaned(parent: int, stop: threading.Event) -> None:
    # Re-parented (to init or a subreaper): `serve` is gone, so is whoever would stop us.
    while not stop.wait(_PARENT_CHECK_S):
        if os.getppid() != parent:
            log.warning("job process: serve (pid %s) is gone; stopping", parent)
            stop.set()
