"""Benchmark: a drift scan of N in-sync + M drifted projects vs a shell loop of plans.

Builds (in a temp dir, real git, real Terraform, the test suite's files provider) a
repository of small projects, applies them all, edits M managed files out of band,
then times, in one run:

  loop  `for d in */; do (cd $d && terraform plan -detailed-exitcode -lock=false); done`
        over the already-initialised working tree (the cheapest possible baseline);
  scan  `DriftService.scan()`: fetch, checkout, init, plan -out, show -json for the
        changed ones, classify, store (warm: the drift tree already initialised).

    .venv/bin/python bench/drift.py             # 50 in sync + 5 drifted, parallelism 2
    .venv/bin/python bench/drift.py --smoke     # 4 + 1
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

from runner.drift.model import DriftStatus
from runner.drift.scan import DriftRepo
from runner.drift.service import DriftService
from runner.notify.base import NullNotifier
from runner.settings import Settings
from runner.store.store import Store
from runner.terraform import Terraform, locate_terraform
from tests.support.drift_world import project_tf
from tests.support.files_provider import install_files_provider
from tests.support.git_repo import GitRepo


def build(root: Path, in_sync: int, drifted: int, settings: Settings) -> tuple[GitRepo, list[str]]:
    os.environ["TF_CLI_CONFIG_FILE"] = str(install_files_provider(root / "provider"))
    state, world = root / "state", root / "world"
    state.mkdir()
    world.mkdir()
    repo = GitRepo.init(root / "repo")
    names = [f"p{i:03d}" for i in range(in_sync + drifted)]
    files = {".gitignore": ".terraform/\n*.tfplan\n.terraform.lock.hcl\n"}
    files |= {f"{n}/main.tf": project_tf(state, world, n, n) for n in names}
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
    parser.add_argument("--parallelism", type=int, default=2)
    args = parser.parse_args()
    in_sync, drifted = (4, 1) if args.smoke else (50, 5)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = Settings(data_dir=root / "data", parallelism=args.parallelism)
        repo, names = build(root, in_sync, drifted, settings)
        store = Store.open(settings.resolved_database_url)
        service = DriftService(settings, store, notifier=NullNotifier())
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
        print(f"projects: {in_sync} in sync + {drifted} drifted, parallelism {args.parallelism}")
        print(f"shell loop (plan only, pre-initialised): {loop:7.2f} s")
        print(f"drift scan, first (checkout + init):     {cold:7.2f} s  ({cold / loop:.2f} x loop)")
        print(f"drift scan, warm:                        {warm:7.2f} s  ({warm / loop:.2f} x loop)")
        assert all(r.status is not DriftStatus.ERROR for r in report.results)
        store.close()


if __name__ == "__main__":
    main()
