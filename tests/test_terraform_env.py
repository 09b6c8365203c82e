"""What a pull request's Terraform code can reach: its environment, its logs, its binary.

Each test is an attack from a PR: code Terraform runs (a `local-exec` provisioner)
dumps its environment or prints a secret, or the repo config names a "version"
that is a path or shell syntax. Real Terraform, built the way the server builds it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.config.errors import ConfigError
from runner.config.loader import load_repo_config
from runner.engine.planner import build_terraform_factory
from runner.results.masking import REDACTED, Masker
from runner.settings import load_settings
from runner.terraform import Terraform, TerraformNotFoundError, embedded_terraform, locate_terraform
from runner.terraform.environment import cores_env, cpu_share, terraform_environment
from runner.terraform.process import _LineBuffer, _LogSink
from tests.support.git_repo import GitRepo

REAL_TERRAFORM = Path("/usr/local/bin/terraform")

RUNNER_SECRETS = {
    "GITOPS_GITHUB_TOKEN": "ghp_leakedGithubToken0001",
    "GITOPS_GITHUB_WEBHOOK_SECRET": "leaked-webhook-secret-0002",
    "GITOPS_SLACK_WEBHOOK_URL": "https://hooks.slack.test/services/T0/B0/leakedSlack0003",
    "GITOPS_DATABASE_URL": "postgresql://runner:leakedDbPassword0004@db.test/gitops",
}

DUMP_ENV_TF = """
resource "terraform_data" "dump" {
  provisioner "local-exec" {
    command = "env > env.dump"
  }
}
"""

# The deploy key reaches Terraform as a variable, shows in the plan and is echoed at apply.
PRINT_SECRET_TF = """
variable "deploy_key" {
  type = string
}

resource "terraform_data" "print" {
  input = var.deploy_key
  provisioner "local-exec" {
    command = "echo \\"deploying with $TF_VAR_deploy_key\\""
  }
}
"""


def _embedded_bin() -> str:
    (script,) = embedded_terraform().argv  # the installed `gitops-terraform` console script
    return script


BINARIES = [
    pytest.param(_embedded_bin, id="embedded"),
    pytest.param(
        lambda: str(REAL_TERRAFORM),
        id="binary",
        marks=pytest.mark.skipif(not REAL_TERRAFORM.is_file(), reason="no terraform binary"),
    ),
]


def _server_terraform(tmp_path: Path, terraform_bin: str) -> Terraform:
    """The Terraform the server would use, from settings read from this environment."""
    settings = load_settings(data_dir=tmp_path / "data", terraform_bin=terraform_bin)
    return build_terraform_factory(settings)(None)


def _apply(terraform: Terraform, workdir: Path, log: Path | None = None) -> None:
    assert terraform.init(workdir, log=log).ok
    planned = terraform.plan(workdir, Path("p.tfplan"), log=log)
    assert planned.exit_code == 2, planned.stderr
    applied = terraform.apply(workdir, Path("p.tfplan"), log=log)
    assert applied.ok, applied.stderr


def _project(tmp_path: Path, tf: str) -> Path:
    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / "main.tf").write_text(tf)
    return workdir


def _dumped_env(workdir: Path) -> dict[str, str]:
    lines = (workdir / "env.dump").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


# --- row 2: Terraform's environment is an allowlist --------------------------------------


@pytest.mark.parametrize("terraform_bin", BINARIES)
def test_local_exec_in_a_pr_sees_no_runner_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, terraform_bin: Callable[[], str]
):
    for name, value in RUNNER_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GITOPS_TERRAFORM_ENV_PASSTHROUGH", "AWS_*,GITOPS_*,GITOPS_GITHUB_TOKEN")
    monkeypatch.setenv("AWS_REGION", "eu-test-1")
    monkeypatch.setenv("UNLISTED_SECRET", "not-for-terraform")
    workdir = _project(tmp_path, DUMP_ENV_TF)

    _apply(_server_terraform(tmp_path, terraform_bin()), workdir)

    dump = (workdir / "env.dump").read_text()
    env = _dumped_env(workdir)
    assert not [name for name in env if name.upper().startswith("GITOPS_")]
    assert not [value for value in RUNNER_SECRETS.values() if value in dump]
    assert "not-for-terraform" not in dump
    assert env["AWS_REGION"] == "eu-test-1"  # listed in the passthrough
    assert env["TF_IN_AUTOMATION"] == "1"
    assert "PATH" in env and "HOME" in env


def test_the_allowlist_keeps_what_terraform_needs_and_never_gitops():
    environ = {
        "PATH": "/bin",
        "https_proxy": "http://proxy:3128",
        "SSL_CERT_FILE": "/etc/ca.pem",
        "LC_ALL": "C.UTF-8",
        "TF_LOG": "INFO",
        "ARM_CLIENT_ID": "arm",
        "AWS_PROFILE": "ci",
        "GITOPS_SLACK_BOT_TOKEN": "xoxb-1",
        "gitops_lowercase": "x",
        "SLACK_TOKEN": "xoxb-2",
    }

    env = terraform_environment(
        environ, ["ARM_*", "AWS_PROFILE", "GITOPS_*"], {"GITOPS_FROM_CODE": "y", "AWS_X": "z"}
    )

    assert env == {
        "PATH": "/bin",
        "https_proxy": "http://proxy:3128",
        "SSL_CERT_FILE": "/etc/ca.pem",
        "LC_ALL": "C.UTF-8",
        "TF_LOG": "INFO",
        "ARM_CLIENT_ID": "arm",
        "AWS_PROFILE": "ci",
        "AWS_X": "z",
    }


def test_operator_tf_settings_still_reach_terraform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    cli_config = tmp_path / "operator.tfrc"
    cli_config.write_text("")
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(cli_config))

    terraform = _server_terraform(tmp_path, _embedded_bin())

    assert terraform.cli_config_file == cli_config
    assert terraform.env["TF_CLI_CONFIG_FILE"] == str(cli_config)


def test_terraform_runs_with_a_batch_gc_under_a_memory_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    workdir = _project(tmp_path, DUMP_ENV_TF)
    settings = load_settings(data_dir=tmp_path / "data", parallelism=3)

    _apply(build_terraform_factory(settings)(None), workdir)

    env = _dumped_env(workdir)  # what Terraform passes on to the code it runs, too
    assert env["GOGC"] == "400"
    share = int(env["GOMEMLIMIT"].removesuffix("MiB"))
    memory_mib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1 << 20)
    assert 0 < share <= memory_mib // 4  # 3 plans and the runner share the machine


def _passed_and_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> tuple[Terraform, Terraform]:
    """A Terraform the operator passes `name=value` through to, and one built with
    GITOPS_TERRAFORM_GOGC=0 (Go's runtime left to Go) without it."""
    with monkeypatch.context() as operator:
        operator.setenv(name, value)
        operator.setenv("GITOPS_TERRAFORM_ENV_PASSTHROUGH", name)
        passed = build_terraform_factory(load_settings(data_dir=tmp_path / "data"))(None)
    untouched = load_settings(data_dir=tmp_path / "data", terraform_gogc=0)
    return passed, build_terraform_factory(untouched)(None)


def test_the_operators_go_settings_win_and_zero_leaves_go_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    passed, left_alone = _passed_and_left_alone(tmp_path, monkeypatch, "GOGC", "150")

    assert passed.env["GOGC"] == "150"
    assert "GOGC" not in left_alone.env and "GOMEMLIMIT" not in left_alone.env


@pytest.mark.parametrize(
    ("at_once", "cores", "expected"), [(8, 2, "1"), (2, 2, "1"), (1, 2, "2"), (3, 8, "2")]
)
def test_a_cpu_share_divides_the_cores_among_the_plans_at_once(
    at_once: int, cores: int, expected: str
):
    assert cores_env() == {}
    with cpu_share(at_once, cores):
        assert cores_env() == {"GOMAXPROCS": expected}
    assert cores_env() == {}


def test_terraform_of_a_batch_runs_with_its_share_of_the_cores(tmp_path: Path):
    workdir = _project(tmp_path, DUMP_ENV_TF)
    terraform = build_terraform_factory(load_settings(data_dir=tmp_path / "data"))(None)

    with cpu_share(processes_at_once=2, cores=2):
        _apply(terraform, workdir)

    assert _dumped_env(workdir)["GOMAXPROCS"] == "1"


def test_the_operators_gomaxprocs_wins_and_zero_gogc_leaves_it_to_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    passed, left_alone = _passed_and_left_alone(tmp_path, monkeypatch, "GOMAXPROCS", "3")
    operator_dir, untouched_dir = tmp_path / "operator", tmp_path / "untouched"
    for workdir in (operator_dir, untouched_dir):
        workdir.mkdir()
        (workdir / "main.tf").write_text(DUMP_ENV_TF)

    with cpu_share(processes_at_once=2, cores=2):
        _apply(passed, operator_dir)
        _apply(left_alone, untouched_dir)

    assert _dumped_env(operator_dir)["GOMAXPROCS"] == "3"
    assert "GOMAXPROCS" not in _dumped_env(untouched_dir)


# --- row 13: logs are masked before they are written -------------------------------------


def test_a_secret_printed_by_terraform_never_reaches_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    secret = "deploy-key-s3cr3t-0005"
    monkeypatch.setenv("TF_VAR_deploy_key", secret)
    monkeypatch.setenv("GITOPS_SECRET_ENV_VARS", "TF_VAR_deploy_key")
    monkeypatch.setenv("GITOPS_GITHUB_TOKEN", RUNNER_SECRETS["GITOPS_GITHUB_TOKEN"])
    workdir = _project(tmp_path, PRINT_SECRET_TF)
    log = tmp_path / "logs" / "run.log"
    terraform = _server_terraform(tmp_path, _embedded_bin())

    _apply(terraform, workdir, log)
    shown = terraform.plan(
        workdir, Path("again.tfplan"), extra_args=["-replace=terraform_data.print"]
    )

    text = log.read_text()
    assert secret in shown.stdout  # Terraform did print it (plan and provisioner output)
    assert secret not in text
    assert f'input  = "{REDACTED}"' in text  # the plan, at plan time
    assert f"deploying with {REDACTED}" in text  # the local-exec output, at apply time


def test_a_secret_split_across_reads_is_masked_in_the_log(tmp_path: Path):
    secret = "split-secret-0006"
    log = tmp_path / "split.log"
    lines = _LineBuffer()

    with _LogSink(log, Masker.from_secrets([secret]).mask) as sink:
        sink.write(lines.feed(b"first line\ntoken: split-se"))
        sink.write(lines.feed(b"cret-0006 and more"))
        sink.write(lines.feed(b"\nlast, no newline: split-secret"))
        sink.write(lines.feed(b"-0006"))
        sink.write(lines.rest())

    assert log.read_text() == (
        f"first line\ntoken: {REDACTED} and more\nlast, no newline: {REDACTED}"
    )


# --- row 15: terraform_version is a version, not a path or a command --------------------


@pytest.mark.parametrize("version", ["1.5.0; rm -rf /", "../../bin/sh", "1.5.0/../sh", "latest"])
def test_a_terraform_version_that_is_not_a_version_is_a_config_error(tmp_path: Path, version: str):
    repo = GitRepo.init(tmp_path / "repo")
    config = f"version: 1\nprojects:\n  - dir: app\n    terraform_version: {version!r}\n"
    repo.write({"app/main.tf": DUMP_ENV_TF, "gitops-runner.yaml": config})
    repo.commit("config")

    with pytest.raises(ConfigError) as caught:
        load_repo_config(repo.path)

    assert str(caught.value).startswith(
        f"gitops-runner.yaml:4: projects[0].terraform_version: {version!r} is not a plain"
    )


@pytest.mark.parametrize("version", ["1.5.7", "1.6.0-beta1", "v1.5.7"])
def test_plain_terraform_versions_are_accepted(tmp_path: Path, version: str):
    repo = GitRepo.init(tmp_path / "repo")
    config = f"version: 1\nprojects:\n  - dir: app\n    terraform_version: {version}\n"
    repo.write({"app/main.tf": DUMP_ENV_TF, "gitops-runner.yaml": config})
    repo.commit("config")

    (project,) = load_repo_config(repo.path).projects
    assert project.terraform_version == version


def test_locate_refuses_a_version_that_is_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # `terraform../../bin/sh` resolves to ./bin/sh once a `terraform..` directory exists.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "terraform..").mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sh").symlink_to("/bin/sh")

    with pytest.raises(TerraformNotFoundError, match="not a plain Terraform version"):
        locate_terraform(None, "../../bin/sh", search_path=str(tmp_path / "bin"))
    with pytest.raises(TerraformNotFoundError):
        locate_terraform(None, "1.5.0; rm -rf /", search_path=str(tmp_path / "bin"))
