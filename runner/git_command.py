"""Plain `git` on a checkout, as the runner's per-event steps run it.

Plain git rather than GitPython: a process and no object lookups in Python, for steps
every pull request event takes (changed files, the tree index, the module scan).
`--no-optional-locks`: never rewrite the index of a working copy someone else uses.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def run_git(
    repo: Path, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """`git -C repo args…`, its output captured; the caller reads the exit code."""
    return subprocess.run(
        ["git", "--no-optional-locks", "-C", str(repo), *args],
        input=stdin,
        capture_output=True,
        check=False,
    )


def git_output(repo: Path, *args: str) -> str | None:
    """git's output, None when it fails."""
    proc = run_git(repo, *args)
    return os.fsdecode(proc.stdout) if proc.returncode == 0 else None
