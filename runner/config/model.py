"""The repository configuration as the rest of the runner sees it.

These models are the validated form of `gitops-runner.yaml` (or a translated
`atlantis.yaml`, or the result of autodiscovery). The loader turns YAML into
them; everything downstream reads only these objects, never raw dicts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ApplyRequirement = Literal["approved", "mergeable", "undiverged"]
ApplyMode = Literal["on_merge", "comment", "both"]

DEFAULT_WHEN_MODIFIED = ("*.tf", "*.tf.json", "*.tfvars", "*.tfvars.json", ".terraform.lock.hcl")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AutoplanConfig(_Frozen):
    """When a change to the project directory triggers a plan."""

    enabled: bool = True
    # Globs relative to the project dir; a leading "!" excludes. Later patterns win.
    when_modified: tuple[str, ...] = DEFAULT_WHEN_MODIFIED


class DriftConfig(_Frozen):
    """Scheduled drift detection for one project (used by the drift scheduler)."""

    enabled: bool = False
    schedule: str | None = None  # cron expression; None = the server default
    auto_correct: bool = False
    allow_destroy: bool = False
    window: str | None = None  # e.g. "Mon-Fri 09:00-17:00", when corrections may run


class ProjectConfig(_Frozen):
    """One Terraform root module in one workspace."""

    name: str
    dir: str = "."  # POSIX path relative to the repository root, never escaping it
    workspace: str = "default"
    autoplan: AutoplanConfig = Field(default_factory=AutoplanConfig)
    apply_requirements: tuple[ApplyRequirement, ...] = ()
    apply: ApplyMode = "on_merge"
    depends_on: tuple[str, ...] = ()
    execution_order_group: int = 0
    terraform_version: str | None = None
    drift: DriftConfig = Field(default_factory=DriftConfig)

    @property
    def key(self) -> tuple[str, str]:
        """What a lock and a Terraform process are serialised on (with the repo)."""
        return (self.dir, self.workspace)


class ConfigWarning(_Frozen):
    """Something the loader understood but cannot honour (e.g. an atlantis.yaml key)."""

    file: str
    line: int | None
    message: str


class RepoConfig(_Frozen):
    """All projects of one repository at one commit, and where they came from."""

    source: Literal["gitops-runner.yaml", "atlantis.yaml", "autodiscovery"]
    projects: tuple[ProjectConfig, ...]
    warnings: tuple[ConfigWarning, ...] = ()
    # Directories whose *.tf are only used as local modules (filled by autodiscovery
    # and by the module graph; informative).
    parallel_plan: bool = True
    parallel_apply: bool = False

    def project(self, name: str) -> ProjectConfig | None:
        return next((p for p in self.projects if p.name == name), None)
