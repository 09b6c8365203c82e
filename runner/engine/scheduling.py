"""How many plans run at once: one per core while they compute, more while they wait.

A plan either computes (Terraform evaluating many resources: CPU-bound) or waits
(provider APIs, a remote state backend: I/O-bound). A fixed parallelism is wrong for
one of the two: four CPU-bound plans on two cores only thrash (each takes twice as
long and the first comment comes later), while four waiting plans overlap nicely.

`PlanAdmission` starts at the number of cores and, while plans queue, samples how much
CPU the running plans' processes use (/proc: this process's children, so other load
on a shared machine does not count): well under a core per running plan means they
wait on I/O, so one more is admitted, up to the configured parallelism; close to a
core each lowers the limit again (never below the core count, and no running plan is
stopped). One admission is shared by every plan of a
process, so two job workers planning at once share the same cores.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Cores used per running plan. Below this the plans mostly wait (on I/O): admit one more.
RAISE_BELOW = 0.5
# Above it they compute: admit no more than one per core.
LOWER_ABOVE = 0.8
SAMPLE_INTERVAL_S = 0.5


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class ChildrenCpu:
    """Cores used by this process's running child processes (Terraform) since the last
    call, from /proc: the plans' own CPU use, whatever else loads the machine."""

    def __init__(self, proc: Path = Path("/proc"), parent: int | None = None) -> None:
        self._proc = proc
        self._parent = os.getpid() if parent is None else parent
        self._ticks_per_s = os.sysconf("SC_CLK_TCK")
        self._previous = self._children_ticks()
        self._at = time.monotonic()

    def __call__(self) -> float | None:
        """Cores busy with children since the last call; None when /proc cannot be read."""
        current, now = self._children_ticks(), time.monotonic()
        previous, self._previous = self._previous, current
        elapsed, self._at = now - self._at, now
        if current is None or previous is None or elapsed <= 0:
            return None
        used = sum(ticks - previous.get(pid, 0) for pid, ticks in current.items())
        return used / self._ticks_per_s / elapsed

    def _children_ticks(self) -> dict[int, int] | None:
        """utime + stime of every live child, by pid."""
        try:
            entries = list(self._proc.iterdir())
        except OSError:
            return None
        found = {}
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            if int(fields[1]) == self._parent:  # fields: state, ppid, ..., utime, stime
                found[int(entry.name)] = int(fields[11]) + int(fields[12])
        return found


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
        self.floor = min(self.ceiling, cores or usable_cores())
        self.limit = self.floor
        self._cores_used = cores_used or ChildrenCpu()
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
