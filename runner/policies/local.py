"""`gitops-runner policy test` and `policy check`: policy sets checked on an author's machine."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from runner.config.model import ProjectConfig
from runner.policies.engine import PolicyEngine
from runner.policies.input import RunContext
from runner.policies.plans import PlanDocument, PlanDocuments
from runner.policies.sets import PolicySet
from runner.policies.unittests import run_tests
from runner.results.model import PlanResult, PlanStatus
from runner.results.policy import PolicyCheck, PolicyKind, SetResult

Echo = Callable[[str], None]


def run_set_tests(directory: Path, echo: Echo) -> bool:
    """Every test of the set (`tests/*.json`, `*_test.rego`); True when all pass."""
    outcomes = run_tests(directory)
    for outcome in outcomes:
        mark = "PASS" if outcome.passed else "FAIL"
        echo(
            f"{mark} {outcome.source}: {outcome.name}"
            + (f" ({outcome.error})" * bool(outcome.error))
        )
    failed = sum(not outcome.passed for outcome in outcomes)
    echo(f"{len(outcomes) - failed}/{len(outcomes)} passed")
    return bool(outcomes) and not failed


def check_plan_file(
    directory: Path, plan_file: Path, project: str, workspace: str, kind: str, echo: Echo
) -> bool:
    """The set against one JSON plan, as the server would; True when it does not fail."""
    engine = PolicyEngine([PolicySet(directory.name or "policies", directory)])
    document = PlanDocument(json.loads(plan_file.read_text(encoding="utf-8")))
    context = RunContext(kind=PolicyKind(kind), repository="local", trigger="cli")
    check = engine.check(document, context, ProjectConfig(name=project, workspace=workspace))
    for result in check.sets:
        for label, messages in (
            ("ERROR", result.errors),
            ("FAIL", result.failures),
            ("WARN", result.warnings),
        ):
            for message in messages:
                echo(f"{label} {result.name}: {message}")
    echo("passed" if check.passed else "failed")
    return check.passed


def check_planned(
    engine: PolicyEngine,
    documents: PlanDocuments,
    planned: Sequence[tuple[ProjectConfig, PlanResult]],
    context: RunContext,
) -> dict[str, PolicyCheck]:
    """Each project's kept JSON plan against its sets, as the server checks a PR's plans.

    Only plans with changes are checked (the server checks nothing else: an unchanged
    plan applies nothing). The local config stands in for the default branch's: on an
    author's machine the tree being planned is the one that is trusted. A plan whose
    JSON document was not kept fails closed, like the apply path's gate.
    """
    checks: dict[str, PolicyCheck] = {}
    for project, result in planned:
        if result.status is not PlanStatus.CHANGES:
            continue
        document = documents.load(result.plan_checksum or "")
        if document is None:
            checks[project.name] = PolicyCheck(project.name, (_not_kept(project.name),))
            continue
        checks[project.name] = engine.check(
            document, replace(context, commit=result.commit), project
        )
    return checks


def _not_kept(project: str) -> SetResult:
    reason = f"no JSON plan was kept for `{project}`: plan again"
    return SetResult(name="policies", errors=(reason,), approvals_needed=0)
