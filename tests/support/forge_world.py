"""What a story needs from a forge world, and the parts both worlds share.

`ForgeWorld` is the interface a story is written against: people open a pull or merge
request, push to it, comment, approve, merge or close it; the story reads the comments
(GitLab: notes), the commit statuses, the locks and runs in `services.store`. The
GitHub world (`pr_world.py`) and the GitLab world (`mr_world.py`) implement the forge
verbs; the git side (a real origin pushed to a bare repository used as `file://` clone
URL) and the runner's wiring are here, once.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from runner.commands.pr_flow import PullRequestFlow
from runner.engine.services import Services
from runner.events.model import Event
from runner.settings import Settings, load_settings
from runner.wiring import build_services
from tests.support.git_repo import GitRepo, sample_repo

Access = Literal["read", "write"]  # GitHub read/write; GitLab Reporter/Developer


@dataclass(kw_only=True)
class ForgeWorld(ABC):
    """Origin repo + a fake forge + runner services, for one test."""

    root: Path
    origin: GitRepo
    bare: Path
    settings: Settings
    services: Services
    flow: PullRequestFlow
    _branches: dict[int, str] = field(default_factory=dict)

    forge_name: str = ""  # "github" or "gitlab", for test ids and messages
    comment_cap: int = 0  # the largest comment (note) body the forge accepts

    @property
    def clone_url(self) -> str:
        return self.bare.as_uri()

    # ---- the forge's side: each world says how ------------------------------------------

    @property
    @abstractmethod
    def repo_key(self) -> str:
        """The repository as the runner keys locks and runs (host/path)."""

    @abstractmethod
    def open_pr(
        self, branch: str, files: Mapping[str, str], author: str = "alice", *, fork: bool = False
    ) -> int:
        """Push a branch, open a PR/MR from it and deliver the event (autoplan)."""

    @abstractmethod
    def push_to_pr(self, number: int, files: Mapping[str, str]) -> str:
        """Push a commit to the PR/MR's branch and deliver the event; the new head."""

    @abstractmethod
    def comment(self, number: int, body: str, user: str = "alice") -> int:
        """`user` comments (GitLab: a note) and the runner handles it; the comment's id."""

    @abstractmethod
    def approve(self, number: int, reviewer: str = "bob") -> None:
        """`reviewer` approves at the current head."""

    @abstractmethod
    def merge(self, number: int) -> str:
        """Merge the branch into main for real (a merge commit), deliver the event."""

    @abstractmethod
    def close(self, number: int) -> None:
        """Close without merging, deliver the event."""

    @abstractmethod
    def set_permission(self, user: str, access: Access) -> None:
        """Give `user` read (GitLab: Reporter) or write (GitLab: Developer) access."""

    @abstractmethod
    def head_sha(self, number: int) -> str: ...

    @abstractmethod
    def comments(self, number: int) -> list[str]:
        """The bodies of the PR/MR's comments (GitLab: notes, system notes left out)."""

    @abstractmethod
    def reactions(self, comment_id: int) -> list[str]:
        """What the runner put on a comment (GitHub reactions, GitLab award emoji)."""

    @abstractmethod
    def statuses(self, sha: str) -> dict[str, str]:
        """Latest state per status context (GitHub `failure` is GitLab `failed`)."""

    # ---- shared -------------------------------------------------------------------------

    def open_fork_pr(self, branch: str, files: Mapping[str, str], author: str = "mallory") -> int:
        """A stranger's PR/MR from their fork (autoplanned only if the runner allows forks)."""
        return self.open_pr(branch, files, author, fork=True)

    def last_comment(self, number: int) -> str:
        return self.comments(number)[-1]

    def handle(self, event: Event) -> None:
        """Run `event` as a worker would, synchronously."""
        self.flow.handle(event, threading.Event())

    def push_branch(self, branch: str, files: Mapping[str, str], base: str = "main") -> str:
        """Commit `files` on `branch` (created from `base` if new) and push it."""
        if branch not in [head.name for head in self.origin.repo.heads]:
            self.origin.branch(branch, from_=base)
        self.origin.checkout(branch)
        self.origin.write(files)
        sha = self.origin.commit(f"change on {branch}")
        self.origin.push("origin", branch)
        self.origin.checkout("main")
        return sha

    def commit_on_main(self, files: Mapping[str, str]) -> str:
        self.origin.checkout("main")
        self.origin.write(files)
        sha = self.origin.commit("change on main")
        self.origin.push("origin", "main")
        return sha

    def merge_branch(self, number: int, message: str) -> str:
        """Merge the PR/MR's branch into main in git (no forge, no event); the merge sha."""
        self.origin.checkout("main")
        self.origin.repo.git.merge("--no-ff", "-m", message, self._branches[number])
        self.origin.push("origin", "main")
        return self.origin.head

    def main_sha(self) -> str:
        return self.origin.repo.commit("main").hexsha


def make_origin(root: Path, config: str = "gitops-runner") -> tuple[GitRepo, Path]:
    """The sample repository (working copy) pushing to a bare `origin.git`."""
    origin = sample_repo(root / "origin", config)  # type: ignore[arg-type]
    bare = origin.bare_clone(root / "origin.git")
    origin.add_remote("origin", str(bare))
    return origin, bare


def wire_runner(root: Path, values: Mapping[str, object]) -> tuple[Settings, Services]:
    """Settings (data under `root/data`, two workers) and services, as `serve` wires them."""
    resolved = load_settings(**({"data_dir": root / "data", "parallelism": 2} | dict(values)))
    return resolved, build_services(resolved)
