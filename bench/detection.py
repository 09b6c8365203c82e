"""Benchmark: map a pull request's changed files to projects in a large monorepo.

Generates (in a temp dir, with real git) a repository of many projects calling shared
local modules, some modules calling modules, commits it, then commits a 50-path change
on a branch and times the whole mapping: changed_files + config + module graph +
affected_projects. Each configuration source is measured (autodiscovery and a
gitops-runner.yaml listing every project) in three states:

- first scan ever: a new process (no memo) with an empty cache dir;
- cold: a new process whose cache dir (the runner's data dir) holds what mapping the
  base commit left there: the tree index of main, the module calls it confirmed and
  the parsed config file (the PR's is the same). This is what a runner in service sees
  for a PR's first push after a restart;
- next commit: the process that mapped main (and left its cache dir) maps the PR: a
  runner in service between restarts, for a push of a tree it has not seen;
- warm: the same process mapping the same tree again (a re-plan, or the next PR event
  of an unchanged tree).

    .venv/bin/python bench/detection.py            # 5,000 projects, 200 modules
    .venv/bin/python bench/detection.py --smoke    # small, for CI
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.config.loader import RUNNER_FILE, load_repo_config
from runner.projects.changes import changed_files
from runner.projects.detection import affected_projects
from runner.terraform.modules import ModuleGraph
from tests.support.git_repo import GitRepo

TEAMS = 50


@dataclass(frozen=True)
class Size:
    projects: int
    modules: int


def project_dir(i: int) -> str:
    return f"stacks/team-{i % TEAMS:02d}/svc-{i:05d}"


def module_dir(k: int) -> str:
    return f"modules/mod-{k:03d}"


def project_main(i: int, size: Size) -> str:
    a, b = i % size.modules, (i * 7 + 3) % size.modules
    # A provisioner-like `source = "./…"` and a commented-out call: both must be ignored.
    return f"""module "first" {{
  source = "../../../{module_dir(a)}"
  name   = "svc-{i}"
}}

module "second" {{
  source = "../../../{module_dir(b)}"
  name   = "svc-{i}-b"
}}

# module "old" {{
#   source = "../../../{module_dir((a + 1) % size.modules)}"
# }}

resource "terraform_data" "site" {{
  input = {{ source = "./files/index.html", tags = module.first.tags }}
}}
"""


def module_main(k: int, size: Size) -> str:
    body = """variable "name" {
  type = string
}

resource "terraform_data" "tags" {
  input = { name = var.name }
}

output "tags" {
  value = terraform_data.tags.output
}
"""
    if k % 5 == 0 and k + 1 < size.modules:  # every fifth module calls the next one
        body += f"""
module "inner" {{
  source = "../{module_dir(k + 1).split("/")[-1]}"
  name   = var.name
}}
"""
    return body


def runner_yaml(size: Size) -> str:
    lines = ["version: 1", "projects:"]
    lines += [f"  - dir: {project_dir(i)}" for i in range(size.projects)]
    return "\n".join(lines) + "\n"


def generate(root: Path, size: Size) -> GitRepo:
    """Commit the base repository on main, then a 50-path change on branch `pr`."""
    repo = GitRepo.init(root)
    files: dict[str, str] = {"README.md": "# monorepo\n"}
    for i in range(size.projects):
        files[f"{project_dir(i)}/main.tf"] = project_main(i, size)
        files[f"{project_dir(i)}/variables.tf"] = 'variable "x" {\n  default = 1\n}\n'
    for k in range(size.modules):
        files[f"{module_dir(k)}/main.tf"] = module_main(k, size)
    repo.write(files)
    repo.commit("base")
    repo.branch("pr").checkout("pr")
    step = max(1, size.projects // 40)
    edits = {
        f"{project_dir(i)}/main.tf": project_main(i, size) + "# edited\n"
        for i in range(0, size.projects, step)
    }
    edits = dict(list(edits.items())[:36])
    edits.update(
        {f"{project_dir(i + 1)}/terraform.tfvars": "x = 2\n" for i in range(0, 5 * step, step)}
    )
    for k in (1, size.modules // 4, size.modules // 2, size.modules - 1):
        edits[f"{module_dir(k)}/main.tf"] = module_main(k, size) + "# edited\n"
    edits.update({"docs/a.md": "a\n", "docs/b.md": "b\n"})
    repo.write(edits)
    repo.rename(f"{project_dir(2)}/variables.tf", f"{project_dir(2)}/vars.tf")
    repo.commit("the pull request")
    return repo


@dataclass(frozen=True)
class Sample:
    total: float
    cpu: float  # this process and its git children: what contention cannot inflate
    stages: dict[str, float]
    affected: int
    files: int


def map_change(root: Path, cache_dir: Path) -> Sample:
    """The full mapping, stage by stage, as the runner does it for a pull request."""
    stages: dict[str, float] = {}
    cpu_start = _cpu()

    def timed(name: str, fn: Callable[[], object]) -> object:
        start = time.perf_counter()
        value = fn()
        stages[name] = time.perf_counter() - start
        return value

    with _GarbageCollectorTime() as gc_time:
        files = timed("changed_files", lambda: changed_files(root, "main", "pr"))
        graph = timed("graph.build", lambda: ModuleGraph.build(root, cache_dir=cache_dir))
        config = timed("config", lambda: load_repo_config(root, graph=graph))
        affected = timed("affected", lambda: affected_projects(config, files, graph))
    stages["of which gc"] = gc_time.seconds
    total = sum(v for k, v in stages.items() if k != "of which gc")
    return Sample(total, _cpu() - cpu_start, stages, len(affected), len(files))


class _GarbageCollectorTime:
    """Time the cyclic garbage collector ran meanwhile: a full collection of this
    process's heap is tens of milliseconds, and allocating thousands of objects (a
    5,000-project config) is what triggers one."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __enter__(self) -> _GarbageCollectorTime:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started


def _cpu() -> float:
    # getrusage, not os.times: os.times counts in clock ticks (10 ms), as coarse as the
    # differences this column is read for.
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def forget_process_memos() -> None:
    """What a fresh process has not seen yet: the trees' module-graph skeletons, the
    validated discovered projects, the parsed config files, the parsed glob anchors."""
    from runner.config import discovery, loader
    from runner.projects import detection
    from runner.terraform import modules

    skeletons = getattr(modules, "_SKELETONS", None)
    if skeletons is not None:  # a new memo of the same type (its class was renamed)
        modules._SKELETONS = type(skeletons)(8)
    if hasattr(modules, "_PARSED"):
        modules._PARSED.clear()  # module calls by blob id, kept in memory by the process
    for memo in (
        getattr(discovery, "_project", None),
        getattr(detection, "_outside_anchors", None),
        getattr(loader, "_parsed", None),
        getattr(modules, "_source_shape", None),
    ):
        if memo is not None:
            memo.cache_clear()


def base_checkout(root: Path, dest: Path) -> Path:
    """A worktree of the repository at main, as the runner keeps one per branch."""
    subprocess.run(
        ["git", "-C", str(root), "worktree", "add", "--quiet", "--detach", str(dest), "main"],
        check=True,
    )
    return dest


def map_base(base: Path, cache_dir: Path) -> None:
    """What mapping the base commit leaves in the cache dir (no change: nothing affected)."""
    graph = ModuleGraph.build(base, cache_dir=cache_dir)
    affected_projects(load_repo_config(base, graph=graph), [], graph)


def measure(root: Path, work: Path, reps: int) -> list[tuple[str, list[Sample]]]:
    rows = []
    base = base_checkout(root, work / "main")
    for label in ("autodiscovery", RUNNER_FILE):
        first = []
        for rep in range(reps):
            forget_process_memos()
            first.append(map_change(root, work / f"{label}-first-{rep}"))
        base_cache = work / f"{label}-base"
        forget_process_memos()
        map_base(base, base_cache)
        cold = []
        for rep in range(reps):
            cache = work / f"{label}-cold-{rep}"
            shutil.copytree(base_cache, cache)  # each new process finds main's index only
            forget_process_memos()
            cold.append(map_change(root, cache))
        following = []
        for rep in range(reps):
            cache = work / f"{label}-next-{rep}"
            forget_process_memos()
            map_base(base, cache)
            following.append(map_change(root, cache))
        warm_cache = work / f"{label}-warm"
        map_change(root, warm_cache)  # fill the cache
        warm = [map_change(root, warm_cache) for _ in range(reps)]
        rows += [
            (f"{label} first scan ever", first),
            (f"{label} cold", cold),
            (f"{label} next commit", following),
            (f"{label} warm", warm),
        ]
        if label == "autodiscovery":
            for checkout in (root, base):  # untracked: config only
                (checkout / RUNNER_FILE).write_text(runner_yaml(SIZE))
    return rows


def report(rows: list[tuple[str, list[Sample]]]) -> None:
    stage_names = list(rows[0][1][0].stages)
    header = f"{'scenario':<38}{'median':>9}{'min':>9}{'max':>9}{'cpu':>9}  " + "  ".join(
        f"{s:>13}" for s in stage_names
    )
    print(header)
    print("-" * len(header))
    for label, samples in rows:
        totals = [s.total for s in samples]
        per_stage = "  ".join(
            f"{statistics.median(s.stages[n] for s in samples) * 1000:>11.0f}ms"
            for n in stage_names
        )
        cpu = statistics.median(s.cpu for s in samples)
        print(
            f"{label:<38}{statistics.median(totals) * 1000:>7.0f}ms{min(totals) * 1000:>7.0f}ms"
            f"{max(totals) * 1000:>7.0f}ms{cpu * 1000:>7.0f}ms  {per_stage}"
        )
    first = rows[0][1][0]
    print(f"\nchanged paths: {first.files}, affected projects: {first.affected}")
    print("median/min/max: wall clock of the whole mapping; cpu: median CPU incl. git; stages:")
    print("median wall clock. First scan ever: new process, empty cache dir; cold: new")
    print("process, cache dir left by mapping main; next commit: the process that mapped")
    print("main maps the PR; warm: same process, same tree again.")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    global SIZE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small repository (CI)")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    SIZE = Size(200, 20) if args.smoke else Size(5000, 200)
    reps = 2 if args.smoke else args.reps
    with tempfile.TemporaryDirectory(prefix="bench-detection-") as tmp:
        root, work = Path(tmp, "repo"), Path(tmp, "work")
        start = time.perf_counter()
        generate(root, SIZE)
        print(
            f"{SIZE.projects} projects, {SIZE.modules} modules; "
            f"generated in {time.perf_counter() - start:.1f}s; {reps} repetitions\n"
        )
        report(measure(root, work, reps))


SIZE = Size(5000, 200)

if __name__ == "__main__":
    main()
