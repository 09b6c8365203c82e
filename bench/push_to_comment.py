"""Push-to-last-comment time of a PR touching N projects, versus a shell loop of init + plan.

The runner side goes through everything a real push goes through, in this process: a
signed `pull_request` `opened` delivery POSTed over HTTP to the served runner
(`ServedRunner` from tests/support/pr_world.py: the app and the in-process job queue
that `gitops-runner serve` builds, with its default workers and parallelism), the
persisted job, a fetch into the runner's repository cache, a new worktree for the PR,
`init` + `plan` (+ `show -json` when there are changes) of every affected project, and
the comments and statuses posted to a fake GitHub over HTTP. The time runs from just
before the webhook POST to the moment the fake GitHub stored the last comment of that
PR (recorded inside the fake, so no polling delay is added).

The loop side is what a person would script: `for d in infra/*/; do (cd $d && terraform
init && terraform plan -out=...); done` in a fresh clone of the same branch (the clone
is not timed). Both use the same Terraform (`locate_terraform(None)`, or the embedded
one with `--embedded`) and start without `.terraform`: each round opens a new PR, and
the runner gives each PR a new worktree. One warm-up PR (not measured) lets the runner
create its repository cache first, as a runner in service has. Rounds alternate which
side goes first, so machine noise hits both; medians and their ratio are reported.

Workloads (generators and the delayed state backend come from bench/plan_vs_loop.py):
  cpu      every project plans `--resources` `terraform_data` resources: pure CPU,
           little for parallel plans to overlap on a 2-core machine;
  latency  every project reads chained `terraform_remote_state` data sources from a
           local HTTP backend answering after `--latency-ms` (models cloud API latency).

    .venv/bin/python bench/push_to_comment.py [--workload cpu|latency] [--projects 8]
        [--rounds 3] [--resources 40] [--latency-ms 150] [--embedded] [--parallelism N]
    .venv/bin/python bench/push_to_comment.py --smoke      # 2 projects, 1 round (CI)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from plan_vs_loop import MODULE, LatencyBackend, latency_project_tf, project_tf, run_loop

from runner.forge.base import PLAN_CONTEXT
from runner.settings import Settings, load_settings
from runner.store.jobs import JobStatus
from runner.terraform import TerraformBinary, embedded_terraform, locate_terraform
from tests.support.fake_github import FakeGitHub
from tests.support.git_repo import GitRepo
from tests.support.github_payloads import Comment, post_delivery, pull_request_event
from tests.support.pr_world import FULL_NAME, TOKEN, WEBHOOK_SECRET, ServedRunner

# Issue 10: CPU-bound plans at most 0.60 of the loop, plans waiting on APIs at most 0.40.
TARGET_RATIO = {"cpu": 0.60, "latency": 0.40}
TERMINAL = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.INTERRUPTED, JobStatus.CANCELLED})


class TimedGitHub(FakeGitHub):
    """The fake GitHub, noting when (perf_counter) each comment of each PR was stored."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.comment_times: dict[int, list[float]] = {}

    def _create_comment(self, state: object, number: int, body: str, user: str) -> Comment:
        comment = super()._create_comment(state, number, body, user)  # type: ignore[arg-type]
        self.comment_times.setdefault(number, []).append(time.perf_counter())
        return comment


class World:
    """Origin repo (working copy + bare `file://` remote) and the fake GitHub serving it."""

    def __init__(self, root: Path, text: Callable[[int, str], str], projects: int) -> None:
        self.root = root
        self.text = text
        self.projects = projects
        self.origin = GitRepo.init(root / "origin")
        files = {"modules/tags/main.tf": MODULE, ".gitignore": ".terraform/\n*.tfplan\n"}
        files |= {self.path(index): text(index, "v1") for index in range(projects)}
        self.origin.write(files).commit("base")
        self.bare = self.origin.bare_clone(root / "origin.git")
        self.origin.add_remote("origin", str(self.bare))
        self.github = TimedGitHub(token=TOKEN)
        self.github.start()
        self.github.add_repo(FULL_NAME, clone_url=self.bare.as_uri())
        self.github.set_permission(FULL_NAME, "alice", "write")

    @staticmethod
    def path(index: int) -> str:
        return f"infra/svc{index}/main.tf"

    def push_change(self, branch: str, version: str) -> str:
        """A branch changing every project, pushed to the bare remote; returns its sha."""
        self.origin.branch(branch, from_="main").checkout(branch)
        self.origin.write({self.path(i): self.text(i, version) for i in range(self.projects)})
        sha = self.origin.commit(f"change every project ({version})")
        self.origin.push("origin", branch)
        self.origin.checkout("main")
        return sha

    def open_pull(self, branch: str, head: str) -> int:
        return self.github.open_pull(
            FULL_NAME,
            head_sha=head,
            head_ref=branch,
            base_sha=self.origin.repo.commit("main").hexsha,
            user="alice",
            files=[self.path(i) for i in range(self.projects)],
        )

    def payload(self, action: str, number: int) -> dict:
        pull = self.github.pull(FULL_NAME, number)
        repo = self.github.repo(FULL_NAME)
        return pull_request_event(action, repo, pull, pull.user, hosts=self.github.hosts)

    def github_status(self, sha: str, context: str) -> str | None:
        """The latest state of a commit status context, as GitHub would show it."""
        states = [s.state for s in self.github.statuses(FULL_NAME, sha) if s.context == context]
        return states[-1] if states else None

    def comments(self, number: int) -> list[str]:
        return [comment.body for comment in self.github.comments(FULL_NAME, number)]


def wait_for_job(runner: ServedRunner, job_id: int, timeout: float = 900) -> JobStatus:
    """Poll the store until the job is finished (the last comment precedes that).

    The measured time comes from the fake GitHub's clock, not from this loop, so it polls
    slowly: every poll is a query whose CPU the runner, on the same cores, would miss."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = runner.web.store.jobs.get(job_id)
        if job is not None and job.status in TERMINAL:
            return job.status
        time.sleep(0.25)
    raise TimeoutError(f"job {job_id} not finished after {timeout} s")


@dataclass(frozen=True)
class RunnerTiming:
    """One runner round: the total, and where it went (seconds)."""

    total: float  # webhook POST -> last comment stored by the fake GitHub
    ack: float  # POST -> 202 received
    pickup: float  # POST -> a job worker claimed the job (store's started_at)
    comments: int  # comments posted for the PR (a long plan is split)
    cpu: float  # CPU of this process and its finished children, POST -> job done


def runner_round(world: World, runner: ServedRunner, branch: str, head: str) -> RunnerTiming:
    """Open a PR of the pushed `branch`, POST the delivery, wait for the job's last comment."""
    number = world.open_pull(branch, head)
    payload = world.payload("opened", number)
    posted_at = datetime.now(UTC)
    cpu_start = cpu_seconds()
    start = time.perf_counter()
    reply = post_delivery(runner.url, "pull_request", payload, WEBHOOK_SECRET)
    ack = time.perf_counter() - start
    if reply.status_code != 202:
        raise SystemExit(f"webhook not queued: HTTP {reply.status_code} {reply.text[:300]}")
    job_id = reply.json()["job"]
    status = wait_for_job(runner, job_id)
    cpu = cpu_seconds() - cpu_start
    times = world.github.comment_times.get(number, [])
    text = "\n".join(world.comments(number))
    plan_status = world.github_status(head, PLAN_CONTEXT)
    missing = [i for i in range(world.projects) if f"infra/svc{i}" not in text]
    if status is not JobStatus.DONE or plan_status != "success" or not times or missing:
        raise SystemExit(
            f"PR #{number}: job {status}, {PLAN_CONTEXT} {plan_status}, "
            f"projects missing from the comments {missing}:\n{text[:3000]}"
        )
    job = runner.web.store.jobs.get(job_id)
    assert job is not None and job.started_at is not None
    timing = RunnerTiming(
        total=times[-1] - start,
        ack=ack,
        pickup=(job.started_at - posted_at).total_seconds(),
        comments=len(times),
        cpu=cpu,
    )
    # Untimed: close the PR so its project locks go before the next PR plans them.
    world.github.close(FULL_NAME, number)
    post_delivery(runner.url, "pull_request", world.payload("closed", number), WEBHOOK_SECRET)
    runner.wait_idle()
    return timing


def loop_round(
    world: World, branch: str, binary: TerraformBinary, env: dict[str, str]
) -> tuple[float, float]:
    """A fresh clone of the round's branch (untimed), then the timed shell loop: (wall, CPU)."""
    tree = world.root / f"loop-{branch}"
    subprocess.run(
        ["git", "clone", "-q", "--branch", branch, str(world.bare), str(tree)], check=True
    )
    cpu_start = cpu_seconds()
    wall = run_loop(tree, binary.argv, env)
    return wall, cpu_seconds() - cpu_start


def cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children (Terraform, git, bash):
    less sensitive than wall time to other work on a shared machine."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def build_settings(
    root: Path,
    github: FakeGitHub,
    binary: TerraformBinary,
    parallelism: int | None,
    gogc: int | None = None,
) -> Settings:
    """The runner's settings as an operator would set them, plus the bench's Terraform."""
    if len(binary.argv) != 1:
        raise SystemExit(f"cannot configure {binary.description} as GITOPS_TERRAFORM_BIN")
    values: dict[str, object] = {
        "data_dir": root / "data",
        "github_token": TOKEN,
        "github_api_url": github.api_url,
        "github_webhook_secret": WEBHOOK_SECRET,
        "terraform_bin": binary.argv[0],
    }
    if parallelism:
        values["parallelism"] = parallelism
    if gogc is not None:
        values["terraform_gogc"] = gogc
    return load_settings(**values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=("cpu", "latency"), default="cpu")
    parser.add_argument("--latency-ms", type=int, default=150)
    parser.add_argument("--projects", type=int, default=8)
    parser.add_argument("--resources", type=int, default=40, help="per project (cpu workload)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallelism", type=int, help="runner setting (default: its own)")
    parser.add_argument("--embedded", action="store_true", help="force the embedded Terraform")
    parser.add_argument("--terraform-gogc", type=int, help="runner setting (0: Go's default GC)")
    parser.add_argument("--smoke", action="store_true", help="2 small projects, one round (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.projects, args.resources, args.rounds = 2, 2, 1

    # The bench's own settings only: an operator's GITOPS_* must not leak into the runner.
    for name in [name for name in os.environ if name.startswith("GITOPS_")]:
        del os.environ[name]
    binary = embedded_terraform() if args.embedded else locate_terraform(None)
    load_before = os.getloadavg()
    runner_times: list[RunnerTiming] = []
    loop_times: list[float] = []
    loop_cpus: list[float] = []
    with tempfile.TemporaryDirectory(prefix="gitops-bench-push-") as scratch:
        root = Path(scratch)
        empty_rc = root / "empty.tfrc"
        empty_rc.write_text("")
        # Both sides (the runner runs in this process) read the same CLI config.
        os.environ["TF_CLI_CONFIG_FILE"] = str(empty_rc)
        env = dict(os.environ) | {"TF_IN_AUTOMATION": "1"}
        backend = LatencyBackend(args.latency_ms / 1000) if args.workload == "latency" else None

        def text(index: int, version: str) -> str:
            if backend is not None:
                return latency_project_tf(index, backend.port, version)
            return project_tf(index, args.resources, version)

        world = World(root, text, args.projects)
        settings = build_settings(root, world.github, binary, args.parallelism, args.terraform_gogc)
        runner = ServedRunner(settings)
        try:
            # Warm-up, not measured: the runner's repository cache, imports, first queries.
            runner_round(world, runner, "bench-warmup", world.push_change("bench-warmup", "w"))
            for round_number in range(args.rounds):
                # Untimed: one new branch per round, planned by both sides.
                branch = f"bench-r{round_number}"
                head = world.push_change(branch, f"r{round_number}")
                for side in ("runner", "loop") if round_number % 2 == 0 else ("loop", "runner"):
                    if side == "runner":
                        runner_times.append(runner_round(world, runner, branch, head))
                    else:
                        wall, cpu = loop_round(world, branch, binary, env)
                        loop_times.append(wall)
                        loop_cpus.append(cpu)
        finally:
            runner.stop()
            world.github.stop()
            if backend is not None:
                backend.close()
    load_after = os.getloadavg()

    totals = [timing.total for timing in runner_times]
    runner_median = statistics.median(totals)
    loop_median = statistics.median(loop_times)
    detail = (
        f"{args.resources} terraform_data each"
        if args.workload == "cpu"
        else f"remote-state reads at {args.latency_ms} ms"
    )
    print(f"terraform: {binary.description}")
    print(
        f"workload {args.workload}: {args.projects} projects ({detail}), rounds={args.rounds}, "
        f"runner workers={settings.workers} parallelism={settings.parallelism}"
    )
    print(
        f"load average before {load_before[0]:.2f} / after {load_after[0]:.2f} "
        f"(cpus: {os.cpu_count()})"
    )
    print(f"runner (webhook POST -> last comment): {runner_median:6.2f} s  {fmt(totals)}")
    print(f"loop   (init && plan each)           : {loop_median:6.2f} s  {fmt(loop_times)}")
    print(
        f"ratio runner/loop: {runner_median / loop_median:.2f} "
        f"(target <= {TARGET_RATIO[args.workload]:.2f})"
    )
    runner_cpu = statistics.median(timing.cpu for timing in runner_times)
    loop_cpu = statistics.median(loop_cpus)
    print(
        f"CPU (user+sys, incl. Terraform): runner {runner_cpu:.2f} s, loop {loop_cpu:.2f} s, "
        f"ratio {runner_cpu / loop_cpu:.2f}"
    )
    ack = statistics.median(timing.ack for timing in runner_times)
    pickup = statistics.median(timing.pickup for timing in runner_times)
    comments = max(timing.comments for timing in runner_times)
    print(
        f"runner medians: ack {ack * 1000:.0f} ms, POST -> job claimed {pickup * 1000:.0f} ms, "
        f"claimed -> last comment {runner_median - pickup:.2f} s; up to {comments} comment(s)/PR"
    )


def fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{value:.2f}" for value in values) + "]"


if __name__ == "__main__":
    main()
