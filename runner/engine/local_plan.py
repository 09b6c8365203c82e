"""`gitops-runner plan` on a repository on disk: choose projects, check out, plan.

The CLI's job without a forge. It picks the projects a branch touches (or the
ones named), gets the right tree on disk and hands them to the Planner, so a
person sees exactly what a pull request would show.

Nothing is written into the user's tree. The working tree as it is (no `--head`) is
planned in its snapshot (`runner/workspace/snapshot.py`), the same one `reconcile`
and `drift` use for a plain directory, so a project without a backend plans against
the local state they keep. A tree with uncommitted changes is labelled
`<commit>+dirty`; a directory outside any git repository by its snapshot's commit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
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
from runner.workspace.confine import remove_escaping_links
from runner.workspace.snapshot import (
    Snapshot,
    is_git_repository,
    snapshot_directory,
    snapshot_repository,
)

DIRTY = "+dirty"


@dataclass(frozen=True)
class LocalSelection:
    """What to plan, where the tree is, and which commit it is (`<sha>+dirty` for a
    working tree with uncommitted changes)."""

    checkout: Path
    commit: str | None
    targets: tuple[PlanTarget, ...]
    config: RepoConfig
    # The URL reconcile and drift know this repository by (its snapshot, for a plain
    # directory): its key scopes the run records and the per-state mutex.
    repo_url: str
    snapshot: Snapshot | None = None


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
    data_dir: Path,
    extra_args: Sequence[str] = (),
) -> LocalSelection:
    """Resolve the CLI's view of a repository into plan targets.

    With `--base`, only projects touched between base and head are planned,
    each with the reason it was chosen; without it, every project is. With
    `--head`, that commit's tree is exported under the data dir; otherwise the
    working tree is planned as it is, in its snapshot (see the module docstring).
    """
    repo = repo.resolve()
    scratch_dir = data_dir / "cli-checkouts"
    snapshot = None
    if head is None:
        snapshot = snapshot_directory(repo, data_dir)
        checkout = _snapshot_tree(snapshot, scratch_dir)
        commit = _worktree_label(repo) or snapshot.commit
    else:
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
    url = str(repo) if is_git_repository(repo) else str(snapshot_repository(repo, data_dir))
    return LocalSelection(checkout, commit, targets, config, url, snapshot)


def _snapshot_tree(snapshot: Snapshot, scratch_dir: Path) -> Path:
    """The snapshot's files in a scratch tree (one per snapshot; older commits removed)."""
    trees = scratch_dir / snapshot.repo.parent.name
    target = trees / snapshot.commit
    if not (target / ".complete").exists():
        for stale in trees.glob("*"):
            shutil.rmtree(stale, ignore_errors=True)
        _export_tree(git.Repo(snapshot.repo), snapshot.commit, "", target)
    return target


def _tree_for(repo: Path, head: str, scratch_dir: Path) -> tuple[Path, str]:
    git_repo = git.Repo(repo, search_parent_directories=True)
    sha = git_repo.commit(head).hexsha
    prefix = _prefix_in_repo(git_repo, repo)
    target = scratch_dir / sha
    if not (target / ".complete").exists():
        _export_tree(git_repo, sha, prefix, target)
    return target, sha


def _export_tree(git_repo: git.Repo, sha: str, prefix: str, target: Path) -> None:
    """Write the tree of `sha` (below `prefix`) to `target`, without touching the repo.

    Through a throwaway index, as `WorkingCopies.checkout_fresh` does: git writes the
    files itself (no tar archive to unpack), and a committed symlink that leads out of
    the tree is removed, as in every checkout the runner makes.
    """
    partial = target.with_name(target.name + ".partial")
    for stale in (partial, target):
        shutil.rmtree(stale, ignore_errors=True)
    partial.mkdir(parents=True)
    treeish = f"{sha}:{prefix}" if prefix else sha
    with tempfile.TemporaryDirectory() as scratch:
        env = {
            "GIT_DIR": str(git_repo.git_dir),
            "GIT_INDEX_FILE": str(Path(scratch) / "index"),
            "GIT_WORK_TREE": str(partial),
        }
        git_repo.git.read_tree(treeish, env=env)
        git_repo.git.checkout_index("-a", "-f", env=env)
    remove_escaping_links(partial, _symlinks(partial))
    partial.rename(target)
    (target / ".complete").touch()


def _symlinks(root: Path) -> list[str]:
    return [
        os.path.relpath(os.path.join(directory, name), root)
        for directory, subdirs, files in os.walk(root)
        for name in (*subdirs, *files)
        if os.path.islink(os.path.join(directory, name))
    ]


def _worktree_label(repo: Path) -> str | None:
    """HEAD of the enclosing clone, `+dirty` when `repo` has uncommitted or untracked
    files; None outside git (or before the first commit)."""
    try:
        git_repo = git.Repo(repo, search_parent_directories=True)
        sha = git_repo.head.commit.hexsha
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
        return None
    status = git_repo.git.status("--porcelain", "--untracked-files=normal", "--", str(repo))
    return sha + DIRTY if status.strip() else sha


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
