"""Policies on a pull request: checked after each plan, shown, approved by their owners.

After a plan, every project with changes is checked against its policy sets (which
sets, and the project's policy data, as the default branch says) with the PR as
context (`kind: pr`); the plan comment gets a policy line per project and the commit
gets `gitops/policy` statuses. A failing set's owners override it with
`gitops approve_policies`: the approval is stored for that plan, so a new plan
starts over. The apply path asks the same `PolicyGate` (`engine/policy_gate.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from runner.commands.apply_gates import TrustedRules, rules_at
from runner.commands.feedback import PullRequestFeedback
from runner.config.model import ProjectConfig
from runner.engine.apply import ApplyItem, LockHolder
from runner.engine.policy_gate import PolicyGate
from runner.engine.services import Services
from runner.events.commands import Command
from runner.events.model import RepoRef
from runner.forge.base import POLICY_CONTEXT, CommitState, PullRequestInfo, project_context
from runner.policies.input import RunContext
from runner.results.model import PlanResult, PlanStatus, PlanSummary
from runner.results.policy import PolicyCheck, PolicyKind
from runner.results.render import render_message
from runner.store.runs import PlanRecord, Trigger


class PullRequestPolicies:
    """The policy side of one pull request: gate, checks after a plan, approvals."""

    def __init__(self, services: Services, feedback: PullRequestFeedback) -> None:
        self._services = services
        self._feedback = feedback

    @property
    def enabled(self) -> bool:
        return self._services.policies.enabled

    def gate(
        self,
        repo: RepoRef,
        pr: PullRequestInfo,
        author: str,
        rules: TrustedRules,
        trigger: Trigger,
        reviewed_plan_ids: Mapping[str, int] | None = None,
    ) -> PolicyGate:
        """Policies with the PR as context; sets and policy data as the default branch says."""
        services = self._services
        context = RunContext(
            kind=PolicyKind.MERGE if trigger is Trigger.MERGE else PolicyKind.PR,
            repository=repo.key,
            trigger=str(trigger),
            author=author,
            pr_number=pr.number,
            pr_author=pr.author,
            branch=pr.base_ref,
            default_branch=repo.default_branch,
        )
        return PolicyGate(
            services.policies,
            services.plan_documents,
            context,
            trusted=lambda project: rules.projects.get(project.key),
            approvals=services.store.policy_approvals.approvals,
            reviewed_plan_ids=dict(reviewed_plan_ids or {}),
            plan_json=services.plan_json,  # a plan made by another worker
        )

    # ---- after a plan ---------------------------------------------------------------------

    def check_plans(
        self,
        repo: RepoRef,
        pr: PullRequestInfo,
        author: str,
        results: Sequence[PlanResult],
        projects: Mapping[str, ProjectConfig],
    ) -> dict[str, PolicyCheck]:
        """Each planned project with changes against its sets; statuses set on the head."""
        planned = [r for r in results if r.status is PlanStatus.CHANGES and r.plan_checksum]
        if not self.enabled or not planned:
            return {}
        gate = self.gate(repo, pr, author, self._rules(repo), Trigger.COMMENT)
        checks: dict[str, PolicyCheck] = {}
        for result in planned:
            item = _item(projects[result.project], result, pr.number)
            check = gate.check(item)
            if check is not None and check.sets:
                checks[result.project] = check
        self._statuses(pr.head_sha, checks)
        return checks

    def _statuses(self, head: str, checks: Mapping[str, PolicyCheck]) -> None:
        if not checks:
            return
        failed = [name for name, check in checks.items() if not check.passed]
        for name, check in checks.items():
            state = CommitState.SUCCESS if check.passed else CommitState.FAILURE
            what = "passed" if check.passed else "failed: owners may approve"
            self._feedback.status(head, project_context(POLICY_CONTEXT, name), state, what)
        state = CommitState.FAILURE if failed else CommitState.SUCCESS
        summary = f"{len(failed)} of {len(checks)} failed" if failed else "all passed"
        self._feedback.status(head, POLICY_CONTEXT, state, summary)

    # ---- gitops approve_policies ------------------------------------------------------------

    def approve(self, repo: RepoRef, pr: PullRequestInfo, author: str, command: Command) -> None:
        """Record `author`'s approval of every failing set they own, on the plans at the head."""
        if not self.enabled:
            self._reply("No policy sets are configured on this server: nothing to approve.")
            return
        plans = self._plans_at_head(repo, pr, command)
        if not plans:
            self._reply("There is no plan at the head to approve. Comment `gitops plan` first.")
            return
        rules = self._rules(repo)
        gate = self.gate(repo, pr, author, rules, Trigger.COMMENT)
        lines = [
            line
            for plan in plans
            for line in self._approve_plan(gate, plan, _project_of(plan, rules), author)
        ]
        if not lines:
            lines = [f"@{author} owns no failing policy set of these plans: nothing approved."]
        self._feedback.comment("\n".join(f"- {line}" for line in lines), kind="reply")

    def _approve_plan(
        self, gate: PolicyGate, plan: PlanRecord, project: ProjectConfig, author: str
    ) -> list[str]:
        item = ApplyItem(
            project, Path(plan.path), plan.checksum, plan.commit_sha, PlanSummary(), LockHolder()
        )
        check = gate.check(item)
        if check is None:
            return []
        store = self._services.store.policy_approvals
        lines: list[str] = []
        for result in check.failed_sets:
            if author.casefold() not in {owner.casefold() for owner in result.owners}:
                continue
            store.approve(plan.id, result.name, author)
            count = len(store.approvals(plan.id).get(result.name, ()))
            lines.append(
                f"`{plan.project}`: @{author} approved `{result.name}` "
                f"({count} of {result.approvals_needed} needed)"
            )
        return lines

    def _plans_at_head(
        self, repo: RepoRef, pr: PullRequestInfo, command: Command
    ) -> list[PlanRecord]:
        plans = self._services.store.runs.latest_plans(repo.key, pr.number)
        return [
            plan
            for plan in plans
            if plan.commit_sha == pr.head_sha
            and command.selects(plan.project, plan.dir, plan.workspace)
        ]

    def _rules(self, repo: RepoRef) -> TrustedRules:
        return rules_at(self._services, repo, repo.default_branch)

    def _reply(self, message: str) -> None:
        self._feedback.comment(render_message("error", message=message))


def _project_of(plan: PlanRecord, rules: TrustedRules) -> ProjectConfig:
    """The project a saved plan belongs to, as the default branch knows it (its sets and
    policy data decide; a state it does not know yet is bound to the server's sets)."""
    known = rules.projects.get((plan.dir, plan.workspace))
    return known or ProjectConfig(name=plan.project, dir=plan.dir, workspace=plan.workspace)


def _item(project: ProjectConfig, result: PlanResult, pr_number: int) -> ApplyItem:
    return ApplyItem(
        project=project,
        plan_path=Path(result.plan_path or ""),
        plan_checksum=result.plan_checksum or "",
        commit=result.commit or "",
        summary=result.summary,
        holder=LockHolder(pr_number=pr_number),
    )
