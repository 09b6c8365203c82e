"""`gitops-runner` on the command line, as a person runs it on a repository on disk."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import CLI, cli_env, copy_sample, run_cli
from tests.support.git_repo import GitRepo, sample_repo


def fails_cleanly(result: subprocess.CompletedProcess, exit_code: int, *names: str) -> str:
    """The command exited with `exit_code`, one `error:` message naming `names`, no traceback."""
    assert result.returncode == exit_code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    message = result.stderr
    assert "error: " in message
    for name in names:
        assert name in message, message
    return message


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    return copy_sample(tmp_path)


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


def test_the_shipped_example_plans_every_project(tmp_path, sample):
    result = run_cli("plan", "--repo", str(sample), data_dir=tmp_path / "data")

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


# --- one error path: a line naming what is wrong, the documented exit code, no traceback


@pytest.mark.parametrize("command", [["drift"], ["reconcile", "--once"]])
def test_a_repo_path_that_does_not_exist_is_a_usage_error(tmp_path, command):
    result = run_cli(*command, "--repo", str(tmp_path / "nowhere"), data_dir=tmp_path / "data")

    fails_cleanly(result, 2, str(tmp_path / "nowhere"))


def test_drift_of_an_unknown_project_is_a_usage_error_as_in_plan(tmp_path, sample):
    result = run_cli("drift", "--repo", str(sample), "-p", "nosuch", data_dir=tmp_path / "data")

    message = fails_cleanly(result, 2, "nosuch")
    assert "network" in message  # the projects there are


@pytest.mark.parametrize("command", [["plan"], ["drift"], ["reconcile", "--once"]])
def test_an_invalid_repo_config_exits_2_naming_file_and_line(tmp_path, sample, command):
    (sample / "gitops-runner.yaml").write_text("version: 1\nprojects:\n  - dir: /etc\n")

    result = run_cli(*command, "--repo", str(sample), data_dir=tmp_path / "data")

    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert "gitops-runner.yaml:3" in result.stdout + result.stderr


def test_a_data_dir_that_is_a_file_is_named(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")

    fails_cleanly(run_cli("runs", data_dir=blocker), 2, "GITOPS_DATA_DIR", str(blocker))


def test_a_bad_setting_is_one_line_without_pydantic_links(tmp_path):
    message = fails_cleanly(
        run_cli("runs", data_dir=tmp_path, GITOPS_PORT="abc"), 2, "GITOPS_PORT", "integer"
    )
    assert "errors.pydantic.dev" not in message


def test_a_bad_settings_file_names_file_and_line(tmp_path):
    config = tmp_path / "settings.yaml"
    config.write_text("port: 4141\nno_such_setting: 1\n")

    result = run_cli("--config", str(config), "runs", data_dir=tmp_path / "data")

    fails_cleanly(result, 2, f"{config}:2", "no_such_setting")


def test_a_terraform_error_in_drift_shows_terraforms_message_and_the_log(tmp_path, sample):
    (sample / "infra/db/broken.tf").write_text('resource "terraform_data" {\n')

    result = run_cli("drift", "--repo", str(sample), "-p", "db", data_dir=tmp_path / "data")

    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "Terraform exited with code 1" in result.stdout
    assert "Error:" in result.stdout  # Terraform's own words
    assert "log: " in result.stdout and ".log" in result.stdout
    assert "1 error" in result.stdout  # the summary counts it


def test_debug_shows_the_traceback(tmp_path, sample):
    result = run_cli(
        "--debug", "drift", "--repo", str(sample), "-p", "nosuch", data_dir=tmp_path / "data"
    )

    assert result.returncode == 1
    assert "Traceback" in result.stderr and "nosuch" in result.stderr


# --- honest local plans -----------------------------------------------------------------


def test_plan_uses_the_state_reconcile_keeps_and_writes_nothing_into_the_tree(tmp_path, sample):
    data = tmp_path / "data"
    before = sorted(p.relative_to(sample) for p in sample.rglob("*"))
    assert run_cli("reconcile", "--once", "--repo", str(sample), data_dir=data).returncode == 0

    result = run_cli("plan", "--repo", str(sample), data_dir=data)

    assert result.returncode == 0, result.stderr  # applied by reconcile: nothing to do
    assert "4 without changes" in result.stdout
    assert sorted(p.relative_to(sample) for p in sample.rglob("*")) == before


def test_a_dirty_tree_is_planned_and_recorded_as_dirty(tmp_path):
    repo = sample_repo(tmp_path / "repo", "gitops-runner")
    repo.write({"infra/db/extra.tf": 'resource "terraform_data" "extra" {}\n'})  # uncommitted
    head = repo.head[:7]
    data = tmp_path / "data"

    result = run_cli("plan", "--repo", str(repo.path), "-p", "infra/db", data_dir=data)

    assert result.returncode == 3, result.stderr
    assert f"at `{head}+dirty`" in result.stdout
    runs = json.loads(run_cli("runs", "--json", data_dir=data).stdout)
    assert runs[0]["commit_sha"].endswith("+dirty")
    assert not list(repo.path.rglob(".terraform")) and not list(repo.path.rglob("*.tfplan"))


# --- progress, tables, version ----------------------------------------------------------


def test_progress_lines_arrive_while_the_plan_runs(tmp_path, sample):
    process = subprocess.Popen(
        [*CLI, "plan", "--repo", str(sample)],
        env=cli_env(tmp_path / "data"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = process.stderr.readline()
        still_running = process.poll() is None
        comment, rest = process.communicate(timeout=300)
    finally:
        process.kill()

    assert first.startswith("note: ")  # the snapshot it plans in, before any plan
    assert still_running
    assert "network: init" in rest and "network: planned +3 ~0 -0" in rest
    assert "### `gitops plan`" in comment  # stdout holds the comment only


def test_runs_is_a_table_with_real_status_names_and_relative_repo_paths(tmp_path, sample):
    data = tmp_path / "data"
    assert "No runs are recorded" in run_cli("runs", data_dir=data).stdout
    run_cli("drift", "--repo", str(sample), "-p", "db", data_dir=data)

    listing = run_cli(
        "runs", "--repo", sample.name, "--limit", "5", data_dir=data, cwd=sample.parent
    )
    table = listing.stdout

    header, row = table.splitlines()[1:3]
    assert header.split()[:5] == ["id", "started", "(UTC)", "status", "command"]
    assert "pending" in row.split() and "drift" in row.split() and "db" in row.split()
    assert str(data) not in table  # the snapshot is named, not its path


def test_locks_is_a_table_or_says_none_are_held(tmp_path):
    assert run_cli("locks", data_dir=tmp_path).stdout.strip() == "No locks are held."
    assert json.loads(run_cli("locks", "--json", data_dir=tmp_path).stdout) == []


def test_version_flag(tmp_path):
    result = run_cli("--version", data_dir=tmp_path)

    assert result.returncode == 0 and result.stdout.startswith("gitops-runner 0.")
