"""The repository configuration as the rest of the runner sees it.

These models are the validated form of `gitops-runner.yaml` (or a translated
`atlantis.yaml`, or the result of autodiscovery). The loader turns YAML into
them; everything downstream reads only these objects, never raw dicts.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runner.config.workflows import Workflow
from runner.terraform.locate import check_terraform_version

ApplyRequirement = Literal["approved", "mergeable", "undiverged"]
ApplyMode = Literal["on_merge", "comment", "both"]

# Recursive like Atlantis' defaults: `*.tf*` covers .tf, .tf.json, .tfvars(.json), .tftpl,
# .tfbackend. Change detection keeps these defaults out of nested project directories.
DEFAULT_WHEN_MODIFIED = ("**/*.tf*", "**/terragrunt.hcl", "**/.terraform.lock.hcl")

_WORKSPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Segments of safe characters joined by '/', not starting with '-', no segment '.' or
# '..': one match per name (5,000 projects: ~2 ms less than a second search for dot
# segments; tests/test_config_fast_paths.py checks it against that two-step form).
_NAME_RE = re.compile(
    r"(?!-)(?!\.\.?(?:/|$))[A-Za-z0-9_.:@+-]+(?:/(?!\.\.?(?:/|$))[A-Za-z0-9_.:@+-]+)*"
)
_NAME_MAX = 128
# A dir normpath would return unchanged: non-empty segments, none of them '.' or '..'.
_NORMAL_DIR_RE = re.compile(r"(?!\.\.?(?:/|$))[^/]+(?:/(?!\.\.?(?:/|$))[^/]+)*")
# A plain release: 1.5.7, 1.6.0-beta1, v1.5.7. It becomes part of an executable's name.


def normalize_dir(value: str) -> str:
    """Return `value` as a normalised repo-relative POSIX path, or raise ValueError.

    A project dir ends up in filesystem paths and `terraform -chdir`, so anything
    that could point outside the working copy is refused here, once, for everyone.
    """
    if "\\" in value or "\0" in value:
        raise ValueError(f"{value!r} must be a POSIX path (no backslashes or NUL)")
    if value.startswith("/"):
        raise ValueError(f"{value!r} is absolute; use a path relative to the repository root")
    if _NORMAL_DIR_RE.fullmatch(value):
        return value  # the usual case, twice per configured project: spare normpath
    normalized = posixpath.normpath(value) if value else "."
    if normalized == ".." or normalized.startswith("../"):
        raise ValueError(f"{value!r} escapes the repository")
    return normalized


def check_workspace(value: str) -> str:
    """Return `value` if it is a safe Terraform workspace name, else raise ValueError."""
    if not _WORKSPACE_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a plain workspace name "
            "(letters, digits, '_', '.', '-'; starting with a letter or digit; at most 64)"
        )
    return value


def check_name(value: str) -> str:
    """Return `value` if it is a plain project name, else raise ValueError.

    Names are typed in PR comments (`-p NAME`) and may end up in file names, so they
    are path-like at most: segments of safe characters joined by '/', no '.'/'..'
    segments (except the root project '.'), no spaces, not starting with '-'.
    """
    plain = value == "." or (len(value) <= _NAME_MAX and _NAME_RE.fullmatch(value) is not None)
    if not plain:
        raise ValueError(
            f"{value!r} is not a plain project name (letters, digits, '_', '.', ':', '@', "
            "'+', '-' in '/'-separated segments; no spaces, no '..')"
        )
    return value


def default_project_name(dir: str, workspace: str) -> str:
    """The name of a project that has none: its dir, plus `:workspace` if not default.

    `:` cannot clash with a nested directory the way `dir/workspace` could.
    """
    return dir if workspace == "default" else f"{dir}:{workspace}"


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


# Frozen, so one instance can be the default of every project that sets none: the loader
# and discovery pass them in, which spares validating two sub-models per project (a third
# of loading 5,000 projects). Their own `model_fields_set` stays empty, as a default's.
DEFAULT_AUTOPLAN = AutoplanConfig()
DEFAULT_DRIFT = DriftConfig()


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
    # Optional policy sets of the server to check this project against (docs/policies.md);
    # read from the default branch, like apply_requirements.
    policy_sets: tuple[str, ...] = ()
    # Values the project's policies read as `input.run.project.data` (e.g. required_tags).
    policy_data: dict[str, Any] = Field(default_factory=dict)
    # The custom workflow the project names (atlantis.yaml `workflow:`), and the one it
    # runs: set by the loader only, from the repository's or the server's `workflows:`
    # (None: the default init/plan/apply).
    workflow: str | None = None
    resolved_workflow: Workflow | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("dir")
    @classmethod
    def _relative_dir(cls, value: str) -> str:
        return normalize_dir(value)

    @field_validator("workspace")
    @classmethod
    def _plain_workspace(cls, value: str) -> str:
        return check_workspace(value)

    @field_validator("terraform_version")
    @classmethod
    def _plain_terraform_version(cls, value: str | None) -> str | None:
        return None if value is None else check_terraform_version(value)

    @field_validator("depends_on")
    @classmethod
    def _plain_dependencies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_name(v) for v in value)

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
    # Directories whose *.tf are only used as local modules (filled by autodiscovery;
    # informative).
    module_dirs: tuple[str, ...] = ()
    parallel_plan: bool = True
    parallel_apply: bool = False
    # The repository's own `workflows:` (the server's are in config/server_config.py).
    workflows: dict[str, Workflow] = Field(default_factory=dict)

    def project(self, name: str) -> ProjectConfig | None:
        return next((p for p in self.projects if p.name == name), None)
