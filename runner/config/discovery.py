"""Autodiscovery: a repository without a config file still gets its projects.

Every directory with Terraform files is a root module (a project), unless another
directory calls it as a local module: then it is only a module and is planned through
its callers. Hidden directories (and so `.terraform`) are skipped.
"""

from __future__ import annotations

import functools

from pydantic import ValidationError

from runner.config.model import (
    DEFAULT_AUTOPLAN,
    DEFAULT_DRIFT,
    ConfigWarning,
    ProjectConfig,
    RepoConfig,
)
from runner.terraform.modules import ModuleGraph

AUTODISCOVERY = "(autodiscovery)"


@functools.lru_cache(maxsize=65536)
def _project(dir: str) -> ProjectConfig:
    """The discovered project of a directory, validated once per process: a monorepo's
    thousands of directories are mostly the same from one pull request to the next
    (ProjectConfig is frozen, so sharing one is safe). A ValidationError is not cached."""
    return ProjectConfig(name=dir, dir=dir, autoplan=DEFAULT_AUTOPLAN, drift=DEFAULT_DRIFT)


def discover(graph: ModuleGraph) -> RepoConfig:
    """One project per root-module directory, named after the dir, workspace `default`.

    Kept by the graph for its tree: the next pull request at the same tree (a re-plan,
    another PR's identical tree) gets the same frozen config without a walk."""
    return graph.memo("discovery", lambda: _discover(graph))


def _discover(graph: ModuleGraph) -> RepoConfig:
    module_dirs = graph.module_dirs()
    projects: list[ProjectConfig] = []
    warnings: list[ConfigWarning] = []
    for dir in sorted(graph.terraform_dirs() - module_dirs):
        try:
            projects.append(_project(dir))
        except ValidationError:
            # A directory name with spaces etc. cannot be a project name on its own.
            warnings.append(
                ConfigWarning(
                    file=AUTODISCOVERY,
                    line=None,
                    message=f"{dir!r} skipped: not usable as a project name; "
                    "list it in gitops-runner.yaml with an explicit name",
                )
            )
    return RepoConfig(
        source="autodiscovery",
        projects=tuple(projects),
        warnings=tuple(warnings),
        module_dirs=tuple(sorted(module_dirs)),
    )
