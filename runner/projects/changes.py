"""Which files a pull request changes, the way the forge shows its diff.

A PR's diff is `base...head`: from the merge-base of the two to head, so commits that
landed on the base branch meanwhile do not count as the PR's changes.
"""

from __future__ import annotations

import os
from pathlib import Path

from runner.git_command import git_output, run_git


class ChangeDetectionError(Exception):
    """The changed files cannot be computed (unknown revision, no merge-base, ...)."""


def changed_files(repo: Path, base: str, head: str) -> list[str]:
    """Repo-relative paths changed between merge-base(base, head) and head, sorted.

    Renames count twice (old and new path: both the old and the new location may
    belong to projects) and deletions count; rename detection is therefore off.
    """
    for rev in (base, head):
        if not rev or rev.startswith("-"):
            raise ChangeDetectionError(f"cannot diff {base}...{head} in {repo}: bad revision")
    if "." not in base + head:
        # One process: `git diff base...head` diffs from the merge-base itself. Any
        # failure (no merge-base, unknown revision) is asked again step by step below,
        # so the error says which.
        out = git_output(repo, "diff", *_DIFF_FLAGS, f"{base}...{head}", "--")
        if out is not None:
            return _paths(out)
    merge_base = _git(repo, base, head, "merge-base", base, head).strip()
    if not merge_base:
        raise ChangeDetectionError(
            f"{base} and {head} have no common ancestor (unrelated or shallow history?)"
        )
    out = _git(repo, base, head, "diff", *_DIFF_FLAGS, merge_base, head, "--")
    return _paths(out)


# -z: paths exactly as stored (no C-quoting of unusual characters).
_DIFF_FLAGS = ("--name-only", "--no-renames", "--no-ext-diff", "-z")


def _paths(out: str) -> list[str]:
    return sorted({p for p in out.split("\0") if p})


def _git(repo: Path, base: str, head: str, *args: str) -> str:
    """git's output; exit code 1 of `merge-base` (no common ancestor) is an empty answer."""
    proc = run_git(repo, *args)
    unrelated = args[0] == "merge-base" and proc.returncode == 1 and not proc.stderr
    if proc.returncode == 0 or unrelated:
        return os.fsdecode(proc.stdout)
    reason = os.fsdecode(proc.stderr).strip() or f"git {args[0]} exited {proc.returncode}"
    raise ChangeDetectionError(f"cannot diff {base}...{head} in {repo}: {reason}")
