"""How many plans run at once: one per core while they compute, more while they wait.

A plan either computes (Terraform evaluating many resources: CPU-bound) or waits
(provider APIs, a remote state backend: I/O-bound). A fixed parallelism is wrong for
one of the two: four CPU-bound plans on two cores only thrash (each takes twice as
long and the first comment comes later), while four waiting plans overlap nicely.

`PlanAdmission` starts at the number of cores and, while plans queue, samples how much
CPU the running plans' processes want (`CpuDemand`: time on a CPU plus time waiting
for one, of this process's descendants only): well under a core per running plan
means they wait on I/O, so one more is admitted, up to the configured parallelism;
about a core each lowers the limit again (never below the core count, and no running
plan is stopped). One admission is shared by every plan of a
process, so two job workers planning at once share the same cores.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Cores wanted per running plan. Below this the plans mostly wait (on I/O): admit one more.
RAISE_BELOW = 0.5
# Above it they compute: admit no more than one per core.
LOWER_ABOVE = 0.8
SAMPLE_INTERVAL_S = 0.25


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class CpuDemand:
    """How many cores this process's descendants (Terraform and its providers) wanted
    since the last call: time on a CPU plus time runnable but waiting for one, from
    /proc/PID/task/*/schedstat. Counting the run-queue wait keeps a CPU-bound plan
    CPU-bound on a machine that other work keeps busy; other processes do not count."""

    def __init__(self, proc: Path = Path("/proc"), root_pid: int | None = None) -> None:
        self._proc = proc
        self._root = os.getpid() if root_pid is None else root_pid
        self._previous = self._demand_ns()
        self._at = time.monotonic()

    def __call__(self) -> float | None:
        """Cores wanted since the last call; None when /proc cannot be read."""
        current, now = self._demand_ns(), time.monotonic()
        previous, self._previous = self._previous, current
        elapsed, self._at = now - self._at, now
        if current is None or previous is None or elapsed <= 0:
            return None
        wanted_ns = sum(ns - previous.get(pid, 0) for pid, ns in current.items())
        return wanted_ns / 1e9 / elapsed

    def _demand_ns(self) -> dict[int, int] | None:
        """CPU + run-queue nanoseconds of every live descendant, by pid."""
        children = self._children_by_parent()
        if children is None:
            return None
        demand = {}
        pending = list(children.get(self._root, ()))
        while pending:
            pid = pending.pop()
            pending.extend(children.get(pid, ()))
            demand[pid] = self._task_ns(pid)
        return demand

    def _children_by_parent(self) -> dict[int, list[int]] | None:
        try:
            entries = [e for e in self._proc.iterdir() if e.name.isdigit()]
        except OSError:
            return None
        children: dict[int, list[int]] = {}
        for entry in entries:
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            children.setdefault(parent, []).append(int(entry.name))
        return children

    def _task_ns(self, pid: int) -> int:
        total = 0
        try:
            tasks = list((self._proc / str(pid) / "task").iterdir())
        except OSError:
            return 0
        for task in tasks:
            try:
                on_cpu, waiting = (task / "schedstat").read_text().split()[:2]
            except (OSError, ValueError):
                continue
            total += int(on_cpu) + int(waiting)
        return total


class PlanAdmission:
    """A gate in front of each plan: `with admission.slot(): plan()`."""

    def __init__(
        self,
        ceiling: int,
        cores: int | None = None,
        cores_used: Callable[[], float | None] | None = None,
        interval_s: float = SAMPLE_INTERVAL_S,
    ) -> None:
        self.ceiling = max(1, ceiling)
        self.cores = cores or usable_cores()
        self.floor = min(self.ceiling, self.cores)
        self.limit = self.floor
        self._cores_used = cores_used or CpuDemand()
        self._interval_s = interval_s
        self._running = 0
        self._changed = threading.Condition()
        self._last_sample = time.monotonic()

    @property
    def running(self) -> int:
        return self._running

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Wait until one more plan may run, and count it while it runs."""
        with self._changed:
            if self._running == 0:  # measure this batch, not the idle time before it
                self._cores_used()
                self._last_sample = time.monotonic()
            while self._running >= self._adjusted_limit():
                self._changed.wait(timeout=self._interval_s)
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify()

    def _adjusted_limit(self) -> int:
        """The limit, re-read from the CPUs at most once per interval (lock held)."""
        now = time.monotonic()
        if now - self._last_sample < self._interval_s:
            return self.limit
        self._last_sample = now
        used = self._cores_used()
        if used is None or self._running == 0:
            return self.limit
        per_plan = used / self._running
        if per_plan < RAISE_BELOW and self._running >= self.limit:
            self.limit = min(self.ceiling, self.limit + 1)
        elif per_plan > LOWER_ABOVE:
            self.limit = max(self.floor, self.limit - 1)
        return self.limit
