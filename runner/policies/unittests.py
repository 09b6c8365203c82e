"""Tests of a policy set, run through regopy: `gitops-runner policy test` and pytest.

Two kinds, both under the set's directory:

- `tests/*.json`: cases `{"name", "input", "deny": [...], "warn": [...]}`; each input is
  evaluated as a plan would be, and the messages listed must be exactly the ones
  produced (a key left out is not compared). This is how the shipped `policies/` are
  tested: rego-cpp 1.5 fails a built-in called on a `with input as` mock, so OPA-style
  tests of such policies cannot run in-process yet.
- `*_test.rego`: `opa test` rules (`test_*` must be true), for policies whose tests
  avoid that limitation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.policies.engine import evaluate
from runner.policies.rego import Evaluation, Module, RegoFailure, load_modules, within

_TEST_RULE = re.compile(r"^(test_\w+)\b", re.MULTILINE)


@dataclass(frozen=True)
class TestOutcome:
    """One test: passed, or why not."""

    __test__ = False  # not a pytest class, despite its name

    source: str  # the file holding the test
    name: str
    passed: bool
    error: str = ""


def run_tests(directory: Path, timeout_s: float = 10.0) -> list[TestOutcome]:
    """Every JSON case and `test_*` rule under `directory`."""
    modules = load_modules(directory, tests=True)
    policies = tuple(m for m in modules if not m.name.endswith("_test.rego"))
    cases = sorted((directory / "tests").glob("*.json"))
    outcomes = [o for path in cases for o in _run_cases(path, policies, timeout_s)]
    return outcomes + _run_rules(modules, timeout_s)


def _run_cases(path: Path, modules: tuple[Module, ...], timeout_s: float) -> list[TestOutcome]:
    cases: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return [_run_case(path.name, case, modules, timeout_s) for case in cases]


def _run_case(
    source: str, case: dict[str, Any], modules: tuple[Module, ...], timeout_s: float
) -> TestOutcome:
    name = str(case.get("name", "unnamed case"))
    try:
        found = within(timeout_s, lambda: evaluate(modules, case.get("input", {})), name)
    except RegoFailure as error:
        return TestOutcome(source, name, False, str(error))
    got = {"deny": sorted(found.failures), "warn": sorted(found.warnings)}
    wrong = [
        f"{key}: expected {sorted(case[key])}, got {got[key]}"
        for key in ("deny", "warn")
        if key in case and sorted(case[key]) != got[key]
    ]
    return TestOutcome(source, name, not wrong, "; ".join(wrong))


def _run_rules(modules: tuple[Module, ...], timeout_s: float) -> list[TestOutcome]:
    tests = [
        (module, name)
        for module in modules
        if module.name.endswith("_test.rego")
        for name in dict.fromkeys(_TEST_RULE.findall(module.source))
    ]
    if not tests:
        return []
    try:
        evaluation = within(timeout_s, lambda: Evaluation(modules, {}), "loading the policies")
    except RegoFailure as error:
        return [TestOutcome(module.name, name, False, str(error)) for module, name in tests]
    return [_run_rule(evaluation, module, name, timeout_s) for module, name in tests]


def _run_rule(evaluation: Evaluation, module: Module, name: str, timeout_s: float) -> TestOutcome:
    query = f"data.{module.package}.{name}"
    try:
        value = within(timeout_s, lambda: evaluation.query(query), name)
    except RegoFailure as error:
        return TestOutcome(module.name, name, False, str(error))
    return TestOutcome(module.name, name, value is True, "" if value is True else "not true")
