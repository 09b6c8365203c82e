"""Real git repositories for tests, built in a few readable lines.

Tests exercise the runner against real git (no mocks), so they need a quick way to lay
out files, commit, branch and clone. `sample_repo` builds the standard repository the
test suite shares: three projects, a shared module and a module calling a module, all
made of `terraform_data` resources so real Terraform can plan them offline.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import git

DEFAULT_AUTHOR = "Test Author <author@example.com>"


class GitRepo:
    """A working repository on disk, default branch `main`, identity set locally."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.repo = git.Repo(self.path)

    @classmethod
    def init(cls, path: Path, branch: str = "main") -> GitRepo:
        """Create an empty repository with a local identity and no commit signing."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        repo = git.Repo.init(path, initial_branch=branch)
        with repo.config_writer() as config:
            config.set_value("user", "name", "Test Author")
            config.set_value("user", "email", "author@example.com")
            config.set_value("commit", "gpgsign", "false")
        return cls(path)

    @property
    def head(self) -> str:
        """The SHA of the checked-out commit."""
        return self.repo.head.commit.hexsha

    def write(self, files: Mapping[str, str]) -> GitRepo:
        """Create or overwrite files (repo-relative POSIX paths), making parent dirs."""
        for rel, content in files.items():
            target = self.path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        return self

    def remove(self, paths: Iterable[str]) -> GitRepo:
        """Delete files or whole directories from the working tree."""
        for rel in paths:
            target = self.path / rel
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()
        return self

    def rename(self, old: str, new: str) -> GitRepo:
        """Move a file or directory in the working tree."""
        target = self.path / new
        target.parent.mkdir(parents=True, exist_ok=True)
        (self.path / old).rename(target)
        return self

    def commit(self, message: str, author: str = DEFAULT_AUTHOR) -> str:
        """Stage everything (additions, edits, deletions) and commit; returns the SHA."""
        self.repo.git.add("-A")
        self.repo.git.commit("-q", "--no-verify", "--allow-empty", "-m", message, author=author)
        return self.head

    def branch(self, name: str, from_: str | None = None) -> GitRepo:
        """Create branch `name` at `from_` (a ref or SHA; default HEAD), not checked out."""
        self.repo.git.branch(name, from_ or "HEAD")
        return self

    def checkout(self, name: str) -> GitRepo:
        """Switch the working tree to a branch or commit."""
        self.repo.git.checkout("-q", name)
        return self

    def bare_clone(self, dest: Path) -> Path:
        """A bare clone at `dest` (use `dest.as_uri()` as a `file://` clone URL)."""
        git.Repo.clone_from(str(self.path), str(dest), bare=True)
        return Path(dest)

    def clone(self, dest: Path) -> GitRepo:
        """A working clone at `dest` with the same local identity."""
        git.Repo.clone_from(str(self.path), str(dest))
        clone = GitRepo(dest)
        with clone.repo.config_writer() as config:
            config.set_value("user", "name", "Test Author")
            config.set_value("user", "email", "author@example.com")
            config.set_value("commit", "gpgsign", "false")
        return clone

    def add_remote(self, name: str, url: str) -> GitRepo:
        """Register a remote (e.g. a `bare_clone` path) to push to."""
        self.repo.create_remote(name, url)
        return self

    def push(self, remote: str = "origin", ref: str | None = None, force: bool = False) -> None:
        """Push `ref` (default: the current branch) to the branch of the same name."""
        ref = ref or self.repo.active_branch.name
        args = ["--force"] if force else []
        self.repo.git.push(*args, remote, f"{ref}:{ref}")


# --- the standard sample repository --------------------------------------------------

_TERRAFORM_BLOCK = """terraform {
  required_version = ">= 1.4"
}
"""

SAMPLE_FILES: dict[str, str] = {
    "README.md": "# sample infrastructure\n",
    "docs/runbook.md": "Nothing to see.\n",
    "modules/tags/main.tf": """variable "name" {
  type = string
}

resource "terraform_data" "tags" {
  input = {
    name       = var.name
    managed_by = "gitops-runner"
  }
}

output "tags" {
  value = terraform_data.tags.output
}
""",
    "modules/network-base/main.tf": """variable "cidr" {
  type = string
}

module "tags" {
  source = "../tags"
  name   = "network"
}

resource "terraform_data" "network" {
  input = {
    cidr = var.cidr
    tags = module.tags.tags
  }
}

output "cidr" {
  value = terraform_data.network.output.cidr
}
""",
    "infra/network/main.tf": _TERRAFORM_BLOCK
    + """
module "base" {
  source = "../../modules/network-base"
  cidr   = var.cidr
}

output "cidr" {
  value = module.base.cidr
}
""",
    "infra/network/variables.tf": """variable "cidr" {
  type    = string
  default = "10.0.0.0/16"
}
""",
    "infra/app/main.tf": _TERRAFORM_BLOCK
    + """
module "tags" {
  source = "../../modules/tags"
  name   = var.app_name
}

resource "terraform_data" "app" {
  input = {
    name = var.app_name
    tags = module.tags.tags
  }
}
""",
    "infra/app/variables.tf": """variable "app_name" {
  type    = string
  default = "app"
}
""",
    "infra/db/main.tf": _TERRAFORM_BLOCK
    + """
module "tags" {
  source = "../../modules/tags"
  name   = "db"
}

resource "terraform_data" "db" {
  input = {
    engine = "postgres"
    tags   = module.tags.tags
  }
}
""",
}

# `apply: both`: the PR tests apply by comment and on merge alike.
SAMPLE_RUNNER_CONFIG = """version: 1
projects:
  - dir: infra/network
    apply: both
  - dir: infra/app
    depends_on: [infra/network, infra/db]
    apply: both
  - dir: infra/db
    apply_requirements: [approved]
    apply: both
"""

SAMPLE_ATLANTIS_CONFIG = """version: 3
automerge: true
projects:
  - name: network
    dir: infra/network
    workflow: custom
  - name: app
    dir: infra/app
    depends_on: [network, db]
    autoplan:
      when_modified: ["*.tf", "../../modules/**/*.tf"]
  - name: db
    dir: infra/db
    apply_requirements: [approved, policies_passed]
workflows:
  custom:
    plan:
      steps: [init, plan]
"""

SampleConfig = Literal["gitops-runner", "atlantis", "none"]


def sample_files(config: SampleConfig = "none") -> dict[str, str]:
    """The files of the sample repository, with the chosen config file (if any)."""
    files = dict(SAMPLE_FILES)
    if config == "gitops-runner":
        files["gitops-runner.yaml"] = SAMPLE_RUNNER_CONFIG
    elif config == "atlantis":
        files["atlantis.yaml"] = SAMPLE_ATLANTIS_CONFIG
    return files


def sample_repo(path: Path, config: SampleConfig = "none") -> GitRepo:
    """Create and commit the sample repository at `path` on branch `main`."""
    repo = GitRepo.init(path)
    repo.write(sample_files(config))
    repo.commit("sample infrastructure")
    return repo
