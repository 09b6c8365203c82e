"""The pull-request stories, told once and lived on both forges.

Each story runs on GitHub (pull requests, comments, reviews) and on GitLab (merge
requests, notes, approvals): the fake forge over real HTTP through PyGithub or
python-gitlab, real git, real Terraform planning `terraform_data`. The events are the
forge's own webhook payloads, handled synchronously as a worker would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner.store.runs import RunStatus
from tests.support.forge_world import ForgeWorld
from tests.support.mr_world import make_mr_world
from tests.support.pr_world import APP_CHANGE, DB_CHANGE, make_world

MakeWorld = Callable[..., ForgeWorld]
BUILDERS: dict[str, Callable[..., ForgeWorld]] = {"github": make_world, "gitlab": make_mr_world}

TAGS_CHANGE = {
    "modules/tags/main.tf": (
        'variable "name" {\n  type = string\n}\n\n'
        'resource "terraform_data" "tags" {\n  input = {\n    name = var.name\n'
        '    managed_by = "gitops-runner"\n    team = "platform"\n  }\n}\n\n'
        'output "tags" {\n  value = terraform_data.tags.output\n}\n'
    )
}
# The sample config (tests/support/git_repo.py) as a PR would rewrite it: infra/db's
# `apply_requirements: [approved]` deleted.
DB_REQUIREMENT_DELETED = """version: 1
projects:
  - dir: infra/network
    apply: both
  - dir: infra/app
    depends_on: [infra/network, infra/db]
    apply: both
  - dir: infra/db
    apply: both
"""


@pytest.fixture(params=sorted(BUILDERS))
def build(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeWorld]:
    """Builds the world on the forge of the parameter (at most one per test)."""
    built: list[ForgeWorld] = []

    def make(**settings: object) -> ForgeWorld:
        built.append(BUILDERS[request.param](tmp_path, **settings))
        return built[-1]

    try:
        yield make
    finally:
        for world in built:
            getattr(world, world.forge_name).stop()
            world.services.store.close()


@pytest.fixture
def world(build: MakeWorld) -> ForgeWorld:
    return build()


# ---- reading the outcome ------------------------------------------------------------------


def applies(world: ForgeWorld, number: int) -> list[RunStatus]:
    runs = world.services.store.runs.list_runs(pr_number=number)
    return [run.status for run in runs if run.command == "apply"]


def refused_for_approval(reply: str) -> bool:
    return "approved" in reply and "approving review at its current head" in reply


def rendered(markdown: str) -> str:
    """A comment as the forge shows it (Markdown escapes rendered)."""
    return markdown.replace("\\", "")


# ---- plans --------------------------------------------------------------------------------


def test_an_opened_pr_gets_its_plan_comment_and_statuses(world):
    number = world.open_pr("feature", APP_CHANGE)

    comment = world.last_comment(number)
    assert "`infra/app`" in comment and "2 to add" in comment
    assert "infra/db" not in comment and "infra/network" not in comment
    statuses = world.statuses(world.head_sha(number))
    assert statuses["gitops/plan"] == "success"
    assert statuses["gitops/plan: infra/app"] == "success"


def test_a_module_change_plans_every_caller_with_its_reason(world):
    number = world.open_pr("tags", TAGS_CHANGE)

    comment = world.last_comment(number)
    for project in ("infra/app", "infra/db", "infra/network"):
        assert f"`{project}`" in comment
    assert "modules/tags" in comment  # the reason names the changed module


def test_gitops_plan_by_comment_plans_the_named_project_and_acknowledges_it(world):
    number = world.open_pr("feature", APP_CHANGE)

    comment_id = world.comment(number, "gitops plan -p infra/db")

    assert "`infra/db`" in world.last_comment(number)
    assert world.reactions(comment_id) == ["eyes"]


def test_a_huge_plan_is_split_into_comments_under_the_forges_cap(build):
    world = build(max_output_bytes=4 * 1024 * 1024)  # keep the whole plan: only the cap splits
    count = max(700, world.comment_cap // 150)  # a resource is ~250 characters of plan
    big = {
        "infra/app/big.tf": (
            f'resource "terraform_data" "big" {{\n  count = {count}\n'
            '  input = "a-fairly-long-value-for-instance-${count.index}"\n}\n'
        )
    }
    number = world.open_pr("huge", big)

    comments = world.comments(number)
    assert len(comments) >= 2
    assert all(len(body) <= world.comment_cap for body in comments)
    text = "\n".join(comments)
    for index in (0, count // 2, count - 1):
        assert f"terraform_data.big[{index}]" in text


# ---- locks --------------------------------------------------------------------------------


def test_a_second_pr_on_a_locked_project_is_told_who_holds_it_until_the_first_merges(world):
    first = world.open_pr("first", APP_CHANGE)
    app_tf = world.origin.path.joinpath("infra/app/main.tf").read_text()
    second = world.open_pr("second", {"infra/app/main.tf": app_tf + "\n"})

    blocked = world.last_comment(second)
    assert f"#{first}" in blocked and "locked" in blocked.lower()

    world.approve(first)
    world.merge(first)
    assert world.services.store.locks.list(world.repo_key) == []
    world.comment(second, "gitops plan")
    assert "locked" not in world.last_comment(second).lower()


def test_closing_without_merge_releases_locks_and_discards_plans(world):
    number = world.open_pr("feature", APP_CHANGE)
    assert world.services.store.locks.list()

    world.close(number)

    assert world.services.store.locks.list() == []
    assert world.services.store.runs.latest_plans(world.repo_key, number) == []


# ---- who may apply ------------------------------------------------------------------------


def test_apply_is_refused_for_a_reader_then_applied_for_a_writer(world):
    number = world.open_pr("feature", APP_CHANGE)

    world.comment(number, "gitops apply", user="eve")  # GitHub read, GitLab Reporter
    assert "@eve" in world.last_comment(number)
    assert "write permission" in world.last_comment(number)
    assert applies(world, number) == []

    world.comment(number, "gitops apply", user="alice")
    assert "applied" in world.last_comment(number).lower()
    assert applies(world, number) == [RunStatus.SUCCESS]


def test_an_approval_at_the_head_lets_an_apply_that_needs_it_through(world):
    number = world.open_pr("db", DB_CHANGE)
    world.comment(number, "gitops apply")
    assert refused_for_approval(world.last_comment(number))  # infra/db requires approval

    world.approve(number, reviewer="bob")
    world.comment(number, "gitops apply")

    assert applies(world, number) == [RunStatus.SUCCESS]
    assert world.statuses(world.head_sha(number))["gitops/apply"] == "success"


def test_a_pr_deleting_its_approval_requirement_still_needs_approval(world):
    """The default branch's config decides who may apply, not the PR's own."""
    number = world.open_pr("no-review", {"gitops-runner.yaml": DB_REQUIREMENT_DELETED, **DB_CHANGE})

    world.comment(number, "gitops apply")

    reply = rendered(world.last_comment(number))
    assert "Not applied" in reply and "`approved`" in reply
    assert applies(world, number) == []

    world.approve(number, reviewer="bob")
    world.comment(number, "gitops apply")

    assert applies(world, number) == [RunStatus.SUCCESS]
    assert world.statuses(world.head_sha(number))["gitops/apply: infra/db"] == "success"


def test_a_fork_pr_is_not_planned_and_apply_is_refused_even_for_a_writer(world):
    number = world.open_fork_pr("fork", APP_CHANGE)
    assert world.comments(number) == []  # not autoplanned

    world.comment(number, "gitops apply", user="alice")

    assert "fork" in world.last_comment(number)
    assert world.services.store.runs.list_runs(pr_number=number) == []


# ---- merge --------------------------------------------------------------------------------


def test_merging_applies_the_reviewed_plan_and_releases_the_locks(world):
    number = world.open_pr("feature", APP_CHANGE)

    world.merge(number)

    assert applies(world, number) == [RunStatus.SUCCESS]
    assert world.services.store.locks.list() == []
    assert "applied" in world.last_comment(number).lower()


def test_merge_is_not_applied_when_main_moved_and_the_plan_differs(world):
    number = world.open_pr("feature", APP_CHANGE)
    # Someone else changes the same project on main before the merge.
    world.commit_on_main(
        {"infra/app/more.tf": 'resource "terraform_data" "more" {\n  input = "x"\n}\n'}
    )

    world.merge(number)

    assert applies(world, number) == []
    assert "Needs attention" in "\n".join(world.comments(number))
    assert world.services.store.locks.list()  # kept for a person to look at
