"""The Planner on real Terraform: several projects and workspaces of one checkout."""

from __future__ import annotations

import json
from pathlib import Path

from runner.config.model import ProjectConfig
from runner.engine.planner import PlanTarget, build_planner
from runner.results.model import PlanStatus
from runner.settings import load_settings
from runner.terraform import workspace_env

MAIN_TF = """resource "terraform_data" "env" {
  input = terraform.workspace
}
"""


def test_workspaces_of_one_directory_keep_separate_states(tmp_path: Path):
    checkout = tmp_path / "checkout"
    (checkout / "app").mkdir(parents=True)
    (checkout / "app/main.tf").write_text(MAIN_TF)
    (checkout / "db").mkdir()
    (checkout / "db/main.tf").write_text(MAIN_TF)
    settings = load_settings(data_dir=tmp_path / "data", parallelism=4)
    planner = build_planner(settings)
    targets = [
        PlanTarget(ProjectConfig(name="app", dir="app")),
        PlanTarget(ProjectConfig(name="app-staging", dir="app", workspace="staging")),
        PlanTarget(ProjectConfig(name="app-prod", dir="app", workspace="prod")),
        PlanTarget(ProjectConfig(name="db", dir="db")),
    ]

    first = planner.plan_all(checkout, targets, "c1")
    assert [r.project for r in first] == ["app", "app-staging", "app-prod", "db"]
    assert all(r.status is PlanStatus.CHANGES for r in first)
    terraform = planner._terraform_for(None)
    for target, result in zip(targets, first, strict=True):
        outcome = terraform.apply(
            checkout / target.project.dir,
            Path(result.plan_path),
            env=workspace_env(target.project.workspace),
        )
        assert outcome.ok, outcome.stderr

    default_state = json.loads((checkout / "app/terraform.tfstate").read_text())
    staging_state = checkout / "app/terraform.tfstate.d/staging/terraform.tfstate"
    assert (
        default_state["resources"][0]["instances"][0]["attributes"]["input"]["value"] == "default"
    )
    assert '"staging"' in staging_state.read_text()
    again = planner.plan_all(checkout, targets, "c1")
    assert [r.status for r in again] == [PlanStatus.NO_CHANGES] * 4
