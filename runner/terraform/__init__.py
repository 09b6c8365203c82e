"""terraform: the one place the runner runs the Terraform CLI (see docs/terraform.md)."""

from runner.terraform.init_cache import InitCache
from runner.terraform.locate import (
    TerraformBinary,
    TerraformNotFoundError,
    embedded_terraform,
    locate_terraform,
)
from runner.terraform.process import run_process
from runner.terraform.result import CommandOutcome
from runner.terraform.terraform import (
    StepTimeouts,
    Terraform,
    TerraformError,
    plan_status,
    workspace_env,
)

__all__ = [
    "CommandOutcome",
    "InitCache",
    "StepTimeouts",
    "Terraform",
    "TerraformBinary",
    "TerraformError",
    "TerraformNotFoundError",
    "embedded_terraform",
    "locate_terraform",
    "plan_status",
    "run_process",
    "workspace_env",
]
