"""Scaled out: web processes answer webhooks, worker processes run every kind of job.

Real `gitops-runner serve` (gunicorn) and `gitops-runner worker` (RQ) processes on the
machine's PostgreSQL and Redis (`GITOPS_TEST_POSTGRES_URL`, `GITOPS_TEST_REDIS_URL`;
skipped with the reason when absent, required with `CI=true`), a fake GitHub over real
HTTP, real git repositories and the embedded Terraform on small projects. Webhooks are
signed and posted to the web processes like GitHub's Hookshot does; the outcome is read
from the shared database and from the fake forge.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import requests

from runner.store import migrate
from runner.store.jobs import JobRecord, JobStatus
from runner.store.runs import RunRecord
from tests.support.fake_github import FakeGitHub
from tests.support.git_repo import GitRepo
from tests.support.github_payloads import (
    Repo,
    issue_comment_event,
    post_delivery,
    pull_request_event,
    push_event,
)
from tests.support.jobs import Deployment, owner_pid, redis_url_or_skip
from tests.support.tfstate import applied_input

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

FULL_NAME = "acme/infra"
SECRET = "scale-out-secret"
TOKEN = "ghp-scale-out-token"
API_TOKEN = "scale-out-api-token-0123456789"
PROJECTS = ("infra/a", "infra/b", "infra/c")
PR_KINDS = ("pull_request", "comment")


def project_tf(release: str = "1") -> str:
    return (
        f'variable "release" {{\n  default = "{release}"\n}}\n'
        'resource "terraform_data" "r" {\n  input = var.release\n}\n'
    )


GATED_TF = """data "terraform_remote_state" "gate" {
  backend = "http"
  config = {
    address = "%s"
  }
}

output "gate" {
  value = data.terraform_remote_state.gate.outputs.value
}
"""


class StateGate:
    """A Terraform `http` state backend that holds every read until the test opens it:
    a plan reading it is provably in progress while it waits."""

    STATE = json.dumps(
        {
            "version": 4,
            "terraform_version": "1.5.0",
            "serial": 1,
            "lineage": "gate",
            "outputs": {"value": {"value": "open", "type": "string"}},
            "resources": [],
        }
    ).encode()

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.opened = threading.Event()
        gate = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                gate.reached.set()
                gate.opened.wait(120)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(gate.STATE)))
                self.end_headers()
                self.wfile.write(gate.STATE)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/state"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.opened.set()
        self._server.shutdown()


class Forge:
    """The origin repository (a bare `file://` remote) and its fake GitHub."""

    def __init__(self, root: Path, extra: dict[str, str] | None = None) -> None:
        self.origin = GitRepo.init(root / "origin")
        self.origin.write({f"{p}/main.tf": project_tf() for p in PROJECTS} | (extra or {}))
        self.origin.commit("projects")
        self.bare = self.origin.bare_clone(root / "origin.git")
        self.origin.add_remote("origin", str(self.bare))
        self.github = FakeGitHub(token=TOKEN)
        self.github.start()
        self.github.add_repo(FULL_NAME, clone_url=self.bare.as_uri())
        self.github.set_permission(FULL_NAME, "alice", "write")

    def settings(self) -> dict[str, str]:
        return {
            "GITOPS_GITHUB_TOKEN": TOKEN,
            "GITOPS_GITHUB_API_URL": self.github.api_url,
            "GITOPS_GITHUB_WEBHOOK_SECRET": SECRET,
            "GITOPS_API_TOKEN": API_TOKEN,
        }

    def push_branch(self, branch: str, files: dict[str, str]) -> str:
        if branch not in [head.name for head in self.origin.repo.heads]:
            self.origin.branch(branch, from_="main")
        self.origin.checkout(branch)
        self.origin.write(files)
        sha = self.origin.commit(f"change on {branch}")
        self.origin.push("origin", branch)
        self.origin.checkout("main")
        return sha

    def open_pr(self, branch: str, files: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Push and open a PR; the `opened` payload GitHub would deliver."""
        head = self.push_branch(branch, files)
        main = self.origin.repo.commit("main").hexsha
        number = self.github.open_pull(
            FULL_NAME, head_sha=head, head_ref=branch, base_sha=main, user="alice", files=files
        )
        return number, self._pr_payload("opened", number)

    def push_to_pr(self, number: int, branch: str, files: dict[str, str]) -> dict[str, Any]:
        head = self.push_branch(branch, files)
        before = self.github.push(FULL_NAME, number, head, files=list(files))
        return self._pr_payload("synchronize", number, before)

    def comment(self, number: int, body: str) -> dict[str, Any]:
        comment_id = self.github.add_comment(FULL_NAME, number, body, "alice")
        repo = self.github.repo(FULL_NAME)
        return issue_comment_event(
            "created", repo, number, body, "alice", comment_id, hosts=self.github.hosts
        )

    def _pr_payload(self, action: str, number: int, before: str | None = None) -> dict[str, Any]:
        pull = self.github.pull(FULL_NAME, number)
        repo = self.github.repo(FULL_NAME)
        return pull_request_event(
            action, repo, pull, "alice", before=before, hosts=self.github.hosts
        )

    def comments(self, number: int) -> list[str]:
        return [c.body for c in self.github.comments(FULL_NAME, number)]

    def stop(self) -> None:
        self.github.stop()


@pytest.fixture
def database_url(postgres_url: str) -> str:
    """An empty PostgreSQL schema of this test's own, migrated (`db upgrade` ran)."""
    migrate(postgres_url)
    return postgres_url


@pytest.fixture
def redis_url() -> str:
    return redis_url_or_skip()


@pytest.fixture
def forge(tmp_path: Path) -> Iterator[Forge]:
    world = Forge(tmp_path)
    yield world
    world.stop()


def deployment(tmp_path: Path, database_url: str, redis_url: str, forge: Forge) -> Deployment:
    # A short lease, so a dead worker's job comes back within seconds, not minutes.
    values = forge.settings() | {"GITOPS_REDIS_URL": redis_url, "GITOPS_JOB_LEASE_SECONDS": "6"}
    return Deployment(tmp_path / "deploy", database_url, values)


def post(url: str, event: str, payload: dict[str, Any], delivery: str) -> requests.Response:
    return post_delivery(f"{url}/events", event, payload, SECRET, delivery_id=delivery)


def pr_jobs(store_jobs: list[JobRecord]) -> list[JobRecord]:
    return [job for job in store_jobs if job.kind in PR_KINDS]


def overlapping(runs: list[RunRecord]) -> list[tuple[int, int]]:
    """Pairs of runs on one project (dir, workspace) whose time spans overlap."""
    by_project: dict[tuple[str, str, str], list[RunRecord]] = {}
    for run in runs:
        by_project.setdefault((run.repo, run.dir, run.workspace), []).append(run)
    pairs = []
    for same in by_project.values():
        same.sort(key=lambda run: run.started_at)
        for first, second in pairwise(same):
            if first.finished_at is None or first.finished_at > second.started_at:
                pairs.append((first.id, second.id))
    return pairs


def test_a_burst_of_webhooks_for_ten_prs_on_two_web_and_two_worker_processes(
    tmp_path: Path, database_url: str, redis_url: str, forge: Forge
) -> None:
    # Ten PRs on overlapping projects: a, or b; every third one c as well.
    deliveries: list[tuple[str, dict[str, Any]]] = []
    for n in range(10):
        touched = ["infra/a" if n % 2 == 0 else "infra/b", *(["infra/c"] if n % 3 == 0 else [])]
        branch = f"change-{n}"
        number, opened = forge.open_pr(branch, {f"{p}/pr{n}.tf": f"# {n}\n" for p in touched})
        synchronize = forge.push_to_pr(
            number, branch, {f"{p}/pr{n}.tf": f"# {n}, again\n" for p in touched}
        )
        deliveries += [
            ("pull_request", opened),
            ("pull_request", synchronize),
            ("issue_comment", forge.comment(number, "gitops plan")),
        ]
    cluster = deployment(tmp_path, database_url, redis_url, forge)
    try:
        webs = [cluster.start_web(), cluster.start_web()]
        workers = [cluster.start_worker(), cluster.start_worker()]

        def deliver(index: int) -> requests.Response:
            event, payload = deliveries[index]
            return post(webs[index % 2], event, payload, f"burst-{index}")

        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(deliver, range(len(deliveries))))
            # GitHub redelivers some of them, to the other web process.
            again = list(
                pool.map(
                    lambda i: post(webs[(i + 1) % 2], *deliveries[i], f"burst-{i}"), range(0, 30, 6)
                )
            )

        assert [a.status_code for a in answers] == [202] * 30, [a.text for a in answers]
        assert all(a.status_code == 200 and a.json()["status"] == "duplicate" for a in again)
        job_ids = {a.json()["job"] for a in answers}
        assert len(job_ids) == 30  # every delivery is its own job: none lost, none merged
        cluster.wait_until(cluster.idle, "every job to finish", timeout=240)

        jobs = pr_jobs(cluster.store.jobs.list())
        assert {job.id for job in jobs} == job_ids
        outcomes = {job.id: (job.status, job.attempts, job.error) for job in jobs}
        # Superseded autoplans are cancelled; everything else ran exactly once, to its end.
        assert all(
            status in (JobStatus.DONE, JobStatus.CANCELLED) for status, _, _ in outcomes.values()
        ), outcomes
        assert all(attempts <= 1 for _, attempts, _ in outcomes.values()), outcomes
        ran_on = {owner_pid(job) for job in jobs if job.status is JobStatus.DONE}
        assert ran_on <= {worker.pid for worker in workers}  # never in a web process
        runs = cluster.store.runs.list_runs(limit=1000)
        assert runs and overlapping(runs) == []  # one Terraform per project at any time
        for number in range(1, 11):
            assert forge.comments(number), f"PR #{number} got no comment"
    finally:
        cluster.stop()


def test_a_worker_killed_mid_plan_leaves_the_plan_to_the_other_worker(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    gate = StateGate()
    forge = Forge(tmp_path, {"infra/slow/main.tf": GATED_TF % gate.url})
    cluster = deployment(tmp_path, database_url, redis_url, forge)
    try:
        web = cluster.start_web()
        workers = [cluster.start_worker(), cluster.start_worker()]
        number, opened = forge.open_pr("slow", {"infra/slow/extra.tf": "# a change\n"})

        answer = post(web, "pull_request", opened, "slow-opened")

        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job"]
        assert gate.reached.wait(120), cluster.logs()  # Terraform is planning, waiting on I/O
        record = cluster.store.jobs.get(job_id)
        assert record is not None and record.status is JobStatus.RUNNING
        victim = next(w for w in workers if w.pid == owner_pid(record))
        survivor = next(w for w in workers if w is not victim)
        victim.kill()
        gate.opened.set()

        cluster.wait_until(
            lambda: (
                (job := cluster.store.jobs.get(job_id)) is not None and job.status is JobStatus.DONE
            ),
            "the plan to be retried and finish",
        )
        finished = cluster.store.jobs.get(job_id)
        assert finished is not None
        assert (finished.attempts, owner_pid(finished)) == (2, survivor.pid)
        runs = [run for run in cluster.store.runs.list_runs() if run.dir == "infra/slow"]
        assert sorted(run.status.value for run in runs)[-1] != "running"
        assert any(run.status.value == "interrupted" for run in runs)
        assert any("infra/slow" in body for body in forge.comments(number))
    finally:
        cluster.stop()
        gate.close()
        forge.stop()


HELD_TF = """resource "terraform_data" "held" {
  input = "v1"
  provisioner "local-exec" {
    command = "touch %(started)s; while [ ! -f %(release)s ]; do sleep 0.2; done"
  }
}
"""


def test_a_worker_killed_mid_apply_reports_it_on_the_pr_and_never_applies_again(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    started, release = tmp_path / "apply-started", tmp_path / "apply-release"
    config = "version: 1\nprojects:\n  - dir: infra/held\n    apply: both\n"
    held = HELD_TF % {"started": started, "release": release}
    forge = Forge(tmp_path, {"gitops-runner.yaml": config, "infra/held/main.tf": held})
    cluster = deployment(tmp_path, database_url, redis_url, forge)
    try:
        web = cluster.start_web()
        first = cluster.start_worker()  # alone: it plans, so the plan file is on its disk
        number, opened = forge.open_pr("held", {"infra/held/note.tf": "# apply me\n"})
        assert post(web, "pull_request", opened, "held-opened").status_code == 202
        cluster.wait_until(cluster.idle, "the autoplan")
        answer = post(web, "issue_comment", forge.comment(number, "gitops apply"), "held-apply")
        assert answer.status_code == 202, answer.text
        apply_job = answer.json()["job"]
        cluster.wait_until(started.exists, "terraform apply to start")
        second = cluster.start_worker()

        first.kill()  # mid-apply: Terraform may have changed things and holds the state lock

        cluster.wait_until(
            lambda: cluster.store.jobs.get(apply_job).status is JobStatus.INTERRUPTED,  # type: ignore[union-attr]
            "the apply to be marked interrupted",
        )
        release.touch()
        cluster.wait_until(
            lambda: any("interrupted" in body for body in forge.comments(number)),
            "the PR to be told",
        )
        record = cluster.store.jobs.get(apply_job)
        assert record is not None and record.attempts == 1  # never re-run
        told = next(body for body in forge.comments(number) if "interrupted" in body)
        assert "force-unlock" in told and "state lock" in told
        applies = [r for r in cluster.store.runs.list_runs() if r.command == "apply"]
        assert [r.status.value for r in applies] == ["interrupted"]
        assert second.process.poll() is None  # the survivor carries on
    finally:
        release.touch()
        cluster.stop()
        forge.stop()


def test_drift_runs_on_a_drift_worker_and_two_web_processes_schedule_it_once(
    tmp_path: Path, database_url: str, redis_url: str, forge: Forge
) -> None:
    config = tmp_path / "settings.yaml"
    # A yearly schedule: its latest slot is due at once, and no other comes during the test.
    config.write_text(
        "drift_schedule: '0 0 1 1 *'\n"
        f"repos:\n  - url: {forge.bare.as_uri()}\n    full_name: {FULL_NAME}\n"
        "    forge: github\n"
    )
    cluster = deployment(tmp_path, database_url, redis_url, forge)
    try:
        webs = [cluster.start_web("--config", str(config)) for _ in range(2)]
        drift_worker = cluster.start_worker("--config", str(config), kinds="drift")
        pr_worker = cluster.start_worker("--config", str(config), kinds="pr")

        def scanned() -> list[JobRecord]:
            return [j for j in cluster.store.jobs.list(kind="drift_schedule") if j.finished_at]

        cluster.wait_until(lambda: scanned() and cluster.idle(), "the scheduled scan")
        asked = requests.post(
            f"{webs[1]}/api/drift",
            json={"project": "infra/b"},
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=30,
        )
        assert asked.status_code == 202, asked.text
        scan_id = asked.json()["id"]
        cluster.wait_until(cluster.idle, "the scan asked for")

        drift_jobs = [
            j for j in cluster.store.jobs.list() if j.kind in ("drift_schedule", "drift_scan")
        ]
        assert {j.status for j in drift_jobs} == {JobStatus.DONE}, drift_jobs
        assert {owner_pid(j) for j in drift_jobs} == {drift_worker.pid}
        assert pr_worker.pid not in {owner_pid(j) for j in drift_jobs}
        assert scan_id in {j.id for j in drift_jobs}
        # The slot fired once: one scheduled result per project, whatever both webs did.
        scheduled = [
            r for r in cluster.store.runs.list_runs(limit=500) if r.trigger.value == "schedule"
        ]
        assert sorted(r.dir for r in scheduled if r.command == "drift") == sorted(PROJECTS)
        asked_runs = [
            r for r in cluster.store.runs.list_runs(limit=500) if r.trigger.value == "api"
        ]
        assert [r.dir for r in asked_runs] == ["infra/b"]
    finally:
        cluster.stop()


def app_tf(state: Path, value: str) -> str:
    return (
        f'terraform {{\n  backend "local" {{ path = "{state}/app.tfstate" }}\n}}\n'
        f'resource "terraform_data" "v" {{\n  input = "{value}"\n}}\n'
    )


def applied(state: Path) -> str | None:
    return applied_input(state / "app.tfstate")


def test_a_push_to_the_default_branch_is_reconciled_by_a_reconcile_worker(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    files = {
        "gitops-runner.yaml": "version: 1\nprojects:\n  - dir: infra/app\n",
        "infra/app/main.tf": app_tf(state, "v1"),
    }
    forge = Forge(tmp_path, files)
    config = tmp_path / "settings.yaml"
    # Polled hourly: after the first poll at start-up, only the push can apply v2.
    config.write_text(
        f"repos:\n  - url: {forge.bare.as_uri()}\n    full_name: {FULL_NAME}\n"
        "    forge: github\n    poll_interval: 3600\n"
    )
    cluster = deployment(tmp_path, database_url, redis_url, forge)
    try:
        webs = [cluster.start_web("--config", str(config)) for _ in range(2)]
        worker = cluster.start_worker("--config", str(config), kinds="reconcile")
        cluster.wait_until(lambda: applied(state) == "v1", "the first poll")
        forge.origin.write({"infra/app/main.tf": app_tf(state, "v2")})
        head = forge.origin.commit("app v2")
        forge.origin.push("origin", "main")
        repo = Repo(FULL_NAME, clone_url=forge.bare.as_uri())
        payload = push_event(
            repo, "refs/heads/main", "0" * 40, head, "alice", hosts=forge.github.hosts
        )

        answer = post(webs[1], "push", payload, "push-main")

        assert answer.status_code == 202, answer.text
        cluster.wait_until(lambda: applied(state) == "v2", "the push to be reconciled")

        def passes_ended() -> bool:
            return all(j.finished_at for j in cluster.store.jobs.list(kind="reconcile"))

        # (Drift ticks of the configured repository wait for a drift worker: none here.)
        cluster.wait_until(passes_ended, "the passes to end")
        passes = cluster.store.jobs.list(kind="reconcile")
        assert [(j.payload["trigger"], j.payload["sha"]) for j in passes] == [
            ("poll", None),
            ("push", head),
        ]
        assert {(j.status, owner_pid(j)) for j in passes} == {(JobStatus.DONE, worker.pid)}
    finally:
        cluster.stop()
        forge.stop()
