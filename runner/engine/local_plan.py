"""`gitops-runner plan` on a repository on disk: choose projects, check out, plan.

The CLI's job without a forge. It picks the projects a branch touches (or the
ones named), gets the right tree on disk and hands them to the Planner, so a
person sees exactly what a pull request would show.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import git

from runner.config.loader import load_repo_config
from runner.config.model import RepoConfig
from runner.engine.planner import PlanTarget
from runner.projects.changes import changed_files
from runner.projects.detection import affected_projects, select_projects
from runner.terraform.modules import ModuleGraph


@dataclass(frozen=True)
class LocalSelection:
    """What to plan, where the tree is, and which commit it is (None = working tree)."""

    checkout: Path
    commit: str | None
    targets: tuple[PlanTarget, ...]
    config: RepoConfig


@dataclass(frozen=True)
class ProjectFilter:
    """The `-p/-d/-w` options of the CLI; all None means "no filter"."""

    project: str | None = None
    dir: str | None = None
    workspace: str | None = None

    @property
    def active(self) -> bool:
        return any((self.project, self.dir, self.workspace))


def select_local(
    repo: Path,
    base: str | None,
    head: str | None,
    wanted: ProjectFilter,
    scratch_dir: Path,
    extra_args: Sequence[str] = (),
) -> LocalSelection:
    """Resolve the CLI's view of a repository into plan targets.

    With `--base`, only projects touched between base and head are planned,
    each with the reason it was chosen; without it, every project is. With
    `--head`, that commit's tree is exported to `scratch_dir` so the user's
    working tree is left alone; otherwise the working tree is planned as it is.
    """
    repo = repo.resolve()
    checkout, commit = _tree_for(repo, head, scratch_dir)
    graph = ModuleGraph.build(checkout)
    config = load_repo_config(checkout, graph=graph)
    if wanted.active:
        chosen = [
            (project, "selected on the command line")
            for project in select_projects(config, wanted.project, wanted.dir, wanted.workspace)
        ]
    elif base is not None:
        changed = _changed_below(repo, base, head or "HEAD")
        chosen = [(item.project, item.reason) for item in affected_projects(config, changed, graph)]
    else:
        chosen = [(project, "no --base given: every project") for project in config.projects]
    targets = tuple(PlanTarget(project, reason, tuple(extra_args)) for project, reason in chosen)
    return LocalSelection(checkout=checkout, commit=commit, targets=targets, config=config)


def _tree_for(repo: Path, head: str | None, scratch_dir: Path) -> tuple[Path, str | None]:
    if head is None:
        return repo, _commit_of_worktree(repo)
    git_repo = git.Repo(repo, search_parent_directories=True)
    sha = git_repo.commit(head).hexsha
    prefix = _prefix_in_repo(git_repo, repo)
    target = scratch_dir / sha
    if not (target / ".complete").exists():
        _export_tree(git_repo, sha, prefix, target)
    return target, sha


def _export_tree(git_repo: git.Repo, sha: str, prefix: str, target: Path) -> None:
    """Write the tree of `sha` (below `prefix`) to `target`, without touching the repo."""
    partial = target.with_name(target.name + ".partial")
    for stale in (partial, target):
        shutil.rmtree(stale, ignore_errors=True)
    partial.mkdir(parents=True)
    buffer = io.BytesIO()
    git_repo.archive(buffer, treeish=sha, format="tar", path=prefix or None)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as archive:
        archive.extractall(partial, filter="data")
    (partial / prefix).rename(target)
    shutil.rmtree(partial, ignore_errors=True)
    (target / ".complete").touch()


def _commit_of_worktree(repo: Path) -> str | None:
    try:
        return git.Repo(repo, search_parent_directories=True).head.commit.hexsha
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
        return None


def _prefix_in_repo(git_repo: git.Repo, path: Path) -> str:
    top = Path(git_repo.working_tree_dir or path).resolve()
    relative = path.resolve().relative_to(top).as_posix()
    return "" if relative == "." else relative


def _changed_below(repo: Path, base: str, head: str) -> list[str]:
    """Changed files relative to `repo`, which may be a sub-directory of its git repo."""
    git_repo = git.Repo(repo, search_parent_directories=True)
    top = Path(git_repo.working_tree_dir or repo)
    prefix = _prefix_in_repo(git_repo, repo)
    changed = changed_files(top, base, head)
    if not prefix:
        return changed
    marker = prefix + "/"
    return [path[len(marker) :] for path in changed if path.startswith(marker)]
