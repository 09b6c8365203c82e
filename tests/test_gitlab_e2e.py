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
    running_mr_world,
)
from tests.support.pr_world import APP_CHANGE, DB_CHANGE, ServedRunner


@pytest.fixture
def world(tmp_path: Path) -> Iterator[MergeRequestWorld]:
    yield from running_mr_world(tmp_path)


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


def test_a_push_plans_the_new_head(world):
    iid = world.open_pr("feature", APP_CHANGE)

    head = world.push_to_pr(iid, DB_CHANGE)

    assert "`infra/db`" in world.last_comment(iid)
    assert world.statuses(head)["gitops/plan"] == "success"


# ---- who may apply ----------------------------------------------------------------------


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


# ---- over HTTP ----------------------------------------------------------------------------


def test_an_opened_merge_request_over_http_is_planned(world, runner):
    iid = world.open_without_hook("feature", APP_CHANGE)

    reply = post_gitlab_delivery(
        runner.url, MERGE_REQUEST_HOOK, world.mr_payload("open", iid), GITLAB_SECRET
    )

    assert reply.status_code == 202
    runner.wait_idle()
    assert "`infra/app`" in world.last_comment(iid)


def test_a_bad_token_gets_401_and_a_redelivery_runs_nothing(world, runner):
    iid = world.open_without_hook("feature", APP_CHANGE)
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


@pytest.mark.parametrize("event", ["System Hook", "Tag Push Hook", "Pipeline Hook"])
def test_hooks_the_runner_does_not_use_are_answered_2xx(world, runner, event):
    reply = post_gitlab_delivery(runner.url, event, {"object_kind": "push"}, GITLAB_SECRET)

    assert reply.status_code == 200 and reply.json()["status"] == "ignored"


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
