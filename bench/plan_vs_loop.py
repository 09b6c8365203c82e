"""`gitops-runner plan` on N changed projects versus a shell loop of init + plan.

Two workloads: `cpu` (many `terraform_data` resources: pure CPU, the worst case for
any runner on 2 cores since there is no waiting to overlap) and `latency` (each project
reads `terraform_remote_state` data sources from a local HTTP backend that answers
after a delay, in chained levels: what real plans spend their time on is waiting for
cloud APIs).

Both sides use the same Terraform (the one the runner would pick: GITOPS_TERRAFORM_BIN,
`terraform`/`tofu` on PATH, else the embedded one) and start from a clean tree each
round (no `.terraform`). Rounds alternate runner/loop so machine noise hits both.

    python bench/plan_vs_loop.py [--workload cpu|latency] [--projects 8] [--rounds 3]
                                 [--resources 40] [--latency-ms 150] [--embedded]
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import git

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.terraform import embedded_terraform, locate_terraform

MODULE = """variable "name" {
  type = string
}

output "tags" {
  value = { name = var.name, managed_by = "gitops-runner" }
}
"""

# Issue 10: at most 0.60 of the loop for CPU-bound plans, 0.50 for plans waiting on APIs.
TARGET_RATIO = {"cpu": 0.60, "latency": 0.50}


def project_tf(index: int, resources: int, version: str) -> str:
    blocks = [
        f'module "tags" {{\n  source = "../../modules/tags"\n  name   = "svc{index}"\n}}\n',
        f'variable "release" {{\n  default = "{version}"\n}}\n',
    ]
    for number in range(resources):
        blocks.append(
            f'resource "terraform_data" "r{number}" {{\n'
            f"  input = {{ n = {number}, release = var.release, tags = module.tags.tags }}\n}}\n"
        )
    return "\n".join(blocks)


_EMPTY_STATE = json.dumps(
    {
        "version": 4,
        "terraform_version": "1.5.0",
        "serial": 1,
        "lineage": "bench",
        "outputs": {"value": {"value": "ok", "type": "string"}},
        "resources": [],
    }
).encode()


class LatencyBackend:
    """A Terraform `http` state backend on 127.0.0.1 that answers after a delay."""

    def __init__(self, latency_s: float) -> None:
        delay = latency_s

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(_EMPTY_STATE)))
                self.end_headers()
                self.wfile.write(_EMPTY_STATE)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()


def latency_project_tf(index: int, port: int, version: str, levels: int = 3, fan: int = 4) -> str:
    """`levels` chained rounds of `fan` parallel remote-state reads, then resources."""
    blocks = [f'variable "release" {{\n  default = "{version}"\n}}\n']
    previous = "start"
    for level in range(levels):
        for reader in range(fan):
            blocks.append(
                f'data "terraform_remote_state" "l{level}r{reader}" {{\n  backend = "http"\n'
                f'  config = {{ address = "http://127.0.0.1:{port}/p{index}/{level}/{reader}'
                f'?after={previous}" }}\n}}\n'
            )
        previous = f"${{data.terraform_remote_state.l{level}r0.outputs.value}}"
    for number in range(fan):
        blocks.append(
            f'resource "terraform_data" "r{number}" {{\n'
            f'  input = {{ n = {number}, release = var.release, seen = "{previous}" }}\n}}\n'
        )
    return "\n".join(blocks)


def build_repo(root: Path, projects: int, resources: int, latency_port: int | None = None) -> Path:
    """A repo whose `feature` branch changes every one of `projects` projects."""
    repo_dir = root / "repo"
    repo = git.Repo.init(repo_dir, initial_branch="main")
    with repo.config_writer() as config:
        config.set_value("user", "name", "bench")
        config.set_value("user", "email", "bench@example.com")
    (repo_dir / "modules/tags").mkdir(parents=True)
    (repo_dir / "modules/tags/main.tf").write_text(MODULE)

    def text(index: int, version: str) -> str:
        if latency_port is None:
            return project_tf(index, resources, version)
        return latency_project_tf(index, latency_port, version)

    for index in range(projects):
        path = repo_dir / f"infra/svc{index}"
        path.mkdir(parents=True)
        (path / "main.tf").write_text(text(index, "v1"))
    repo.git.add(A=True)
    repo.index.commit("base")
    repo.git.checkout("-b", "feature")
    for index in range(projects):
        (repo_dir / f"infra/svc{index}/main.tf").write_text(text(index, "v2"))
    repo.git.add(A=True)
    repo.index.commit("change every project")
    repo.git.checkout("main")
    return repo_dir


def fresh_tree(repo_dir: Path, dest: Path) -> Path:
    """The feature branch's files in a new directory (what the loop plans)."""
    shutil.rmtree(dest, ignore_errors=True)
    git.Repo.clone_from(str(repo_dir), str(dest), branch="feature")
    return dest


def run_loop(tree: Path, terraform: tuple[str, ...], env: dict[str, str]) -> float:
    script = (
        'for d in infra/*/; do (cd "$d" && "$@" init -input=false >/dev/null '
        '&& "$@" plan -input=false -out=plan.tfplan >/dev/null); done'
    )
    start = time.perf_counter()
    subprocess.run(["bash", "-c", script, "loop", *terraform], cwd=tree, env=env, check=True)
    return time.perf_counter() - start


# What a runner in service keeps between pull requests (--keep-caches): the provider
# plugin cache, the init cache and its database (a user's data dir keeps its run
# records, so the schema is migrated once, not per command); repositories, worktrees
# and logs start empty.
KEPT_CACHES = ("plugin-cache", "init-cache", "gitops-runner.db")


def reset_data_dir(data_dir: Path, keep_caches: bool) -> None:
    if not keep_caches:
        shutil.rmtree(data_dir, ignore_errors=True)
        return
    for child in data_dir.iterdir() if data_dir.is_dir() else ():
        if not child.name.startswith(KEPT_CACHES):  # the database's -wal and -shm too
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def init_cache_hits(data_dir: Path) -> tuple[int, int]:
    """(inits restored from the init cache, inits) of the last run, from its step logs."""
    logs = list((data_dir / "logs").glob("*.log"))
    restored = sum("restored from the init cache" in log.read_text() for log in logs)
    return restored, len(logs)


def run_runner(
    repo_dir: Path,
    data_dir: Path,
    env: dict[str, str],
    keep_caches: bool = False,
    code: Path | None = None,
) -> float:
    """`gitops-runner plan` of the feature branch; `code`: run that copy of the runner
    (through its own launcher, served like this tree's, when it has a CLI server)."""
    reset_data_dir(data_dir, keep_caches)
    if code is not None:
        env = env | {"PYTHONPATH": str(code)}
    argv = [
        *runner_command(code),
        "plan",
        "--repo",
        str(repo_dir),
        "--base",
        "main",
        "--head",
        "feature",
    ]
    start = time.perf_counter()
    completed = subprocess.run(
        argv, env=env | {"GITOPS_DATA_DIR": str(data_dir)}, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if completed.returncode not in (0, 3):
        raise SystemExit(f"runner failed ({completed.returncode}):\n{completed.stderr[-2000:]}")
    return elapsed


# `python -c` and `-m` put the current directory first on the import path: run from a
# checkout, they would import the checkout's runner, not the copy on PYTHONPATH (`-P`,
# Python 3.11+, leaves the current directory out).
_LAUNCHER = "from runner.cli_server.client import main; main()"


def runner_command(code: Path | None) -> list[str]:
    """How to run `gitops-runner`: as installed, or from a copy of other code."""
    if code is None:
        return [str(Path(sys.executable).parent / "gitops-runner")]
    if (code / "runner" / "cli_server" / "client.py").exists():  # served, as this tree is
        return [sys.executable, "-P", "-c", _LAUNCHER]
    return [sys.executable, "-P", "-m", "runner"]  # older code: no CLI server


def start_cli_server(env: dict[str, str], run_dir: Path, code: Path | None = None) -> None:
    """One untimed command starts the CLI server (of `code`, else of this tree); wait
    until it listens."""
    if code is not None:
        env = env | {"PYTHONPATH": str(code)}
    listening = len(list(run_dir.glob("gitops-runner/*.sock")))
    subprocess.run([*runner_command(code), "version"], env=env, capture_output=True, check=True)
    deadline = time.monotonic() + 60
    while len(list(run_dir.glob("gitops-runner/*.sock"))) <= listening:
        if time.monotonic() > deadline:
            raise SystemExit("no CLI server started (see the .log beside its socket)")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=("cpu", "latency"), default="cpu")
    parser.add_argument("--latency-ms", type=int, default=150)
    parser.add_argument("--projects", type=int, default=8)
    parser.add_argument("--resources", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--embedded", action="store_true", help="force the embedded Terraform")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round (CI)")
    parser.add_argument(
        "--keep-caches",
        action="store_true",
        help="keep the plugin and init caches between rounds (a runner in service; "
        "one untimed warm-up run first)",
    )
    parser.add_argument(
        "--cli-server",
        choices=("on", "off"),
        default="on",
        help="on: `gitops-runner` hands `plan` to a CLI server started by an untimed "
        "first command (a person's second command); off: every run imports everything",
    )
    parser.add_argument(
        "--compare-with",
        type=Path,
        help="also run the runner from this copy of the code (e.g. `git archive HEAD`), "
        "interleaved: before, after, loop in every round",
    )
    args = parser.parse_args()
    if args.smoke:
        args.projects, args.resources, args.rounds = 2, 2, 1

    binary = embedded_terraform() if args.embedded else locate_terraform(None)
    with tempfile.TemporaryDirectory(prefix="gitops-bench-") as scratch:
        root = Path(scratch)
        empty_rc = root / "empty.tfrc"
        empty_rc.write_text("")
        env = dict(os.environ) | {
            "TF_CLI_CONFIG_FILE": str(empty_rc),
            "TF_IN_AUTOMATION": "1",
            "GITOPS_TERRAFORM_BIN": binary.argv[0] if len(binary.argv) == 1 else "",
        }
        if not env["GITOPS_TERRAFORM_BIN"]:
            env.pop("GITOPS_TERRAFORM_BIN")
        env |= {
            "GITOPS_CLI_SERVER": "true" if args.cli_server == "on" else "false",
            "XDG_RUNTIME_DIR": str(root / "run"),  # this bench's servers, gone with it
        }
        (root / "run").mkdir(mode=0o700)
        backend = LatencyBackend(args.latency_ms / 1000) if args.workload == "latency" else None
        repo_dir = build_repo(
            root, args.projects, args.resources, backend.port if backend else None
        )
        runner_times, loop_times, before_times, hits = [], [], [], []
        data, before_data = root / "data", root / "data-before"
        if args.cli_server == "on":
            start_cli_server(env, root / "run")
            if args.compare_with and (args.compare_with / "runner" / "cli_server").is_dir():
                start_cli_server(env, root / "run", args.compare_with)
        if args.keep_caches:  # warm-up: what a runner in service has done before
            run_runner(repo_dir, data, env, True)
            if args.compare_with:
                run_runner(repo_dir, before_data, env, True, args.compare_with)
        for round_number in range(args.rounds):
            if args.compare_with:
                before_times.append(
                    run_runner(repo_dir, before_data, env, args.keep_caches, args.compare_with)
                )
            runner_times.append(run_runner(repo_dir, data, env, args.keep_caches))
            hits.append(init_cache_hits(data))
            tree = fresh_tree(repo_dir, root / f"loop{round_number}")
            loop_times.append(run_loop(tree, binary.argv, env))
        runner_median = statistics.median(runner_times)
        loop_median = statistics.median(loop_times)
        if backend is not None:
            backend.close()
        print(
            f"terraform: {binary.description}; workload: {args.workload}; "
            f"CLI server: {args.cli_server}"
        )
        print(f"projects={args.projects} resources/project={args.resources} rounds={args.rounds}")
        print(f"load average: {os.getloadavg()[0]:.2f}")
        print(f"runner  (gitops-runner plan): {runner_median:6.2f} s  {runner_times}")
        print(f"loop    (init && plan each) : {loop_median:6.2f} s  {loop_times}")
        print(
            f"ratio runner/loop: {runner_median / loop_median:.2f} "
            f"(target <= {TARGET_RATIO[args.workload]:.2f})"
        )
        restored, inits = sum(h[0] for h in hits), sum(h[1] for h in hits)
        print(f"init cache hits: {restored}/{inits} projects (keep caches: {args.keep_caches})")
        if before_times:
            before_median = statistics.median(before_times)
            print(f"before  ({args.compare_with}) : {before_median:6.2f} s  {before_times}")
            print(
                f"ratio before/loop: {before_median / loop_median:.2f}; "
                f"after/before: {runner_median / before_median:.2f}"
            )


if __name__ == "__main__":
    main()
