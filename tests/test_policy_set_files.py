"""A policy set is checked as its files are now: an edited, added or removed `.rego`
file counts from the next check on (whatever the engine keeps between checks).

Real Rego (regopy) on real files.
"""

from __future__ import annotations

from pathlib import Path

from runner.policies.engine import PolicyEngine
from runner.policies.sets import PolicySet

DENY_ONE = 'package main\ndeny[msg] {\n  input.x == 1\n  msg := "x is one"\n}\n'
DENY_TWO = 'package main\ndeny[msg] {\n  input.x == 2\n  msg := "x is two, not allowed"\n}\n'
WARN_ANY = 'package extra\nwarn[msg] {\n  input.x\n  msg := "x is set"\n}\n'


def _set(tmp_path: Path, files: dict[str, str]) -> PolicySet:
    directory = tmp_path / "guard"
    directory.mkdir(exist_ok=True)
    for name, source in files.items():
        (directory / name).write_text(source)
    return PolicySet("guard", directory)


def _findings(engine: PolicyEngine, policy_set: PolicySet, x: int) -> tuple[tuple[str, ...], ...]:
    result = engine.check_set(policy_set, {"x": x})
    return (result.failures, result.warnings, result.errors)


def test_an_edited_policy_is_checked_as_edited(tmp_path: Path) -> None:
    policy_set = _set(tmp_path, {"deny.rego": DENY_ONE})
    engine = PolicyEngine([policy_set])
    assert _findings(engine, policy_set, 1) == (("x is one",), (), ())

    (policy_set.path / "deny.rego").write_text(DENY_TWO)

    assert _findings(engine, policy_set, 1) == ((), (), ())
    assert _findings(engine, policy_set, 2) == (("x is two, not allowed",), (), ())


def test_an_added_or_removed_file_changes_the_set(tmp_path: Path) -> None:
    policy_set = _set(tmp_path, {"deny.rego": DENY_ONE})
    engine = PolicyEngine([policy_set])
    assert _findings(engine, policy_set, 1) == (("x is one",), (), ())

    (policy_set.path / "nested").mkdir()
    (policy_set.path / "nested" / "warn.rego").write_text(WARN_ANY)
    assert _findings(engine, policy_set, 1) == (("x is one",), ("x is set",), ())

    (policy_set.path / "deny.rego").unlink()
    assert _findings(engine, policy_set, 1) == ((), ("x is set",), ())

    (policy_set.path / "nested" / "warn.rego").unlink()
    (errors,) = engine.check_set(policy_set, {"x": 1}).errors
    assert "no .rego files" in errors
