"""The policy check as a `Gate` of the one apply path, for every trigger.

Policies are evaluated again here, on the JSON plan kept for the very plan file
being applied (found by its checksum, which the apply path verifies; on a worker
that did not plan it, derived from the plan file verified by that checksum:
`engine/plan_json.py`), with the trigger's kind: a policy may deny a destroy during
drift auto-correction and only warn in a pull request. A failing set needs enough of
its owners' approvals of that plan (`gitops approve_policies`, stored per plan: a new
plan starts over); an unattended apply (drift) needs a clean result, warnings included.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from runner.config.model import ProjectConfig
from runner.engine.apply import ApplyItem, ApplyRequest
from runner.engine.plan_json import PlanJsonSource, PlanJsonUnavailable
from runner.policies.engine import PolicyEngine
from runner.policies.input import RunContext
from runner.policies.plans import PlanDocuments
from runner.results.policy import PolicyCheck

# The default branch's view of a project (None: a state it does not know yet).
TrustedProject = Callable[[ProjectConfig], ProjectConfig | None]
# plan id → {policy set → users who approved overriding it}.
ApprovalsOf = Callable[[int], Mapping[str, Collection[str]]]


@dataclass(frozen=True)
class PolicyGate:
    """Refuses a project whose plan fails its policy sets and is not approved."""

    engine: PolicyEngine
    documents: PlanDocuments
    context: RunContext
    trusted: TrustedProject = lambda project: project  # reconcile, drift: the branch is trusted
    approvals: ApprovalsOf | None = None  # None: nobody can approve (no PR)
    require_clean: bool = False
    # Approvals given to the reviewed plan count for a merge plan verified equal to it.
    reviewed_plan_ids: Mapping[str, int] = field(default_factory=dict)
    # Plans made on another worker: their JSON derived from the verified plan file.
    plan_json: PlanJsonSource | None = None

    def refusal(self, item: ApplyItem, request: ApplyRequest) -> str | None:
        if not self.engine.enabled or not item.summary.has_changes:
            return None
        try:
            check = self.check(item, request.tree)
        except PlanJsonUnavailable as error:
            return f"policies: {error}"
        if check is None:
            return "policies: no JSON plan was kept for this plan; plan again"
        if self.require_clean and not check.clean:
            return "policies: " + _describe(check) + " (an unattended apply needs a clean result)"
        plan_id = self.reviewed_plan_ids.get(item.project.name, item.plan_id)
        approvals = self.approvals(plan_id) if self.approvals and plan_id is not None else {}
        unapproved = check.unapproved(dict(approvals))
        if not unapproved:
            return None
        names = ", ".join(f"`{result.name}`" for result in unapproved)
        return (
            f"policies failed ({names}): {_describe(check)}; owners may `gitops approve_policies`"
        )

    def check(self, item: ApplyItem, tree: Path | None = None) -> PolicyCheck | None:
        """The item's plan against its sets; None when its JSON plan was not kept.

        With the checkout (`tree`) and a `plan_json` source, a plan made on another
        worker is judged on JSON derived here (raises `PlanJsonUnavailable` when none
        can be).
        """
        if self.plan_json is not None and tree is not None:
            document = self.plan_json.document(item, tree)
        else:
            document = self.documents.load(item.plan_checksum)
        if document is None:
            return None
        project = item.project
        context = _for_project(self.context, item)
        return self.engine.check(document, context, project, self.trusted(project))


def _for_project(context: RunContext, item: ApplyItem) -> RunContext:
    return replace(context, commit=item.commit)


def _describe(check: PolicyCheck) -> str:
    messages = [
        message
        for result in check.sets
        for message in (*result.errors, *result.failures, *result.warnings)
    ]
    return "; ".join(messages[:5]) + (f" (+{len(messages) - 5} more)" if len(messages) > 5 else "")
