"""`gitops-runner policy test`: a policy set checked on an author's machine, line by line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from runner.config.model import ProjectConfig
from runner.policies.engine import PolicyEngine
from runner.policies.input import RunContext
from runner.policies.plans import PlanDocument
from runner.policies.sets import PolicySet
from runner.policies.unittests import run_tests
from runner.results.policy import PolicyKind

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
