"""The README's Quick start, command by command, as a new user runs it.

On a copy of `examples/sample-infra` (a plain directory, no git) with a data dir of
its own and the embedded Terraform: each step's documented exit code and the lines
the README tells the reader to expect.
"""

from __future__ import annotations

import pytest

from tests.support.cli import copy_sample, run_cli


@pytest.fixture
def gitops(tmp_path):
    """`gitops-runner ARGS --repo <a copy of the sample>`, on one data dir."""
    sample = copy_sample(tmp_path)

    def run(*args: str, repo: bool = True):
        extra = ("--repo", str(sample)) if repo else ()
        return run_cli(*args, *extra, data_dir=tmp_path / "data")

    run.sample = sample
    return run


def test_the_quick_start_and_its_follow_ups_in_order(gitops):
    first = gitops("reconcile", "--once")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "is not a git repository: snapshotted into" in first.stdout
    assert "ok: 4 applied" in first.stdout

    again = gitops("reconcile", "--once")
    assert again.returncode == 0 and "up to date" in again.stdout

    in_sync = gitops("drift")
    assert in_sync.returncode == 0 and "4 in_sync" in in_sync.stdout

    unchanged = gitops("plan")
    assert unchanged.returncode == 0 and "4 without changes" in unchanged.stdout

    main_tf = gitops.sample / "infra/app/main.tf"
    main_tf.write_text(main_tf.read_text().replace("default = 2", "default = 3"))

    pending = gitops("drift")
    assert pending.returncode == 3
    pending_lines = [line for line in pending.stdout.splitlines() if line.startswith("pending")]
    assert [line.split()[1] for line in pending_lines] == ["app/default", "app-staging/staging"]

    planned = gitops("plan")
    assert planned.returncode == 3 and "2 with changes" in planned.stdout

    applied = gitops("reconcile", "--once")
    assert applied.returncode == 0 and "ok: 2 applied" in applied.stdout

    runs = gitops("runs", repo=False)
    assert runs.returncode == 0
    assert "status" in runs.stdout.splitlines()[1]  # the header row
