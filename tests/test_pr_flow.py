"""The pull-request flow, told as the stories of the people using it.

Real git (a bare origin as `file://` clone URL), the fake GitHub over real HTTP
through PyGithub, real Terraform (embedded or on PATH) planning `terraform_data`.
The handler runs the events synchronously, as a worker would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pr_world import APP_CHANGE, FULL_NAME, PullRequestWorld, make_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[PullRequestWorld]:
    with make_world(tmp_path) as built:
        yield built


def test_a_pr_touching_no_project_says_so_once(world):
    number = world.open_pr("docs", {"docs/runbook.md": "Updated.\n"})
    world.push_to_pr(number, {"docs/runbook.md": "Updated again.\n"})

    no_project_comments = [c for c in world.comments(number) if "No " in c or "no " in c]
    assert len(world.comments(number)) == 1, world.comments(number)
    assert no_project_comments
    head = world.head_sha(number)
    assert world.statuses(head)["gitops/plan"] == "success"


def test_an_invalid_command_gets_a_helpful_reply(world):
    number = world.open_pr("feature", APP_CHANGE)
    world.comment(number, "gitops plan -- -chdir=/etc")

    reply = world.last_comment(number)
    assert "-chdir" in reply and "-target" in reply


def test_invalid_repo_config_is_answered_with_file_and_line(world):
    number = world.open_pr(
        "bad-config",
        {"gitops-runner.yaml": "version: 1\nprojects:\n  - dir: ../../etc\n"},
    )

    reply = world.last_comment(number)
    assert "gitops-runner.yaml" in reply and ":3" in reply
    head = world.head_sha(number)
    assert world.statuses(head)["gitops/plan"] == "failure"


def test_apply_of_a_stale_plan_is_refused(world):
    number = world.open_pr("feature", APP_CHANGE)
    # A new commit lands on the branch without the runner having planned it yet.
    head = world.push_branch("feature", {"infra/app/extra.tf": "# nothing\n"})
    world.github.push(FULL_NAME, number, head)

    world.comment(number, "gitops apply")
    reply = world.last_comment(number)
    assert "stale" in reply or "no plan" in reply.lower()


def test_unlock_by_comment_releases_the_locks(world):
    number = world.open_pr("feature", APP_CHANGE)
    world.comment(number, "gitops unlock")

    assert world.services.store.locks.list() == []
    assert "Released 1 lock" in world.last_comment(number)


def test_the_runners_own_comments_never_run_anything(world):
    number = world.open_pr("feature", APP_CHANGE)
    before = len(world.comments(number))
    world.comment(number, "gitops plan", user=world.github.login)

    assert len(world.comments(number)) == before + 1  # only the bot's own comment


def test_a_new_push_marks_the_older_plan_comment_outdated(world):
    number = world.open_pr("feature", APP_CHANGE)
    world.push_to_pr(number, {"infra/app/extra.tf": "# more\n"})

    comments = world.comments(number)
    assert comments[0].startswith("**Outdated:**")
    assert not comments[-1].startswith("**Outdated:**")


def test_a_job_that_crashes_is_reported_on_the_pr_and_keeps_the_locks(world):
    number = world.open_pr("feature", APP_CHANGE)
    world.github.fail_next("GET", rf"/repos/{FULL_NAME}/pulls/{number}", status=500, times=20)

    with pytest.raises(Exception, match=r"500|pull request"):
        world.comment(number, "gitops plan")

    assert "could not finish" in world.last_comment(number)
    assert world.services.store.locks.list()  # the PR still holds what it held


def test_an_applied_plan_is_spent_and_each_project_gets_an_apply_status(world):
    number = world.open_pr("feature", APP_CHANGE)
    world.comment(number, "gitops apply")
    head = world.head_sha(number)

    assert world.statuses(head)["gitops/apply: infra/app"] == "success"
    world.comment(number, "gitops apply")
    assert "no plan to apply" in world.last_comment(number)
