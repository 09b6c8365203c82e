"""`gitops-runner` on the command line, as a person runs it on a repository on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.git_repo import GitRepo, sample_repo

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample-infra"
CLI = [sys.executable, "-m", "runner"]


def run_cli(*args: str, data_dir: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITOPS_")}
    env["GITOPS_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def feature_repo(tmp_path: Path) -> GitRepo:
    """The sample repo with a `feature` branch changing the shared tags module."""
    repo = sample_repo(tmp_path / "repo", "gitops-runner")
    repo.branch("feature", from_="main").checkout("feature")
    repo.write(
        {
            "modules/tags/main.tf": repo.path.joinpath("modules/tags/main.tf").read_text()
            + '\nlocals {\n  team = "platform"\n}\n'
        }
    )
    repo.commit("tags: add a team")
    return repo


def test_the_shipped_example_plans_every_project(tmp_path):
    result = run_cli("plan", "--repo", str(EXAMPLE), data_dir=tmp_path / "data")

    assert result.returncode == 3, result.stderr  # planned, with changes
    for project in ("network", "app", "app-staging", "db"):
        assert f"`{project}`" in result.stdout
    assert "s3cr3t-example-password" not in result.stdout  # a sensitive variable


def test_plan_between_branches_picks_the_callers_of_a_changed_module(tmp_path, feature_repo):
    result = run_cli(
        "plan",
        "--repo",
        str(feature_repo.path),
        "--base",
        "main",
        "--head",
        "feature",
        "--json",
        data_dir=tmp_path / "data",
    )

    assert result.returncode == 3, result.stderr
    planned = {item["project"]: item for item in json.loads(result.stdout)}
    assert set(planned) == {"infra/app", "infra/db", "infra/network"}
    assert "modules/tags" in planned["infra/app"]["reason"]
    assert "modules/network-base" in planned["infra/network"]["reason"]  # transitive


def test_runs_lists_what_plan_recorded(tmp_path, feature_repo):
    data = tmp_path / "data"
    run_cli("plan", "--repo", str(feature_repo.path), "-p", "infra/db", data_dir=data)

    listing = run_cli("runs", "--json", data_dir=data)
    runs = json.loads(listing.stdout)
    assert [(r["project"], r["status"], r["trigger"]) for r in runs] == [
        ("infra/db", "success", "cli")
    ]


def test_a_terraform_error_exits_1_with_the_error_in_the_comment(tmp_path, feature_repo):
    feature_repo.write({"infra/db/broken.tf": 'resource "terraform_data" {\n'})
    result = run_cli(
        "plan", "--repo", str(feature_repo.path), "-p", "infra/db", data_dir=tmp_path / "data"
    )

    assert result.returncode == 1
    assert "Error" in result.stdout


def test_an_invalid_config_exits_2_naming_file_and_line(tmp_path, feature_repo):
    feature_repo.write({"gitops-runner.yaml": "version: 1\nprojects:\n  - dir: /etc\n"})
    result = run_cli("plan", "--repo", str(feature_repo.path), data_dir=tmp_path / "data")

    assert result.returncode == 2
    assert "gitops-runner.yaml:3" in result.stderr


def test_an_unknown_project_exits_2(tmp_path, feature_repo):
    result = run_cli(
        "plan", "--repo", str(feature_repo.path), "-p", "nope", data_dir=tmp_path / "data"
    )

    assert result.returncode == 2
    assert "nope" in result.stderr


def test_locks_and_version_and_help(tmp_path):
    assert "No locks" in run_cli("locks", data_dir=tmp_path).stdout
    assert run_cli("version", data_dir=tmp_path).stdout.startswith("gitops-runner ")
    help_text = run_cli("--help", data_dir=tmp_path).stdout
    for command in ("plan", "runs", "locks", "serve", "worker", "drift", "version"):
        assert command in help_text
