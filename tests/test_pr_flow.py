"""The pull-request flow, told as the stories of the people using it.

Real git (a bare origin as `file://` clone URL), the fake GitHub over real HTTP
through PyGithub, real Terraform (embedded or on PATH) planning `terraform_data`.
The handler runs the events synchronously, as a worker would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.store.runs import RunStatus
from tests.support.pr_world import APP_CHANGE, FULL_NAME, PullRequestWorld, make_world

TAGS_CHANGE = {
    "modules/tags/main.tf": (
        'variable "name" {\n  type = string\n}\n\n'
        'resource "terraform_data" "tags" {\n  input = {\n    name = var.name\n'
        '    managed_by = "gitops-runner"\n    team = "platform"\n  }\n}\n\n'
        'output "tags" {\n  value = terraform_data.tags.output\n}\n'
    )
}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[PullRequestWorld]:
    built = make_world(tmp_path)
    try:
        yield built
    finally:
        built.github.stop()
        built.services.store.close()


def test_a_pr_changing_one_project_gets_its_plan_comment_and_statuses(world):
    number = world.open_pr("feature", APP_CHANGE)

    comment = world.last_comment(number)
    assert "infra/app" in comment
    assert "infra/db" not in comment and "infra/network" not in comment
    assert "2 to add" in comment
    head = world.github.pull(FULL_NAME, number).head_sha
    statuses = world.statuses(head)
    assert statuses["gitops/plan"] == "success"
    assert statuses["gitops/plan: infra/app"] == "success"


def test_a_module_change_plans_every_caller_with_its_reason(world):
    number = world.open_pr("tags", TAGS_CHANGE)

    comment = world.last_comment(number)
    for project in ("infra/app", "infra/db", "infra/network"):
        assert f"`{project}`" in comment
    assert "modules/tags" in comment  # the reason names the changed module


def test_a_pr_touching_no_project_says_so_once(world):
    number = world.open_pr("docs", {"docs/runbook.md": "Updated.\n"})
    world.push_to_pr(number, {"docs/runbook.md": "Updated again.\n"})

    no_project_comments = [c for c in world.comments(number) if "No " in c or "no " in c]
    assert len(world.comments(number)) == 1, world.comments(number)
    assert no_project_comments
    head = world.github.pull(FULL_NAME, number).head_sha
    assert world.statuses(head)["gitops/plan"] == "success"


def test_gitops_plan_by_comment_plans_the_named_project(world):
    number = world.open_pr("feature", APP_CHANGE)
    comment_id = world.comment(number, "gitops plan -p infra/db")

    assert "`infra/db`" in world.last_comment(number)
    reactions = world.github.reactions(FULL_NAME, comment_id=comment_id)
    assert [reaction.content for reaction in reactions] == ["eyes"]


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
    head = world.github.pull(FULL_NAME, number).head_sha
    assert world.statuses(head)["gitops/plan"] == "failure"


def test_a_second_pr_on_a_locked_project_is_told_who_holds_it_until_the_first_merges(world):
    first = world.open_pr("first", APP_CHANGE)
    second = world.open_pr(
        "second",
        {"infra/app/main.tf": world.origin.path.joinpath("infra/app/main.tf").read_text() + "\n"},
    )

    blocked = world.last_comment(second)
    assert f"#{first}" in blocked and "locked" in blocked.lower()

    world.approve(first)
    world.merge(first)
    assert world.services.store.locks.list("github.com/acme/infra") == []
    world.comment(second, "gitops plan")
    assert "locked" not in world.last_comment(second).lower()


def test_apply_is_refused_for_a_read_only_user_then_applied_for_a_writer(world):
    number = world.open_pr("feature", APP_CHANGE)

    world.comment(number, "gitops apply", user="eve")
    assert "write permission" in world.last_comment(number)

    world.comment(number, "gitops apply", user="alice")
    assert "applied" in world.last_comment(number).lower()
    runs = world.services.store.runs.list_runs(pr_number=number)
    assert any(r.command == "apply" and r.status is RunStatus.SUCCESS for r in runs)


def test_apply_of_a_stale_plan_is_refused(world):
    number = world.open_pr("feature", APP_CHANGE)
    # A new commit lands on the branch without the runner having planned it yet.
    head = world.push_branch("feature", {"infra/app/extra.tf": "# nothing\n"})
    world.github.push(FULL_NAME, number, head)

    world.comment(number, "gitops apply")
    reply = world.last_comment(number)
    assert "stale" in reply or "no plan" in reply.lower()


def test_apply_requires_approval_where_configured(world):
    number = world.open_pr("db", {"infra/db/extra.tf": 'output "x" {\n  value = 1\n}\n'})

    world.comment(number, "gitops apply")
    assert "approved" in world.last_comment(number)

    world.approve(number, reviewer="bob")
    world.comment(number, "gitops apply")
    assert (
        "approved" not in world.last_comment(number)
        or "applied" in world.last_comment(number).lower()
    )
    runs = world.services.store.runs.list_runs(pr_number=number)
    assert any(r.command == "apply" and r.status is RunStatus.SUCCESS for r in runs)


def test_merging_applies_the_reviewed_plan_and_releases_the_locks(world):
    number = world.open_pr("feature", APP_CHANGE)
    world.merge(number)

    runs = world.services.store.runs.list_runs(pr_number=number)
    applies = [r for r in runs if r.command == "apply"]
    assert [r.status for r in applies] == [RunStatus.SUCCESS]
    assert world.services.store.locks.list() == []
    assert "applied" in world.last_comment(number).lower()


def test_merge_is_not_applied_when_main_moved_and_the_plan_differs(world):
    number = world.open_pr("feature", APP_CHANGE)
    # Someone else changes the same project on main before the merge.
    world.commit_on_main(
        {"infra/app/more.tf": 'resource "terraform_data" "more" {\n  input = "x"\n}\n'}
    )
    world.merge(number)

    runs = world.services.store.runs.list_runs(pr_number=number)
    assert not [r for r in runs if r.command == "apply"]
    assert "Needs attention" in "\n".join(world.comments(number))
    assert world.services.store.locks.list()  # kept for a person to look at


def test_closing_without_merge_releases_locks_and_discards_plans(world):
    number = world.open_pr("feature", APP_CHANGE)
    assert world.services.store.locks.list()
    world.close(number)

    assert world.services.store.locks.list() == []
    assert world.services.store.runs.latest_plans("github.com/acme/infra", number) == []


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
    head = world.github.pull(FULL_NAME, number).head_sha

    assert world.statuses(head)["gitops/apply: infra/app"] == "success"
    world.comment(number, "gitops apply")
    assert "no plan to apply" in world.last_comment(number)
