"""Who may make the runner act, told as attacks that must fail (issue 7, rows 1 and 4).

A stranger's fork, a read-only user's flags, a stale or self-given approval: each test
plays the attack through the real PR flow against the fake GitHub over HTTP, with real
git and real Terraform, and checks that nothing ran, nothing was locked or replaced,
and the PR was told why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.commands.planning import PlanRequest, PullRequestPlanner
from runner.store.runs import RunStatus
from tests.support.github_payloads import issue_comment_event, post_delivery, pull_request_event
from tests.support.pr_world import (
    APP_CHANGE,
    DB_CHANGE,
    FULL_NAME,
    WEBHOOK_SECRET,
    PullRequestWorld,
    ServedRunner,
    make_world,
)

STRANGER = "mallory"  # no access to the repository
READER = "eve"  # read permission (make_world)


def _world(tmp_path: Path, **settings: object) -> Iterator[PullRequestWorld]:
    with make_world(tmp_path, **settings) as built:
        yield built


@pytest.fixture
def world(tmp_path: Path) -> Iterator[PullRequestWorld]:
    yield from _world(tmp_path)


@pytest.fixture
def forks_allowed(tmp_path: Path) -> Iterator[PullRequestWorld]:
    yield from _world(tmp_path, allow_fork_prs=True)


@pytest.fixture
def plan_requests(monkeypatch: pytest.MonkeyPatch) -> list[PlanRequest]:
    """Every PlanRequest the flow hands the planner, which still runs for real."""
    seen: list[PlanRequest] = []
    real_run = PullRequestPlanner.run

    def spy(self: PullRequestPlanner, request: PlanRequest, cancel: object) -> object:
        seen.append(request)
        return real_run(self, request, cancel)  # type: ignore[arg-type]

    monkeypatch.setattr(PullRequestPlanner, "run", spy)
    return seen


def runs(world: PullRequestWorld, number: int, command: str | None = None) -> list:
    found = world.services.store.runs.list_runs(pr_number=number)
    return [run for run in found if command is None or run.command == command]


def open_db_pr(world: PullRequestWorld, author: str = "alice") -> int:
    """A PR changing infra/db; the sample config on main lets `gitops apply` apply it
    after approval (`apply: both`, `apply_requirements: [approved]`)."""
    return world.open_pr("db", DB_CHANGE, author=author)


def saved_plans(world: PullRequestWorld, number: int) -> list:
    key = world.pr_event("opened", number).repo.key  # the host is the fake's, not github.com
    return world.services.store.runs.latest_plans(key, number)


def refused_for_approval(reply: str) -> bool:
    return "approved" in reply and "approving review at its current head" in reply


def checked_out(world: PullRequestWorld, number: int) -> bool:
    return any(world.settings.repos_dir.rglob(f"worktrees/pr-{number}"))


def applied(world: PullRequestWorld, number: int) -> bool:
    return any(run.status is RunStatus.SUCCESS for run in runs(world, number, "apply"))


# ---- forks -------------------------------------------------------------------------------


@pytest.mark.parametrize("commenter", [STRANGER, READER])
def test_a_plan_comment_on_a_fork_pr_runs_nothing_when_forks_are_disallowed(world, commenter):
    number = world.open_fork_pr("fork", APP_CHANGE, author=STRANGER)

    world.comment(number, "gitops plan", user=commenter)

    assert runs(world, number) == []  # no Terraform, no run record
    assert world.services.store.locks.list() == []
    assert not checked_out(world, number)
    assert "fork" in world.last_comment(number)


def test_a_strangers_fork_pr_over_http_gets_a_refusal_and_nothing_else(world):
    head = world.push_branch("fork", APP_CHANGE)
    number = world.github.open_pull(
        FULL_NAME,
        head_sha=head,
        head_ref="fork",
        base_sha=world.main_sha(),
        user=STRANGER,
        fork=True,
    )
    runner = ServedRunner(world.settings)
    try:
        opened = deliver(runner, "pull_request", opened_payload(world, number))
        commented = deliver(runner, "issue_comment", comment_payload(world, number, STRANGER))
        runner.wait_idle()
    finally:
        runner.stop()

    assert opened.json()["status"] == "ignored"
    assert commented.status_code == 202  # queued: only the forge can tell it is a fork
    assert runs(world, number) == []
    assert world.services.store.locks.list() == []
    assert "fork" in world.last_comment(number)


def deliver(runner: ServedRunner, event: str, payload: dict):
    return post_delivery(runner.url, event, payload, WEBHOOK_SECRET)


def opened_payload(world: PullRequestWorld, number: int) -> dict:
    pull = world.github.pull(FULL_NAME, number)
    repo = world.github.repo(FULL_NAME)
    return pull_request_event("opened", repo, pull, pull.user, hosts=world.github.hosts)


def comment_payload(world: PullRequestWorld, number: int, user: str) -> dict:
    body = "gitops plan"
    comment_id = world.github.add_comment(FULL_NAME, number, body, user)
    repo = world.github.repo(FULL_NAME)
    return issue_comment_event(
        "created", repo, number, body, user, comment_id, hosts=world.github.hosts
    )


def test_with_forks_allowed_the_same_comment_plans(forks_allowed):
    world = forks_allowed
    number = world.open_fork_pr("fork", APP_CHANGE, author=STRANGER)
    autoplans = len(runs(world, number, "plan"))

    world.comment(number, "gitops plan", user=READER)

    assert len(runs(world, number, "plan")) == autoplans + 1
    assert "`infra/app`" in world.last_comment(number)


@pytest.mark.parametrize("command", ["gitops apply", "gitops unlock"])
def test_apply_and_unlock_on_a_fork_pr_are_refused_even_for_a_writer(world, command):
    number = world.open_fork_pr("fork", APP_CHANGE, author=STRANGER)

    world.comment(number, command, user="alice")

    assert "fork" in world.last_comment(number)
    assert runs(world, number) == []


def test_a_fork_whose_repository_was_deleted_is_still_a_fork(world):
    number = world.open_fork_pr("fork", APP_CHANGE, author=STRANGER)
    world.github.delete_head_repo(FULL_NAME, number)

    world.comment(number, "gitops plan", user="alice")

    assert runs(world, number) == []
    assert "fork" in world.last_comment(number)


def test_help_is_answered_on_a_fork_pr(world):
    number = world.open_fork_pr("fork", APP_CHANGE, author=STRANGER)

    world.comment(number, "gitops help", user=STRANGER)

    assert "gitops plan" in world.last_comment(number)


# ---- permissions per command ------------------------------------------------------------


@pytest.mark.parametrize("flags", ["-destroy", "-var=app_name=evil", "-target=terraform_data.app"])
def test_a_readers_plan_with_flags_is_refused_and_the_saved_plan_stays(world, flags):
    number = world.open_pr("feature", APP_CHANGE)
    saved = saved_plans(world, number)
    assert saved

    world.comment(number, f"gitops plan -- {flags}", user=READER)

    reply = world.last_comment(number)
    assert f"@{READER}" in reply and "write permission" in reply
    assert saved_plans(world, number) == saved
    assert len(runs(world, number, "plan")) == len(saved)


def test_a_readers_bare_plan_is_shown_but_marked_untrusted(world, plan_requests):
    number = world.open_pr("feature", APP_CHANGE)
    comments_before = len(world.comments(number))

    world.comment(number, "gitops plan -p infra/app", user=READER)

    assert len(world.comments(number)) > comments_before
    assert "`infra/app`" in world.last_comment(number)
    by_comment = [r for r in plan_requests if r.command is not None]
    assert [(r.author, r.trusted) for r in by_comment] == [(READER, False)]


def test_a_writers_plan_and_the_autoplan_stay_trusted(world, plan_requests):
    number = world.open_pr("feature", APP_CHANGE)
    world.comment(number, "gitops plan -- -target=terraform_data.app", user="bob")

    assert [r.trusted for r in plan_requests] == [True, True]
    assert "`infra/app`" in world.last_comment(number)


def test_a_user_without_access_gets_nothing_but_help(world):
    number = world.open_pr("feature", APP_CHANGE)
    plans_before = runs(world, number)

    for command in ("gitops plan", "gitops apply", "gitops unlock"):
        world.comment(number, command, user=STRANGER)
        reply = world.last_comment(number)
        assert f"@{STRANGER}" in reply and "no access" in reply, command

    assert runs(world, number) == plans_before
    assert world.services.store.locks.list()  # alice's PR still holds its lock
    world.comment(number, "gitops help", user=STRANGER)
    assert "gitops plan" in world.last_comment(number)


def test_unlock_by_a_reader_is_refused_and_the_locks_stay(world):
    number = world.open_pr("feature", APP_CHANGE)
    locks = world.services.store.locks.list()

    world.comment(number, "gitops unlock", user=READER)

    assert "write permission" in world.last_comment(number)
    assert world.services.store.locks.list() == locks


def test_apply_by_a_reader_is_refused(world):
    number = world.open_pr("feature", APP_CHANGE)

    world.comment(number, "gitops apply", user=READER)

    assert f"@{READER}" in world.last_comment(number)
    assert "write permission" in world.last_comment(number)
    assert not applied(world, number)


# ---- approvals ----------------------------------------------------------------------------


def test_an_approval_by_a_reader_does_not_count(world):
    number = open_db_pr(world)
    world.approve(number, reviewer=READER)

    world.comment(number, "gitops apply")

    assert refused_for_approval(world.last_comment(number))
    assert not applied(world, number)


def test_an_approval_at_an_older_commit_is_void_after_a_push(world):
    number = open_db_pr(world)
    world.approve(number, reviewer="bob")
    world.push_to_pr(number, {"infra/db/more.tf": 'output "y" {\n  value = 2\n}\n'})

    world.comment(number, "gitops apply")

    assert refused_for_approval(world.last_comment(number))
    assert not applied(world, number)


def test_the_authors_own_approval_does_not_count(world):
    number = open_db_pr(world, author="alice")
    world.approve(number, reviewer="alice")

    world.comment(number, "gitops apply", user="bob")

    assert refused_for_approval(world.last_comment(number))
    assert not applied(world, number)


def test_a_writers_approval_at_the_head_lets_the_apply_through(world):
    number = open_db_pr(world)
    old_head = world.github.pull(FULL_NAME, number).head_sha
    world.approve(number, reviewer="bob", at=old_head)
    world.push_to_pr(number, {"infra/db/more.tf": 'output "y" {\n  value = 2\n}\n'})
    world.approve(number, reviewer="bob")  # again, at the new head

    world.comment(number, "gitops apply")

    assert applied(world, number)
