"""Plain directories as repositories: each poll commits the directory into a git repo.

Reconcile and drift work on the default branch of a git repository. A directory that
is not one (the shipped `examples/sample-infra`, a folder of Terraform someone wants
to try) is snapshotted into a bare repository under the data dir, branch `main`: a
new commit only when the directory's files changed, so change detection between two
polls works as on a real repository. Terraform's own leftovers (`.terraform/`, plan
files, state files) are not part of a snapshot.

Local state has to live outside the checkouts: the runner moves its working trees
from commit to commit and removes every untracked file, state included. A project
directory that configures no backend therefore gets an `*_override.tf` in the
snapshot (never in the directory) that points the local backend at
`<data dir>/snapshots/<id>/state/<project dir>/`, and the reconciler says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from filelock import FileLock

from runner.config.errors import ConfigError
from runner.config.loader import load_repo_config

SNAPSHOT_BRANCH = "main"
SNAPSHOTS_DIR = "snapshots"
STATE_OVERRIDE_FILE = "gitops_runner_state_override.tf"
# Never part of a snapshot: Terraform's working files (as in a usual .gitignore).
EXCLUDES = (
    ".git",
    ".terraform/",
    "*.tfplan",
    "*.tfstate",
    "*.tfstate.*",
    "terraform.tfstate.d/",
    ".terraform.tfstate.lock.info",
    "crash.log",
)
_IDENTITY = {
    "GIT_AUTHOR_NAME": "gitops-runner",
    "GIT_AUTHOR_EMAIL": "gitops-runner@localhost",
    "GIT_COMMITTER_NAME": "gitops-runner",
    "GIT_COMMITTER_EMAIL": "gitops-runner@localhost",
}
_BACKEND = re.compile(r'^\s*(?:backend\s+"|cloud\s*\{)', re.M)
_GIT_TIMEOUT_S = 300


class SnapshotError(RuntimeError):
    """The directory could not be snapshotted (git failed, unreadable files)."""


@dataclass(frozen=True)
class Snapshot:
    """A plain directory committed into its snapshot repository."""

    source: Path
    repo: Path  # bare git repository; its path is the clone URL
    commit: str
    created: bool  # False: the directory did not change since the last snapshot
    state_dir: Path
    state_dirs: tuple[str, ...] = ()  # project dirs whose local state lives in state_dir

    @property
    def url(self) -> str:
        return str(self.repo)

    def describe(self) -> str:
        """What was done, in one honest sentence for the CLI and the report."""
        what = "committed as" if self.created else "unchanged since"
        line = (
            f"{self.source} is not a git repository: snapshotted into {self.repo} "
            f"({what} {self.commit[:12]} on {SNAPSHOT_BRANCH})"
        )
        if self.state_dirs:
            line += (
                f"; {len(self.state_dirs)} project dir(s) without a backend keep their "
                f"local state in {self.state_dir} ({STATE_OVERRIDE_FILE} added to the snapshot)"
            )
        return line


def local_directory(spec: str) -> Path | None:
    """The directory a local path or file:// URL names, if it is one; None otherwise."""
    if spec.lower().startswith("file://"):
        raw = unquote(urlsplit(spec).path)
    elif "://" in spec:
        return None
    else:
        raw = spec
    path = Path(raw).expanduser()
    return path.absolute() if path.is_dir() else None


def is_git_repository(path: Path) -> bool:
    """A work tree root (`.git` inside) or a bare repository, as `git fetch PATH` needs."""
    return (path / ".git").exists() or (
        (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()
    )


def needs_snapshot(spec: str) -> Path | None:
    """The directory to snapshot when `spec` names a plain (non-git) directory."""
    directory = local_directory(spec)
    if directory is None or is_git_repository(directory):
        return None
    return directory


def repository_url(spec: str, data_dir: Path) -> str:
    """`spec` itself, or the snapshot repository of the plain directory it names."""
    directory = needs_snapshot(spec)
    return spec if directory is None else snapshot_directory(directory, data_dir).url


def snapshot_root(source: Path, data_dir: Path) -> Path:
    """Where the snapshot of `source` lives: one stable place per absolute path."""
    digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
    return Path(data_dir).expanduser().absolute() / SNAPSHOTS_DIR / digest


def snapshot_repository(source: Path, data_dir: Path) -> Path:
    """The snapshot repository of `source` (its clone URL), whether or not it exists yet."""
    source = Path(source).expanduser().absolute()
    return snapshot_root(source, data_dir) / source.name


def snapshot_directory(source: Path, data_dir: Path) -> Snapshot:
    """Commit the files of `source` on `main` of its snapshot repository (when changed)."""
    source = Path(source).expanduser().absolute()
    if not source.is_dir():
        raise SnapshotError(f"{source} is not a directory")
    root = snapshot_root(source, data_dir)
    root.mkdir(parents=True, exist_ok=True)
    repo = snapshot_repository(source, data_dir)
    state_dir = root / "state"
    with FileLock(str(root / ".lock")):
        git = _Git(repo, source)
        git.ensure_repository()
        git.run("add", "--all", "--", ".")
        overrides = _state_overrides(source, state_dir)
        for path, content in overrides.items():
            blob = git.run("hash-object", "-w", "--stdin", input=content).strip()
            git.run("update-index", "--add", "--cacheinfo", f"100644,{blob},{path}")
        tree = git.run("write-tree").strip()
        parent = git.head()
        if parent is not None and git.run("rev-parse", f"{parent}^{{tree}}").strip() == tree:
            return Snapshot(source, repo, parent, False, state_dir, _dirs(overrides))
        parents = ["-p", parent] if parent else []
        message = f"snapshot of {source}"
        commit = git.run("commit-tree", "--no-gpg-sign", tree, *parents, "-m", message).strip()
        git.run(
            "update-ref", f"refs/heads/{SNAPSHOT_BRANCH}", commit, *([parent] if parent else [])
        )
        return Snapshot(source, repo, commit, True, state_dir, _dirs(overrides))


def _dirs(overrides: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(sorted(os.path.dirname(path) or "." for path in overrides))


def _state_overrides(source: Path, state_dir: Path) -> dict[str, str]:
    """`<dir>/gitops_runner_state_override.tf` for each project dir without a backend.

    An invalid repository config gives none: the reconcile of the snapshot reports it.
    """
    try:
        config = load_repo_config(source)
    except (ConfigError, OSError, ValueError):
        return {}
    overrides: dict[str, str] = {}
    for directory in sorted({project.dir for project in config.projects}):
        project_dir = source / directory
        if not project_dir.is_dir() or (project_dir / STATE_OVERRIDE_FILE).exists():
            continue
        if _declares_backend(project_dir):
            continue
        path = STATE_OVERRIDE_FILE if directory == "." else f"{directory}/{STATE_OVERRIDE_FILE}"
        overrides[path] = _override_tf(state_dir / ("root" if directory == "." else directory))
    return overrides


def _declares_backend(directory: Path) -> bool:
    for path in sorted(directory.glob("*.tf")):
        try:
            if _BACKEND.search(path.read_text(errors="replace")):
                return True
        except OSError:
            return True  # cannot tell: leave the project as it is
    return False


def _override_tf(state: Path) -> str:
    return (
        "# Added by gitops-runner to its snapshot of a plain directory (not in the\n"
        "# directory itself): local state must live outside the runner's checkouts.\n"
        "terraform {\n"
        '  backend "local" {\n'
        f"    path          = {_hcl_string(state / 'terraform.tfstate')}\n"
        f"    workspace_dir = {_hcl_string(state / 'terraform.tfstate.d')}\n"
        "  }\n"
        "}\n"
    )


def _hcl_string(path: Path) -> str:
    """A path as an HCL string literal (JSON escapes; no template sequences)."""
    return json.dumps(str(path)).replace("${", "$${").replace("%{", "%%{")


class _Git:
    """git on the snapshot repository, with `source` as its work tree."""

    def __init__(self, repo: Path, source: Path) -> None:
        self._repo = repo
        self._source = source

    def ensure_repository(self) -> None:
        if (self._repo / "HEAD").is_file():
            return
        self.run("init", "--bare", "--quiet", "--template=", str(self._repo), bare_init=True)
        self.run("symbolic-ref", "HEAD", f"refs/heads/{SNAPSHOT_BRANCH}")
        info = self._repo / "info"
        info.mkdir(exist_ok=True)
        (info / "exclude").write_text("\n".join(EXCLUDES) + "\n")

    def head(self) -> str | None:
        ref = f"refs/heads/{SNAPSHOT_BRANCH}"
        out = self.run("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", ok=(0, 1))
        return out.strip() or None

    def run(
        self,
        *args: str,
        input: str | None = None,
        ok: Sequence[int] = (0,),
        bare_init: bool = False,
    ) -> str:
        location = [] if bare_init else ["--git-dir", str(self._repo)]
        if not bare_init:
            location += ["--work-tree", str(self._source)]
        env = {
            **os.environ,
            **_IDENTITY,
            # The snapshot's own index: kept between snapshots, so unchanged files
            # are not hashed again.
            "GIT_INDEX_FILE": str(self._repo / "snapshot.index"),
        }
        try:
            result = subprocess.run(
                ["git", *location, *args],
                input=input,
                capture_output=True,
                text=True,
                env=env,
                cwd=self._source,
                timeout=_GIT_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise SnapshotError(f"git {args[0]} failed: {error}") from error
        if result.returncode not in ok:
            tail = " | ".join(result.stderr.strip().splitlines()[-3:]) or "no output"
            raise SnapshotError(f"git {args[0]} failed (exit {result.returncode}): {tail}")
        return result.stdout
