"""Check one plan against the policy sets of its project: `PolicyEngine.check`.

Every package of a set is evaluated (conftest's `--all-namespaces`) with the input
document of `input.py`; `conftest.py` turns rules into messages. Each set runs under
the time limit; whatever cannot be evaluated fails the set, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runner.config.model import ProjectConfig
from runner.policies.conftest import Verdict, verdict
from runner.policies.input import RunContext, input_document
from runner.policies.plans import PlanDocument
from runner.policies.rego import Evaluation, Module, RegoFailure, load_modules, within
from runner.policies.sets import PolicySet, select_sets
from runner.results.policy import PolicyCheck, SetResult
from runner.settings import Settings


class PolicyEngine:
    """The server's policy sets and time limit; stateless between checks."""

    def __init__(self, sets: Sequence[PolicySet], timeout_s: float = 10.0) -> None:
        self.sets = tuple(sets)
        self._timeout_s = timeout_s

    @property
    def enabled(self) -> bool:
        return bool(self.sets)

    def check(
        self,
        document: PlanDocument,
        context: RunContext,
        project: ProjectConfig,
        trusted: ProjectConfig | None = None,
    ) -> PolicyCheck:
        """Every set `trusted` (the default branch's view of the project) binds it to.

        `project` is what was planned (its `policy_data` is the trusted one's when given).
        """
        bound = trusted or project
        selection = select_sets(self.sets, trusted)
        document_input = input_document(
            document, context, project.model_copy(update={"policy_data": bound.policy_data})
        )
        results = [self.check_set(policy_set, document_input) for policy_set in selection.sets]
        results += [_missing(name) for name in selection.missing]
        return PolicyCheck(project.name, tuple(results))

    def check_set(self, policy_set: PolicySet, document: Mapping[str, Any]) -> SetResult:
        """One set against one input; never raises for what the policies do."""
        try:
            modules = _modules(policy_set)
            found = within(
                self._timeout_s,
                lambda: evaluate(modules, document),
                f"policy set `{policy_set.name}`",
            )
        except (RegoFailure, OSError, UnicodeDecodeError) as error:
            return _result(policy_set, Verdict(), errors=(str(error),))
        return _result(policy_set, found)


def build_policy_engine(settings: Settings) -> PolicyEngine:
    """The server's policy sets (`GITOPS_POLICY_SETS`) with its time limit."""
    sets = [PolicySet.from_settings(spec) for spec in settings.policy_sets]
    return PolicyEngine(sets, settings.policy_timeout)


def evaluate(modules: tuple[Module, ...], document: Mapping[str, Any]) -> Verdict:
    """Every package's failures and warnings, together."""
    evaluation = Evaluation(modules, document)
    failures: list[str] = []
    warnings: list[str] = []
    for package in sorted({module.package for module in modules}):
        try:
            found = verdict(evaluation.query(f"data.{package}"))
        except RegoFailure as error:
            files = ", ".join(m.name for m in modules if m.package == package)
            raise RegoFailure(f"package `{package}` ({files}): {error}") from error
        failures += found.failures
        warnings += found.warnings
    return Verdict(tuple(failures), tuple(warnings))


def _modules(policy_set: PolicySet) -> tuple[Module, ...]:
    if not policy_set.path.is_dir():
        raise RegoFailure(f"policy set `{policy_set.name}`: no directory {policy_set.path}")
    modules = load_modules(policy_set.path)
    if not modules:
        raise RegoFailure(f"policy set `{policy_set.name}`: no .rego files in {policy_set.path}")
    return modules


def _result(policy_set: PolicySet, found: Verdict, errors: tuple[str, ...] = ()) -> SetResult:
    return SetResult(
        name=policy_set.name,
        failures=found.failures,
        warnings=found.warnings,
        errors=errors,
        owners=policy_set.owners,
        approvals_needed=policy_set.approvals_needed,
    )


def _missing(name: str) -> SetResult:
    """A set named by config that the server does not define: fails, no owner can approve."""
    reason = f"policy set `{name}` is named by the configuration but not defined by the server"
    return SetResult(name=name, errors=(reason,), approvals_needed=0)
