"""A pull request touching too many projects (issue 7, row 14: limits).

Before, a change to a module every project uses planned every project: hundreds of
Terraform runs, locks on every state, a flood of comments. Now a server caps the
projects one PR plans (GITOPS_MAX_PROJECTS_PER_PR); beyond it the PR is told why and
how to go on, nothing is planned and no lock is taken. Naming one project still works.

Real git, the fake GitHub over HTTP, real Terraform, as in `test_pr_flow.py`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.store.runs import RunRecord
from tests.support.pr_world import FULL_NAME, PullRequestWorld, make_world

# The tags module is used by all three sample projects.
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
    with make_world(tmp_path, max_projects_per_pr=2) as built:
        yield built


def plan_runs(world: PullRequestWorld, number: int) -> list[RunRecord]:
    runs = world.services.store.runs.list_runs(pr_number=number)
    return [run for run in runs if run.command == "plan"]


def locked_dirs(world: PullRequestWorld) -> list[str]:
    return [lock.dir for lock in world.services.store.locks.list()]


def as_shown(comment: str) -> str:
    """The comment as GitHub shows it: Markdown escapes (`\\_`) removed."""
    return re.sub(r"\\(.)", r"\1", comment)


def head_of(world: PullRequestWorld, number: int) -> str:
    return world.github.pull(FULL_NAME, number).head_sha


def test_a_module_change_touching_more_projects_than_allowed_is_refused(
    world: PullRequestWorld,
) -> None:
    number = world.open_pr("tags", TAGS_CHANGE)

    refusal = as_shown(world.last_comment(number))
    assert "Not planned" in refusal and "3 projects" in refusal
    assert "GITOPS_MAX_PROJECTS_PER_PR" in refusal
    assert "gitops plan -p" in refusal
    assert world.statuses(head_of(world, number))["gitops/plan"] == "failure"
    assert plan_runs(world, number) == []
    assert locked_dirs(world) == []


def test_a_bare_plan_comment_is_refused_the_same_way(world: PullRequestWorld) -> None:
    number = world.open_pr("tags", TAGS_CHANGE)
    world.comment(number, "gitops plan")

    assert "GITOPS_MAX_PROJECTS_PER_PR" in as_shown(world.last_comment(number))
    assert plan_runs(world, number) == []
    assert locked_dirs(world) == []


def test_naming_one_project_still_plans_it(world: PullRequestWorld) -> None:
    number = world.open_pr("tags", TAGS_CHANGE)
    world.comment(number, "gitops plan -p infra/app")

    comment = world.last_comment(number)
    assert "`infra/app`" in comment
    assert "infra/db" not in comment and "infra/network" not in comment
    assert [run.project for run in plan_runs(world, number)] == ["infra/app"]
    assert locked_dirs(world) == ["infra/app"]
    statuses = world.statuses(head_of(world, number))
    assert statuses["gitops/plan: infra/app"] == "success"
