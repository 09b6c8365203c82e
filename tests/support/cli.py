"""Running `gitops-runner` as a person does: a subprocess, a data dir of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample-infra"
CLI = [sys.executable, "-m", "runner"]


def copy_sample(parent: Path) -> Path:
    """A copy of the shipped example: a plain directory (no git), as a new user has it."""
    copy = parent / "sample-infra"
    leftovers = shutil.ignore_patterns(".terraform", "*.tfplan", "*.tfstate*")
    shutil.copytree(EXAMPLE, copy, ignore=leftovers)
    return copy


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without its GITOPS_* settings, with a data dir of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITOPS_")}
    return {**env, "GITOPS_DATA_DIR": str(data_dir), **extra}


def run_cli(
    *args: str, data_dir: Path, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args],
        env=cli_env(data_dir, **env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
