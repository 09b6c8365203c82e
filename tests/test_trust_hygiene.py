"""Trust hygiene (issue 7, rows 10, 13, 14, 15): each test is the attack, made harmless.

Symlinks planted in a pull request, output large enough to flood a PR, anonymous
reads of run logs, a token handed to a look-alike host, pickled RQ messages and a
delivery table that only grows.
"""

from __future__ import annotations

import json
import os
import threading
import zlib
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import insert

from runner.commands.feedback import PullRequestFeedback
from runner.config.errors import ConfigError
from runner.config.loader import load_repo_config
from runner.config.model import ProjectConfig
from runner.engine.planner import PlanTarget, _ResultBase
from runner.jobs.queue import enqueue_event
from runner.jobs.rq_queue import RQQueue
from runner.results.limits import OutputLimits, cap_comments, cap_output
from runner.results.masking import Masker
from runner.results.model import ApplyResult, ApplyStatus
from runner.results.render import render_apply_comment, render_plan_comment
from runner.settings import Settings, load_settings
from runner.store.deliveries import DeliveryPruner
from runner.store.models import Delivery, utcnow
from runner.store.runs import RunStatus
from runner.store.store import Store
from runner.terraform.result import CommandOutcome
from runner.web.app import create_app
from runner.web.context import WebServices
from runner.wiring import _clone_credentials
from runner.workspace.working_copy import WORKTREES_DIR, WorkingCopies
from tests.support.git_repo import GitRepo
from tests.support.github_payloads import Pull, Repo, build_delivery, pull_request_event
from tests.support.pr_world import FULL_NAME, TOKEN, PullRequestWorld, make_world
from tests.test_jobs import comment, redis_url  # noqa: F401  (the Redis fixture)

API_TOKEN = "api-token-of-the-operator"
WEBHOOK_SECRET = "webhook-secret"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[PullRequestWorld]:
    with make_world(tmp_path) as built:
        yield built


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory of the runner's host (its data dir, say) with a file that must survive."""
    directory = tmp_path / "runner-data"
    directory.mkdir()
    (directory / "canary.db").write_text("the runner's store\n")
    return directory


def _commit_symlinks_on_main(world: PullRequestWorld, links: dict[str, Path]) -> None:
    world.origin.checkout("main")
    for rel, target in links.items():
        path = world.origin.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path)
    world.commit_on_main({})


# ---- row 10: symlinks ------------------------------------------------------------------


def test_a_planted_terraform_symlink_never_touches_what_it_points_to(
    world: PullRequestWorld, outside: Path
) -> None:
    _commit_symlinks_on_main(world, {"infra/db/.terraform": outside})
    number = world.open_pr("db-change", {"infra/db/extra.tf": "# one\n"})
    # A new push moves the tree to another commit: the cleanup of `.terraform` runs.
    world.push_to_pr(number, {"infra/db/extra.tf": "# two\n"})

    assert sorted(p.name for p in outside.iterdir()) == ["canary.db"]
    assert (outside / "canary.db").read_text() == "the runner's store\n"
    assert "infra/db" in world.last_comment(number)


def test_checkouts_drop_committed_links_that_leave_the_tree(tmp_path: Path, outside: Path) -> None:
    src = GitRepo.init(tmp_path / "src")
    src.write({"app/main.tf": "# app\n", "shared/common.tf": "# common\n"})
    links = {
        "app/gitops-default.tfplan": outside / "canary.db",  # Terraform writes its plan here
        "app/.terraform.tfstate.lock.info": outside / "canary.db",  # and its lock info
        "app/escape": Path("../../../runner-data"),
        "app/common.tf": Path("../shared/common.tf"),  # inside: a legitimate link
    }
    for rel, target in links.items():
        os.symlink(target, src.path / rel)
    sha = src.commit("links")
    copies = WorkingCopies(tmp_path / "root")

    tree = copies.checkout(str(src.path), "pr-1", sha)
    fresh = copies.checkout_fresh(str(src.path), sha, tmp_path / "fresh")

    for checkout in (tree, fresh):
        assert not os.path.lexists(checkout / "app/gitops-default.tfplan")
        assert not os.path.lexists(checkout / "app/.terraform.tfstate.lock.info")
        assert not os.path.lexists(checkout / "app/escape")
        assert (checkout / "app/common.tf").read_text() == "# common\n"
    assert (outside / "canary.db").read_text() == "the runner's store\n"


def test_a_config_file_linked_outside_is_a_config_error_not_its_content(
    world: PullRequestWorld, outside: Path
) -> None:
    secret = outside / "secrets.yaml"
    secret.write_text("version: 1\nprojects:\n  - dir: TOP-SECRET-VALUE\n")
    world.origin.checkout("main")
    (world.origin.path / "gitops-runner.yaml").unlink()
    _commit_symlinks_on_main(world, {"gitops-runner.yaml": secret})

    number = world.open_pr("any", {"infra/db/extra.tf": "# one\n"})

    body = world.last_comment(number)
    assert "gitops-runner.yaml" in body and "outside the repository" in body
    assert "TOP-SECRET-VALUE" not in "\n".join(world.comments(number))
    tree = world.services.working_copies.repo_dir(world.clone_url) / WORKTREES_DIR / "pr-1"
    with pytest.raises(ConfigError, match="outside the repository"):
        load_repo_config(tree)


# ---- row 14: limits --------------------------------------------------------------------


def _huge_output(megabytes: int = 20) -> str:
    line = '  + resource "terraform_data" "x" { input = "' + "y" * 60 + '" }\n'
    return line * (megabytes * 1024 * 1024 // len(line))


def test_twenty_megabytes_of_output_become_at_most_n_comments(world: PullRequestWorld) -> None:
    limits = OutputLimits(max_comments=5, public_url="https://runner.example.com")
    target = PlanTarget(ProjectConfig(name="db", dir="infra/db"))
    outcome = CommandOutcome(("terraform", "plan"), 1, _huge_output(), "boom", 1.0)
    # The same function the planner turns every Terraform outcome into a result with.
    result = _ResultBase(target, "c" * 40, "/logs/db.log", limits).failed(outcome, Masker())
    main = world.main_sha()
    number = world.github.open_pull(
        FULL_NAME, head_sha=main, head_ref="big", base_sha=main, user="alice"
    )
    feedback = PullRequestFeedback(
        forge=world.services.forge_for("github"),
        store=world.services.store,
        repo=world.pr_event("opened", number).repo,
        number=number,
        masker=Masker(),
        limits=limits,
    )

    feedback.plan_comment(render_plan_comment([result], limits=limits), "c" * 40)

    assert len(result.output.encode()) <= limits.max_output_bytes
    assert "output truncated" in result.output
    assert "https://runner.example.com/api/runs/" in result.output
    posted = world.comments(number)
    assert len(posted) == 5
    assert posted[-1].startswith("**Output truncated:**")
    assert "https://runner.example.com/api/runs?repo=" in posted[-1]


def test_output_is_cut_at_a_line_boundary_and_says_how_much_is_left_out() -> None:
    text = "".join(f"line {n}\n" for n in range(10_000))

    capped = cap_output(text, 4096, "the log")

    head, note = capped.split("\n[gitops-runner]")
    assert text.startswith(head + "\n")
    assert len(capped.encode()) <= 4096
    assert f"of {len(text):,} bytes" in note and note.endswith("the log")
    assert cap_output(capped, 4096, "the log") == capped
    assert cap_output("short\n", 4096, "the log") == "short\n"


def test_apply_comments_are_capped_with_a_link_to_the_runs_log() -> None:
    applied = ApplyResult(
        "db", "infra/db", "default", ApplyStatus.APPLIED, output=_huge_output(2), run_id=42
    )
    limits = OutputLimits(max_output_bytes=100_000, public_url="https://runner.example.com/")

    body = render_apply_comment([applied], limits=limits)

    assert len(body) < 110_000
    assert "https://runner.example.com/api/runs/42/log" in body


def test_comments_beyond_the_limit_are_summarised() -> None:
    assert cap_comments(["a", "b"], 2, "x") == ["a", "b"]
    capped = cap_comments([f"part {n}" for n in range(300)], 10, "the logs")
    assert capped[:9] == [f"part {n}" for n in range(9)]
    assert "291 more parts" in capped[9] and capped[9].endswith("the logs")


# ---- row 13: the log route needs the API token ----------------------------------------


def _client(tmp_path: Path, store: Store, **values: Any) -> FlaskClient:
    settings = Settings(data_dir=tmp_path / "data", github_webhook_secret=WEBHOOK_SECRET, **values)
    # The queues' own write: the job and its delivery, in one transaction.
    services = WebServices(
        store=store, submit=lambda event, delivery=None: enqueue_event(store, event, delivery)
    )
    return create_app(settings, services).test_client()


def _run_with_log(store: Store, data_dir: Path) -> int:
    run_id = store.runs.start(
        repo="github.com/acme/infra", project="db", dir="infra/db", workspace="default",
        command="plan", trigger="autoplan",
    )  # fmt: skip
    log = data_dir / "logs" / f"{run_id}.log"
    log.parent.mkdir(parents=True)
    log.write_text("Plan: 1 to add (the whole output)\n")
    store.runs.finish(run_id, RunStatus.SUCCESS, log_path=str(log))
    return run_id


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[Store]:
    opened = Store.open(sqlite_url)
    yield opened
    opened.close()


def test_run_logs_and_the_dashboard_are_refused_while_no_sign_in_is_configured(
    tmp_path: Path, sqlite_store: Store
) -> None:
    run_id = _run_with_log(sqlite_store, tmp_path / "data")
    client = _client(tmp_path, sqlite_store)

    response = client.get(f"/api/runs/{run_id}/log")

    assert response.status_code == 401
    assert "the whole output" not in response.get_data(as_text=True)
    assert client.get("/").status_code == 401
    assert client.get("/healthz").status_code == 200


def test_with_an_api_token_every_api_route_needs_it(tmp_path: Path, sqlite_store: Store) -> None:
    run_id = _run_with_log(sqlite_store, tmp_path / "data")
    client = _client(tmp_path, sqlite_store, api_token=API_TOKEN)
    good = {"Authorization": f"Bearer {API_TOKEN}"}
    wrong = {"Authorization": "Bearer not-the-token"}

    for path in (f"/api/runs/{run_id}/log", "/api/runs", "/api/locks", "/api/jobs", "/api/drift"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=wrong).status_code == 401, path
    assert client.post("/api/drift").status_code == 401
    log = client.get(f"/api/runs/{run_id}/log", headers=good)
    assert log.status_code == 200 and "the whole output" in log.get_data(as_text=True)
    assert client.get("/api/runs", headers=good).status_code == 200
    assert client.get("/", headers=good).status_code == 200
    assert client.get("/healthz").status_code == 200


# ---- row 15: exact token hosts, JSON for RQ, pruned deliveries ----------------------


def _token_for(settings: Settings) -> Callable[[str], str | None]:
    """The token the runner would send git for a clone URL, if any."""
    credentials_for = _clone_credentials(settings)
    return lambda url: auth.token if (auth := credentials_for(url)) else None


def test_the_github_token_goes_to_github_hosts_only() -> None:
    token_for = _token_for(load_settings(github_token=TOKEN))

    assert token_for("https://evilgithub.com/x/y.git") is None
    assert token_for("https://github.com.evil.net/x/y.git") is None
    assert token_for("http://github.com/x/y.git") is None  # never in clear text
    assert token_for("https://github.com/acme/infra.git") == TOKEN
    assert token_for("https://GitHub.com/acme/infra.git") == TOKEN


@pytest.mark.parametrize(
    ("api_url", "clone_host"),
    [
        ("https://ghe.example.com/api/v3", "ghe.example.com"),
        ("https://api.acme.ghe.com", "acme.ghe.com"),
    ],
)
def test_the_github_token_goes_to_the_enterprise_clone_host(api_url: str, clone_host: str) -> None:
    token_for = _token_for(load_settings(github_token=TOKEN, github_api_url=api_url))

    assert token_for(f"https://{clone_host}/acme/infra.git") == TOKEN
    assert token_for(f"https://evil{clone_host}/acme/infra.git") is None
    assert token_for(f"https://{clone_host}.evil.net/acme/infra.git") is None


def test_the_gitlab_token_goes_to_the_configured_gitlab_host_as_oauth2() -> None:
    settings = load_settings(
        github_token=TOKEN, gitlab_url="https://git.example.com/gitlab", gitlab_token="glpat-x"
    )
    credentials_for = _clone_credentials(settings)

    auth = credentials_for("https://git.example.com/group/sub/infra.git")
    assert auth is not None and (auth.username, auth.token) == ("oauth2", "glpat-x")
    assert credentials_for("https://gitlab.com/group/infra.git") is None
    assert credentials_for("https://evilgit.example.com/group/infra.git") is None
    github = credentials_for("https://github.com/acme/infra.git")
    assert github is not None and github.token == TOKEN


def test_rq_messages_in_redis_are_json_not_pickle(
    store: Store,
    redis_url: str,  # noqa: F811
) -> None:
    queue = RQQueue(store, redis_url, queue_name=f"gitops-test-json-{os.getpid()}")
    try:
        job_id = queue.submit(comment(1, "ok"))
        rq_ids = queue.rq_queue.get_job_ids()
        assert len(rq_ids) == 1
        raw = queue.rq_queue.connection.hget(f"rq:job:{rq_ids[0]}", "data")
        data = json.loads(zlib.decompress(raw))
        assert data[0] == "runner.jobs.rq_queue.run_stored_job"
        assert data[2] == [job_id]
    finally:
        queue.rq_queue.delete(delete_jobs=True)
        queue.stop()


def _received(store: Store, delivery_id: str, age: timedelta) -> None:
    row = {"delivery_id": delivery_id, "forge": "github", "event": "pull_request"}
    with store.write() as session:
        session.execute(insert(Delivery), {**row, "received_at": utcnow() - age})


def test_old_deliveries_are_pruned_and_recent_ones_still_deduplicate(store: Store) -> None:
    _received(store, "old", timedelta(days=30))
    _received(store, "recent", timedelta(days=2))
    pruner = DeliveryPruner(store.deliveries, timedelta(days=14))

    thread = pruner.prune_if_due()
    assert thread is not None
    thread.join(10)

    assert pruner.prune_if_due() is None  # at most once per interval
    assert store.deliveries.record_delivery("old", "github", "pull_request")  # forgotten
    assert not store.deliveries.record_delivery("recent", "github", "pull_request")


def test_webhooks_prune_old_deliveries_in_the_background(
    tmp_path: Path, sqlite_store: Store
) -> None:
    _received(sqlite_store, "ancient", timedelta(days=40))
    client = _client(tmp_path, sqlite_store, delivery_retention_days=7)
    repo = Repo(FULL_NAME, clone_url="https://github.com/acme/infra.git")
    pull = Pull(number=3, head_sha="a" * 40, head_ref="feature", base_sha="b" * 40)
    payload = pull_request_event("opened", repo, pull, sender="alice")
    body, headers = build_delivery("pull_request", payload, WEBHOOK_SECRET, "d-new")

    assert client.post("/events", data=body, headers=headers).status_code == 202

    for thread in threading.enumerate():
        if thread.name == "delivery-prune":
            thread.join(10)
    assert sqlite_store.deliveries.record_delivery("ancient", "github", "pull_request")
    assert not sqlite_store.deliveries.record_delivery("d-new", "github", "pull_request")
