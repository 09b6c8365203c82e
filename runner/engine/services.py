"""What every consumer of the domain runs on: one `Services`, built by `runner/wiring.py`.

The PR flow, drift scans, reconcile and the CLI receive the same object graph (the
store, a forge per kind, working copies, the planner, the apply path, the per-state
mutex, the notifier), so each gets the same credentials and guards; none of them
reads settings or the environment to build its own collaborators.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from runner.engine.apply import ApplyExecutor
from runner.engine.plan_json import PlanJsonSource
from runner.engine.planner import Planner, kept_plan_documents
from runner.engine.progress import ProgressObserver
from runner.engine.project_mutex import ProjectMutex
from runner.forge.base import Forge
from runner.notify.base import Notifier, NullNotifier
from runner.policies.engine import PolicyEngine
from runner.policies.plans import PlanDocuments
from runner.results.masking import Masker
from runner.settings import Settings
from runner.store.plan_files import LocalPlanStore, PlanStore
from runner.store.store import Store
from runner.terraform import Terraform
from runner.workspace.working_copy import WorkingCopies


@dataclass(frozen=True)
class Services:
    """What the PR flow runs on; two forges, queues or databases look the same from here."""

    settings: Settings
    store: Store
    forge_for: Callable[[str], Forge]
    working_copies: WorkingCopies
    planner: Planner
    terraform_for: Callable[[str | None], Terraform]
    mutex: ProjectMutex
    # The one guarded path every apply takes (PR comment, merge, reconcile).
    executor: ApplyExecutor
    secret_values: tuple[str, ...] = field(default=())
    # Chat messages about applies (runner/notify/events.py); silent unless Slack is set up.
    notifier: Notifier = field(default_factory=NullNotifier)
    # The server's Rego policy sets (docs/policies.md); without sets, nothing is checked.
    policies: PolicyEngine = field(default_factory=lambda: PolicyEngine(()))
    # Who watches plans and applies as they happen: the CLI's progress display; None
    # on the server, whose runs are followed in comments, statuses and the dashboard.
    progress: ProgressObserver | None = None
    # Plan files and run logs beyond this machine (GITOPS_PLAN_STORE; store/plan_files.py).
    plan_store: PlanStore = field(default_factory=LocalPlanStore)

    @property
    def plan_documents(self) -> PlanDocuments:
        """The JSON plans the planner keeps for policy checks."""
        return kept_plan_documents(self.settings)

    @property
    def plan_json(self) -> PlanJsonSource:
        """JSON plans for the policy gate: kept here, or derived from a fetched plan file."""
        masker = Masker.from_secrets(self.secret_values)
        return PlanJsonSource(self.plan_documents, self.plan_store, self.terraform_for, masker)
