"""The JSON plan a policy judges, on whichever machine applies the plan.

The planner keeps the JSON plan on its own data dir (`policies/plans.py`). Another
worker applying that plan (`GITOPS_PLAN_STORE=s3://…`) has no copy, and must not take
one from anywhere it cannot verify. It derives its own from the plan file: fetched from
the plan store into this checkout and verified against the checksum recorded at plan
time (`store/plan_files.py`), the checkout initialised, then `terraform show -json`.
The flags the plan was made with come from the same file (`terraform/plan_flags.py`).
The derived document is kept like a planned one, so a second check does not redo it;
the apply path verifies the same checksum again before Terraform applies, so the
policies judged exactly what is applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runner.engine.apply import ApplyItem, TerraformFor
from runner.engine.planner import plan_file_path
from runner.policies.plans import PlanDocument, PlanDocuments
from runner.results.masking import Masker
from runner.store.plan_files import PlanFileMismatch, PlanNotStored, PlanStore, PlanStoreError
from runner.terraform import TerraformError
from runner.terraform.plan_flags import PlanFileUnreadable, flags_in_plan_file
from runner.terraform.planfile import plan_checksum

_NOT_KEPT = "no JSON plan was kept for this plan; plan again"


class PlanJsonUnavailable(Exception):
    """No JSON plan can be had for this plan here; the message says why (ends "plan again")."""


@dataclass(frozen=True)
class PlanJsonSource:
    """Kept JSON plans first; otherwise one derived from the verified plan file."""

    documents: PlanDocuments
    plan_store: PlanStore
    terraform_for: TerraformFor
    masker: Masker

    def document(self, item: ApplyItem, tree: Path) -> PlanDocument:
        """The JSON plan of `item`'s plan file; raises `PlanJsonUnavailable`."""
        kept = self.documents.load(item.plan_checksum)
        if kept is not None:
            return kept
        plan_path = self._verified_plan_file(item, tree)
        workdir = tree / item.project.dir
        terraform = self.terraform_for(item.project.terraform_version)
        init = terraform.init(workdir)
        if not init.ok:
            why = self.masker.mask(init.stderr_tail()) or f"exit code {init.exit_code}"
            raise PlanJsonUnavailable(f"terraform init to read the fetched plan failed: {why}")
        try:
            plan = terraform.show_json(workdir, plan_path)
            flags = flags_in_plan_file(plan_path, plan)
        except (TerraformError, PlanFileUnreadable) as error:
            why = self.masker.mask(str(error))
            raise PlanJsonUnavailable(
                f"the fetched plan cannot be read ({why}); plan again"
            ) from error
        # Init and show ran the checkout's providers beside the file: the document is
        # filed under the checksum only if those are still the bytes that were read.
        if plan_checksum(plan_path) != item.plan_checksum:
            raise PlanJsonUnavailable("the plan file changed while it was read; plan again")
        self.documents.save(item.plan_checksum, plan, flags)
        return PlanDocument(plan, flags)

    def _verified_plan_file(self, item: ApplyItem, tree: Path) -> Path:
        """The plan file fetched from the plan store and verified; planned elsewhere only.

        Planned here, its JSON plan was kept here: none left means the retention deleted
        it, and such a plan must be planned again (`GITOPS_PLAN_JSON_RETENTION_DAYS`).
        """
        if item.plan_path.is_file():
            raise PlanJsonUnavailable(_NOT_KEPT)
        destination = plan_file_path(tree, item.project)
        try:
            return self.plan_store.fetch_plan(item.plan_checksum, destination)
        except PlanFileMismatch as error:
            raise PlanJsonUnavailable(
                "the plan file in the plan store does not match the checksum recorded when "
                "it was planned (modified or corrupted); refused: plan again"
            ) from error
        except PlanNotStored as error:
            raise PlanJsonUnavailable(
                "no JSON plan was kept for this plan and its plan file is gone; plan again"
            ) from error
        except PlanStoreError as error:
            raise PlanJsonUnavailable(
                f"the plan store cannot be read ({error}); try again"
            ) from error
