"""GitLab end to end: the merge request stories, told as the people on GitLab live them.

GitLab-shaped hooks (`Merge Request Hook`, `Note Hook`) into the runner, python-gitlab
against the fake GitLab over real HTTP, real git and real Terraform. The flow, the
locks and the apply path are the ones GitHub uses; only the forge differs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.forge.gitlab import GitLabForge
from runner.store.runs import RunStatus
from tests.support import drift_world
from tests.support.fake_gitlab import FakeGitLab
from tests.support.gitlab_payloads import MERGE_REQUEST_HOOK, post_gitlab_delivery
from tests.support.mr_world import (
    GITLAB_SECRET,
    PROJECT_PATH,
    MergeRequestWorld,
    make_mr_world,
)
from tests.support.pr_world import APP_CHANGE, DB_CHANGE, ServedRunner


@pytest.fixture
def world(tmp_path: Path) -> Iterator[MergeRequestWorld]:
    built = make_mr_world(tmp_path)
    try:
        yield built
    finally:
        built.gitlab.stop()
        built.services.store.close()


@pytest.fixture
def runner(world: MergeRequestWorld) -> Iterator[ServedRunner]:
    served = ServedRunner(world.settings)
    try:
        yield served
    finally:
        served.stop()


def refused_for_approval(reply: str) -> bool:
    return "approved" in reply and "approving review at its current head" in reply


def applies(world: MergeRequestWorld, iid: int) -> list[RunStatus]:
    runs = world.services.store.runs.list_runs(pr_number=iid)
    return [run.status for run in runs if run.command == "apply"]


# ---- plans ------------------------------------------------------------------------------


def test_an_opened_merge_request_gets_its_plan_note_and_statuses(world):
    iid = world.open_pr("feature", APP_CHANGE)

    note = world.last_comment(iid)
    assert "`infra/app`" in note and "2 to add" in note
    assert "infra/db" not in note
    statuses = world.statuses(world.head_sha(iid))
    assert statuses["gitops/plan"] == "success"
    assert statuses["gitops/plan: infra/app"] == "success"


def test_gitops_plan_by_note_plans_the_named_project_and_awards_eyes(world):
    iid = world.open_pr("feature", APP_CHANGE)

    note_id = world.comment(iid, "gitops plan -p infra/db")

    assert "`infra/db`" in world.last_comment(iid)
    assert world.gitlab.emoji(PROJECT_PATH, note_id) == ["eyes"]


def test_a_push_plans_the_new_head(world):
    iid = world.open_pr("feature", APP_CHANGE)

    head = world.push_to_pr(iid, DB_CHANGE)

    assert "`infra/db`" in world.last_comment(iid)
    assert world.statuses(head)["gitops/plan"] == "success"


def test_a_second_merge_request_on_a_locked_project_waits_for_the_first(world):
    first = world.open_pr("first", APP_CHANGE)
    app_tf = world.origin.path.joinpath("infra/app/main.tf").read_text()
    second = world.open_pr("second", {"infra/app/main.tf": app_tf + "\n"})

    blocked = world.last_comment(second)
    assert f"#{first}" in blocked and "locked" in blocked.lower()

    world.merge(first)
    assert world.services.store.locks.list(world.repo_key) == []
    world.comment(second, "gitops plan")
    assert "locked" not in world.last_comment(second).lower()


# ---- who may apply ----------------------------------------------------------------------


def test_apply_by_a_reporter_is_refused(world):
    iid = world.open_pr("feature", APP_CHANGE)

    world.comment(iid, "gitops apply", user="eve")

    assert "@eve" in world.last_comment(iid)
    assert "write permission" in world.last_comment(iid)
    assert applies(world, iid) == []


def test_a_fork_merge_request_is_not_planned_and_apply_is_refused_even_for_a_developer(world):
    iid = world.open_fork_pr("fork", APP_CHANGE)
    assert world.comments(iid) == []  # not autoplanned

    world.comment(iid, "gitops apply", user="alice")

    assert "fork" in world.last_comment(iid)
    assert world.services.store.runs.list_runs(pr_number=iid) == []


def test_a_developers_approval_at_the_head_lets_the_apply_through(world):
    iid = world.open_pr("db", DB_CHANGE)
    world.comment(iid, "gitops apply")
    assert refused_for_approval(world.last_comment(iid))  # infra/db requires approval

    world.approve(iid, reviewer="bob")
    world.comment(iid, "gitops apply")

    assert applies(world, iid) == [RunStatus.SUCCESS]
    assert world.statuses(world.head_sha(iid))["gitops/apply"] == "success"


@pytest.mark.parametrize("reviewer", ["eve", "alice"], ids=["a reporter", "the author"])
def test_an_approval_that_does_not_count(world, reviewer):
    iid = world.open_pr("db", DB_CHANGE, author="alice")
    world.approve(iid, reviewer=reviewer)

    world.comment(iid, "gitops apply", user="bob")

    assert refused_for_approval(world.last_comment(iid))
    assert applies(world, iid) == []


def test_an_approval_before_a_push_is_void_even_when_gitlab_keeps_it(world):
    world.gitlab._state(PROJECT_PATH).reset_approvals_on_push = False
    iid = world.open_pr("db", DB_CHANGE)
    world.approve(iid, reviewer="bob")
    world.push_to_pr(iid, {"infra/db/more.tf": 'output "y" {\n  value = 2\n}\n'})

    world.comment(iid, "gitops apply")

    assert refused_for_approval(world.last_comment(iid))
    assert applies(world, iid) == []


# ---- merge --------------------------------------------------------------------------------


def test_merging_applies_the_reviewed_plan_and_releases_the_locks(world):
    iid = world.open_pr("feature", APP_CHANGE)

    world.merge(iid)

    assert applies(world, iid) == [RunStatus.SUCCESS]
    assert world.services.store.locks.list() == []
    assert "applied" in world.last_comment(iid).lower()


# ---- over HTTP ----------------------------------------------------------------------------


def test_an_opened_merge_request_over_http_is_planned(world, runner):
    iid = open_without_hook(world, "feature", APP_CHANGE)

    reply = post_gitlab_delivery(
        runner.url, MERGE_REQUEST_HOOK, world.mr_payload("open", iid), GITLAB_SECRET
    )

    assert reply.status_code == 202
    runner.wait_idle()
    assert "`infra/app`" in world.last_comment(iid)


def test_a_bad_token_gets_401_and_a_redelivery_runs_nothing(world, runner):
    iid = open_without_hook(world, "feature", APP_CHANGE)
    payload = world.mr_payload("open", iid)

    for token in ("wrong", None):
        assert (
            post_gitlab_delivery(runner.url, MERGE_REQUEST_HOOK, payload, token).status_code == 401
        )
    first = post_gitlab_delivery(
        runner.url, MERGE_REQUEST_HOOK, payload, GITLAB_SECRET, idempotency_key="k-1"
    )
    again = post_gitlab_delivery(
        runner.url, MERGE_REQUEST_HOOK, payload, GITLAB_SECRET, idempotency_key="k-1"
    )

    assert (first.status_code, again.json()["status"]) == (202, "duplicate")
    runner.wait_idle()
    assert len(world.services.store.jobs.list()) == 1


@pytest.mark.parametrize("event", ["System Hook", "Push Hook", "Pipeline Hook"])
def test_hooks_the_runner_does_not_use_are_answered_2xx(world, runner, event):
    reply = post_gitlab_delivery(runner.url, event, {"object_kind": "push"}, GITLAB_SECRET)

    assert reply.status_code == 200 and reply.json()["status"] == "ignored"


def open_without_hook(world: MergeRequestWorld, branch: str, files: dict[str, str]) -> int:
    head = world.push_branch(branch, files)
    iid = world.gitlab.open_mr(
        PROJECT_PATH, sha=head, source_branch=branch, start_sha=world.main_sha()
    )
    world._branches[iid] = branch
    return iid


# ---- drift ----------------------------------------------------------------------------------


def test_drift_opens_a_gitlab_issue_and_closes_it_when_fixed(tmp_path, monkeypatch):
    world = drift_world.make_world(tmp_path, monkeypatch, {"alpha": "one"})
    with FakeGitLab(token="glpat-x", login="gitops-bot") as gitlab:
        gitlab.add_project("acme/infra", clone_url=world.repo.path.as_uri())
        forge = GitLabForge(gitlab.url, "glpat-x")
        service = world.service(forge_for=lambda repo: forge)
        repo = world.drift_repo(full_name="acme/infra", forge="gitlab")

        world.file("alpha").write_text("edited")
        service.scan(repo)
        (issue,) = gitlab.issues("acme/infra")
        assert issue.title == "Drift detected: acme/infra alpha/default"
        assert issue.state == "opened" and "content" in issue.description

        world.apply_all(["alpha"])  # fixed by hand
        assert service.scan(repo).all_in_sync
        (closed,) = gitlab.issues("acme/infra")
        assert closed.state == "closed" and "Resolved" in closed.notes[-1]
