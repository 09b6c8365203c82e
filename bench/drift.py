"""Benchmark: a drift scan of N in-sync + M drifted projects vs a shell loop of plans.

Builds (in a temp dir, real git, real Terraform, the test suite's files provider) a
repository of small projects, applies them all, edits M managed files out of band,
then times, in one run:

  loop  `for d in */; do (cd $d && terraform plan -detailed-exitcode -lock=false); done`
        over the already-initialised working tree (the cheapest possible baseline);
  scan  `DriftService.scan()`: fetch, checkout, init, plan -out, show -json for the
        changed ones, classify, store (warm: the drift tree already initialised).

    .venv/bin/python bench/drift.py             # 50 in sync + 5 drifted
    .venv/bin/python bench/drift.py --smoke     # 4 + 1
    .venv/bin/python bench/drift.py --workload latency

Workloads: `files` (every project manages files through the Python test provider:
CPU-bound, each plan starts a Python provider process) and `latency` (the in-sync
projects read `terraform_remote_state` from a local HTTP backend that answers after
a delay, like cloud API calls; the drifted ones still use the files provider).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.plan_vs_loop import LatencyBackend, latency_project_tf
from runner.drift.scan import DriftRepo
from runner.drift.service import DriftService
from runner.notify.base import NullNotifier
from runner.results.drift import DriftStatus
from runner.settings import Settings
from runner.store.store import Store
from runner.terraform import Terraform, locate_terraform
from runner.wiring import build_services
from tests.support.drift_world import project_tf
from tests.support.files_provider import install_files_provider
from tests.support.git_repo import GitRepo


def build(
    root: Path,
    in_sync: int,
    drifted: int,
    settings: Settings,
    latency_port: int | None = None,
) -> tuple[GitRepo, list[str]]:
    os.environ["TF_CLI_CONFIG_FILE"] = str(install_files_provider(root / "provider"))
    state, world = root / "state", root / "world"
    state.mkdir()
    world.mkdir()
    repo = GitRepo.init(root / "repo")
    names = [f"p{i:03d}" for i in range(in_sync + drifted)]
    files = {".gitignore": ".terraform/\n*.tfplan\n.terraform.lock.hcl\n"}
    for index, name in enumerate(names):
        if latency_port is not None and index < in_sync:
            backend = (
                f'terraform {{\n  backend "local" {{\n    path = "{state}/{name}.tfstate"\n'
                "  }\n}\n"
            )
            files[f"{name}/main.tf"] = backend + latency_project_tf(index, latency_port, "v1")
        else:
            files[f"{name}/main.tf"] = project_tf(state, world, name, name)
    repo.write(files).commit("projects")
    terraform = Terraform(
        locate_terraform(settings.terraform_bin), settings.plugin_cache_dir, settings.data_dir
    )
    for name in names:
        workdir = repo.path / name
        assert terraform.init(workdir).ok
        assert terraform.plan(workdir, Path("setup.tfplan")).exit_code == 2
        assert terraform.apply(workdir, Path("setup.tfplan")).ok
    for name in names[in_sync:]:
        (world / f"{name}.txt").write_text("edited out of band")
    return repo, names


def shell_loop(repo: GitRepo, names: list[str]) -> float:
    terraform = locate_terraform(None)
    argv = " ".join(terraform.argv)
    script = (
        "for d in " + " ".join(names) + '; do (cd "$d" && '
        f"{argv} plan -detailed-exitcode -lock=false -input=false -no-color >/dev/null); done"
    )
    env = dict(os.environ, TF_IN_AUTOMATION="1")
    start = time.perf_counter()
    subprocess.run(["sh", "-c", script], cwd=repo.path, env=env, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--parallelism", type=int, default=None, help="default: the server's")
    parser.add_argument("--workload", choices=("files", "latency"), default="files")
    parser.add_argument("--latency-ms", type=int, default=150)
    args = parser.parse_args()
    in_sync, drifted = (4, 1) if args.smoke else (50, 5)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        overrides = {"parallelism": args.parallelism} if args.parallelism else {}
        settings = Settings(data_dir=root / "data", **overrides)
        backend = LatencyBackend(args.latency_ms / 1000) if args.workload == "latency" else None
        repo, names = build(root, in_sync, drifted, settings, backend.port if backend else None)
        store = Store.open(settings.resolved_database_url)
        service = DriftService(build_services(settings, store), notifier=NullNotifier())
        target = DriftRepo.from_url(str(repo.path))
        cold_start = time.perf_counter()
        service.scan(target)
        cold = time.perf_counter() - cold_start
        loop = shell_loop(repo, names)
        warm_start = time.perf_counter()
        report = service.scan(target)
        warm = time.perf_counter() - warm_start
        counts = report.counts()
        assert counts["drift"] == drifted and counts["in_sync"] == in_sync, counts
        print(
            f"projects: {in_sync} in sync + {drifted} drifted, workload {args.workload}, "
            f"parallelism {settings.parallelism}, load {os.getloadavg()[0]:.2f}"
        )
        print(f"shell loop (plan only, pre-initialised): {loop:7.2f} s")
        print(f"drift scan, first (checkout + init):     {cold:7.2f} s  ({cold / loop:.2f} x loop)")
        print(f"drift scan, warm:                        {warm:7.2f} s  ({warm / loop:.2f} x loop)")
        assert all(r.status is not DriftStatus.ERROR for r in report.results)
        store.close()
        if backend is not None:
            backend.close()


if __name__ == "__main__":
    main()
