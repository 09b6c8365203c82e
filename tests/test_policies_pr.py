"""Policies on a pull request, end to end: the plan comment shows them, `gitops/policy`
statuses report them, a failing project is not applied until an owner approves, and a
new push starts over. Real Rego (regopy), real Terraform, the fake GitHub over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.store.runs import RunStatus
from tests.support.pr_world import APP_CHANGE, FULL_NAME, PullRequestWorld, make_world

# Anything that changes infra/app fails; bob owns the set.
NO_APP_CHANGES = """package main

deny[msg] {
  rc := input.resource_changes[_]
  startswith(rc.address, "terraform_data.app")
  rc.change.actions[_] != "no-op"
  msg := sprintf("%s may not change without the platform team", [rc.address])
}
"""


@pytest.fixture
def world(tmp_path: Path) -> Iterator[PullRequestWorld]:
    rules = tmp_path / "policies" / "platform"
    rules.mkdir(parents=True)
    (rules / "app.rego").write_text(NO_APP_CHANGES)
    policy_set = {"name": "platform", "path": str(rules), "owners": ["bob"]}
    with make_world(tmp_path / "world", policy_sets=(policy_set,)) as built:
        yield built


def applied(world: PullRequestWorld, number: int) -> bool:
    runs = world.services.store.runs.list_runs(pr_number=number)
    return any(run.command == "apply" and run.status is RunStatus.SUCCESS for run in runs)


def test_a_failing_policy_is_shown_reported_and_blocks_the_apply(world: PullRequestWorld):
    number = world.open_pr("feature", APP_CHANGE)
    head = world.github.pull(FULL_NAME, number).head_sha

    comment = world.last_comment(number)
    assert "Policies: failed" in comment
    assert "may not change without the platform team" in comment
    assert world.statuses(head)["gitops/policy"] == "failure"
    assert world.statuses(head)["gitops/policy: infra/app"] == "failure"

    world.comment(number, "gitops apply -p infra/app", user="alice")
    assert "policies failed" in world.last_comment(number)
    assert not applied(world, number)


def test_an_owner_approval_lets_it_apply_and_a_non_owner_does_not(world: PullRequestWorld):
    number = world.open_pr("feature", APP_CHANGE)

    world.comment(number, "gitops approve_policies -p infra/app", user="alice")
    assert "owns no failing policy set" in world.last_comment(number)
    world.comment(number, "gitops apply -p infra/app", user="alice")
    assert not applied(world, number)

    world.comment(number, "gitops approve_policies -p infra/app", user="bob")
    assert "approved `platform` (1 of 1 needed)" in world.last_comment(number)
    world.comment(number, "gitops apply -p infra/app", user="alice")
    assert applied(world, number)


def test_a_new_push_needs_a_new_approval(world: PullRequestWorld):
    number = world.open_pr("feature", APP_CHANGE)
    world.comment(number, "gitops approve_policies", user="bob")

    world.push_to_pr(number, {"infra/app/extra.tf": 'output "y" {\n  value = 2\n}\n'})
    world.comment(number, "gitops apply -p infra/app", user="alice")

    assert "policies failed" in world.last_comment(number)
    assert not applied(world, number)
