"""Policy as code: real Terraform plans checked by real Rego (regopy), in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.config.model import ProjectConfig
from runner.engine.apply import ApplyItem, ApplyRequest, LockHolder
from runner.engine.planner import PlanTarget, build_planner, plan_documents_dir
from runner.engine.policy_gate import PolicyGate
from runner.policies.engine import PolicyEngine
from runner.policies.input import RunContext
from runner.policies.plans import PlanDocuments
from runner.policies.sets import PolicySet
from runner.policies.unittests import run_tests
from runner.results.model import PlanResult
from runner.results.policy import PolicyKind
from runner.settings import load_settings
from runner.store.runs import Trigger

SHIPPED = Path(__file__).resolve().parents[1] / "policies"

ATLANTIS_STYLE = """package main

deny[msg] {
  rc := input.resource_changes[_]
  rc.change.actions[_] == "create"
  msg := sprintf("%s: creating is not allowed here", [rc.address])
}
"""

DENY_DESTROY_IN_DRIFT = """package gitops.drift
import rego.v1

destroying := [rc.address | some rc in input.resource_changes; "create" in rc.change.actions]

deny contains "no creates during drift correction" if {
  input.run.kind == "drift"
  count(destroying) > 0
}

warn contains "this plan creates objects" if {
  input.run.kind != "drift"
  count(destroying) > 0
}
"""


@pytest.mark.parametrize("outcome", run_tests(SHIPPED), ids=lambda o: o.name)
def test_the_shipped_policies_pass_their_own_tests(outcome):
    assert outcome.passed, outcome.error


def _policy_dir(tmp_path: Path, name: str, source: str) -> Path:
    directory = tmp_path / "sets" / name
    directory.mkdir(parents=True)
    (directory / "policy.rego").write_text(source)
    return directory


def _real_plan(tmp_path: Path) -> tuple[PlanResult, PlanDocuments]:
    checkout = tmp_path / "checkout"
    (checkout / "app").mkdir(parents=True)
    (checkout / "app/main.tf").write_text('resource "terraform_data" "x" {\n  input = "a"\n}\n')
    # The planner keeps JSON plans only when the server has policy sets.
    policy_set = {"name": "any", "path": str(tmp_path / "sets")}
    settings = load_settings(data_dir=tmp_path / "data", policy_sets=(policy_set,))
    result = build_planner(settings).plan(
        checkout, PlanTarget(ProjectConfig(name="app", dir="app"))
    )
    return result, PlanDocuments(plan_documents_dir(settings))


def _gate(directory: Path, documents: PlanDocuments, kind: PolicyKind, **kwargs) -> PolicyGate:
    engine = PolicyEngine([PolicySet("guard", directory, owners=("alice",))])
    context = RunContext(kind=kind, repository="github.com/acme/infra", trigger="test")
    return PolicyGate(engine, documents, context, **kwargs)


def _item(result: PlanResult, plan_id: int | None = 7) -> ApplyItem:
    return ApplyItem(
        project=ProjectConfig(name="app", dir="app"),
        plan_path=Path(result.plan_path or ""),
        plan_checksum=result.plan_checksum or "",
        commit="c1",
        summary=result.summary,
        holder=LockHolder(pr_number=1),
        plan_id=plan_id,
    )


def _request(item: ApplyItem) -> ApplyRequest:
    return ApplyRequest("github.com/acme/infra", Path(), (item,), Trigger.COMMENT, "bob")


def test_an_atlantis_conftest_policy_denies_a_real_plan_unchanged(tmp_path):
    result, documents = _real_plan(tmp_path)
    gate = _gate(_policy_dir(tmp_path, "main", ATLANTIS_STYLE), documents, PolicyKind.PR)

    check = gate.check(_item(result))

    assert check is not None and not check.passed
    assert check.sets[0].failures == ("terraform_data.x: creating is not allowed here",)


def test_the_same_policy_warns_in_a_pr_and_refuses_drift_correction(tmp_path):
    result, documents = _real_plan(tmp_path)
    directory = _policy_dir(tmp_path, "drift", DENY_DESTROY_IN_DRIFT)
    item = _item(result)

    in_pr = _gate(directory, documents, PolicyKind.PR)
    in_drift = _gate(directory, documents, PolicyKind.DRIFT, require_clean=True)

    assert in_pr.refusal(item, _request(item)) is None
    assert in_pr.check(item).sets[0].warnings == ("this plan creates objects",)
    assert "no creates during drift correction" in in_drift.refusal(item, _request(item))


def test_an_owner_approval_overrides_a_failure_and_a_non_owner_does_not(tmp_path):
    result, documents = _real_plan(tmp_path)
    directory = _policy_dir(tmp_path, "main", ATLANTIS_STYLE)
    item = _item(result)
    approvals: dict[int, dict[str, set[str]]] = {7: {"guard": {"mallory"}}}
    gate = _gate(
        directory, documents, PolicyKind.PR, approvals=lambda plan: approvals.get(plan, {})
    )

    assert "policies failed (`guard`)" in gate.refusal(item, _request(item))
    approvals[7]["guard"].add("alice")
    assert gate.refusal(item, _request(item)) is None
    new_plan = _item(result, plan_id=8)  # a new plan starts without approvals
    assert gate.refusal(new_plan, _request(new_plan)) is not None


def test_broken_rego_fails_closed_with_its_file_and_line(tmp_path):
    result, documents = _real_plan(tmp_path)
    broken = "package main\nimport rego.v1\n\ndeny contains msg if { input.x > ; }\n"
    gate = _gate(_policy_dir(tmp_path, "broken", broken), documents, PolicyKind.PR)

    check = gate.check(_item(result))

    assert check is not None and not check.passed
    assert check.sets[0].errors[0].startswith("policy.rego:4: ")


def test_a_runtime_error_and_a_missing_set_fail_closed(tmp_path):
    result, documents = _real_plan(tmp_path)
    runtime = (
        "package main\nimport rego.v1\n"
        'deny contains msg if { msg := concat(",", input.format_version) }\n'
    )
    gate = _gate(_policy_dir(tmp_path, "rt", runtime), documents, PolicyKind.PR)
    engine = PolicyEngine([])
    context = RunContext(kind=PolicyKind.PR, repository="r", trigger="t")
    project = ProjectConfig(name="app", dir="app", policy_sets=("nope",))

    assert "concat" in gate.check(_item(result)).sets[0].errors[0]
    missing = engine.check(documents.load(result.plan_checksum), context, project, project)
    assert not missing.passed and "not defined by the server" in missing.sets[0].errors[0]


def test_a_policy_running_past_its_time_limit_fails(tmp_path):
    result, documents = _real_plan(tmp_path)
    slow = (
        "package main\nimport rego.v1\n"
        # Slow but small: 9 million pairs from two 3,000-element ranges. (A 50-million
        # range is materialised by rego-cpp: gigabytes, still growing after the limit.)
        "deny contains i if {\n"
        "  some i in numbers.range(1, 3000)\n"
        "  some j in numbers.range(1, 3000)\n"
        "  i * j < 0\n"
        "}\n"
    )
    engine = PolicyEngine([PolicySet("slow", _policy_dir(tmp_path, "slow", slow))], timeout_s=0.2)
    context = RunContext(kind=PolicyKind.PR, repository="r", trigger="t")

    check = engine.check(documents.load(result.plan_checksum), context, ProjectConfig(name="a"))

    assert "ran longer than its time limit" in check.sets[0].errors[0]
