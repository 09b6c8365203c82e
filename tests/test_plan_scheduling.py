"""How many plans run at once (runner/engine/scheduling.py): one per core while the CPUs
are saturated, more while the running plans wait on I/O."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from runner.engine.scheduling import CpuDemand, PlanAdmission, usable_cores

WAIT_S = 30.0  # upper bound for the polling below; never reached when things work


class _Plans:
    """`count` threads that each take a slot and hold it until released."""

    def __init__(self, admission: PlanAdmission, count: int) -> None:
        self.admission = admission
        self.release = threading.Event()
        self.peak = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._plan) for _ in range(count)]
        for thread in self._threads:
            thread.start()

    def _plan(self) -> None:
        with self.admission.slot():
            with self._lock:
                self.peak = max(self.peak, self.admission.running)
            self.release.wait(WAIT_S)

    def wait_until(self, predicate: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not predicate():
            assert time.monotonic() < deadline, "gave up waiting"
            time.sleep(0.01)

    def finish(self) -> None:
        self.release.set()
        for thread in self._threads:
            thread.join(WAIT_S)


def _readings(*values: float) -> Callable[[], float | None]:
    """Cores used by the running plans, one value per sample, the last one repeated."""
    remaining = list(values)

    def read() -> float | None:
        return remaining.pop(0) if len(remaining) > 1 else remaining[0]

    return read


def test_cpu_bound_plans_run_one_per_core():
    admission = PlanAdmission(ceiling=4, cores=2, cores_used=_readings(2.0), interval_s=0.01)
    plans = _Plans(admission, 4)

    plans.wait_until(lambda: admission.running == 2)
    time.sleep(0.2)  # many samples of saturated CPUs: no third plan is admitted

    assert admission.running == 2 and admission.limit == 2
    plans.finish()
    assert plans.peak == 2


def test_waiting_plans_raise_the_limit_up_to_the_configured_parallelism():
    admission = PlanAdmission(ceiling=4, cores=2, cores_used=_readings(0.1), interval_s=0.01)
    plans = _Plans(admission, 6)

    plans.wait_until(lambda: admission.running == 4)
    time.sleep(0.2)

    assert admission.limit == 4 and admission.running == 4  # never above the ceiling
    plans.finish()
    assert plans.peak == 4


def test_plans_that_start_computing_bring_the_limit_back_to_the_core_count():
    used = [0.1]
    admission = PlanAdmission(ceiling=4, cores=2, cores_used=lambda: used[0], interval_s=0.01)
    plans = _Plans(admission, 4)
    plans.wait_until(lambda: admission.running == 4)

    used[0] = 4.0  # the four running plans now use a core each
    extra = _Plans(admission, 1)
    plans.wait_until(lambda: admission.limit == 2)

    assert admission.running == 4  # nobody is stopped; the fifth plan waits
    plans.finish()
    extra.finish()
    assert extra.peak <= 2


def test_an_unreadable_cpu_share_keeps_the_core_count():
    admission = PlanAdmission(ceiling=8, cores=2, cores_used=lambda: None, interval_s=0.01)
    plans = _Plans(admission, 3)
    plans.wait_until(lambda: admission.running == 2)
    time.sleep(0.1)

    assert admission.running == 2
    plans.finish()


def test_the_cpu_demand_of_descendant_processes_is_read_from_proc(tmp_path: Path):
    sampler = CpuDemand()
    # A grandchild, as a provider is Terraform's child: it counts too.
    burner = subprocess.Popen(
        ["sh", "-c", f"{sys.executable} -c 'while True: pass'; :"], start_new_session=True
    )
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(1.0)
        used = sampler()
        # Only the sleeper left: its share is ~0.
        os.killpg(burner.pid, signal.SIGKILL)
        burner.wait()
        time.sleep(0.3)
        idle = sampler()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(burner.pid, signal.SIGKILL)
        for child in (burner, sleeper):
            child.kill()
            child.wait()

    assert used is not None and used > 0.8  # running or waiting to run: a whole core
    assert idle is not None and idle < 0.1
    assert usable_cores() >= 1
    assert CpuDemand(tmp_path / "no-such-proc")() is None
