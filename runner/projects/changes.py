"""Which files a pull request changes, the way the forge shows its diff.

A PR's diff is `base...head`: from the merge-base of the two to head, so commits that
landed on the base branch meanwhile do not count as the PR's changes.
"""

from __future__ import annotations

from pathlib import Path

import git


class ChangeDetectionError(Exception):
    """The changed files cannot be computed (unknown revision, no merge-base, ...)."""


def changed_files(repo: Path, base: str, head: str) -> list[str]:
    """Repo-relative paths changed between merge-base(base, head) and head, sorted.

    Renames count twice (old and new path: both the old and the new location may
    belong to projects) and deletions count; rename detection is therefore off.
    """
    try:
        repository = git.Repo(repo)
        bases = repository.merge_base(base, head)
        if not bases:
            raise ChangeDetectionError(
                f"{base} and {head} have no common ancestor (unrelated or shallow history?)"
            )
        # -z: paths exactly as stored (no C-quoting of unusual characters).
        out = repository.git.diff(
            "--name-only", "--no-renames", "--no-ext-diff", "-z", bases[0].hexsha, head, "--"
        )
    except (
        git.GitCommandError,
        git.BadName,
        git.InvalidGitRepositoryError,
        git.NoSuchPathError,
        ValueError,
    ) as exc:
        raise ChangeDetectionError(f"cannot diff {base}...{head} in {repo}: {exc}") from exc
    return sorted({p for p in out.split("\0") if p})
