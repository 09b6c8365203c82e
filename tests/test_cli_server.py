"""The CLI server (runner/cli_server): `gitops-runner` as installed hands a command to a
server that has done the imports, and the command behaves exactly as when run cold.

Every test runs the real launcher in a subprocess with a private XDG_RUNTIME_DIR, so
each test has servers of its own; removing that directory stops them (a server leaves
within seconds of losing its socket).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.cli_server.client import wanted
from runner.cli_server.protocol import (
    Request,
    code_fingerprint,
    receive_int,
    send_request,
    socket_path,
    subcommand,
    superseded,
)
from runner.store.db import head_revision
from tests.support.cli import cli_env, copy_sample, run_cli

LAUNCHER = [sys.executable, "-c", "from runner.cli_server.client import main; main()"]
SERVED = "debug: served by the CLI server"


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    # Short: a Unix socket's path holds 107 bytes, fewer than pytest's tmp_path leaves.
    directory = Path(tempfile.mkdtemp(prefix="gr-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)  # its servers exit within seconds


def launch(
    *args: str, data_dir: Path, runtime_dir: Path, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    environment = cli_env(
        data_dir, XDG_RUNTIME_DIR=str(runtime_dir), GITOPS_CLI_SERVER="true", **env
    )
    environment.pop("CI", None)
    return subprocess.run(
        [*LAUNCHER, *args], env=environment, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def server_socket(runtime_dir: Path, timeout_s: float = 60.0) -> Path:
    """The socket of the server the first command started, once it listens."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sockets = list((runtime_dir / "gitops-runner").glob("*.sock"))
        if sockets:
            return sockets[0]
        time.sleep(0.1)
    logs = [p.read_text() for p in (runtime_dir / "gitops-runner").glob("*.log")]
    raise AssertionError(f"no CLI server started: {logs}")


def served_plan(sample: Path, data_dir: Path, runtime_dir: Path, *extra: str):
    return launch(
        "--debug", "plan", "--repo", str(sample), *extra, data_dir=data_dir, runtime_dir=runtime_dir
    )


def test_a_second_command_is_served_and_answers_as_the_first(tmp_path, runtime_dir):
    sample = copy_sample(tmp_path)

    cold = served_plan(sample, tmp_path / "data", runtime_dir)
    server_socket(runtime_dir)
    warm = served_plan(sample, tmp_path / "data", runtime_dir)

    assert SERVED not in cold.stderr
    assert SERVED in warm.stderr, warm.stderr
    assert cold.returncode == warm.returncode == 3, warm.stderr
    for project in ("network", "app", "app-staging", "db"):
        assert f"`{project}`" in cold.stdout and f"`{project}`" in warm.stdout
    assert "s3cr3t-example-password" not in warm.stdout
    assert warm.stdout.count("Plan:") == cold.stdout.count("Plan:")


def test_each_command_runs_in_its_callers_directory_and_environment(tmp_path, runtime_dir):
    sample = copy_sample(tmp_path)
    launch("version", data_dir=tmp_path / "data-a", runtime_dir=runtime_dir)
    server_socket(runtime_dir)

    planned = launch(
        "--debug",
        "plan",
        "--repo",
        ".",
        data_dir=tmp_path / "data-a",
        runtime_dir=runtime_dir,
        cwd=sample,
    )
    runs_a = launch("runs", "--json", data_dir=tmp_path / "data-a", runtime_dir=runtime_dir)
    runs_b = launch("runs", "--json", data_dir=tmp_path / "data-b", runtime_dir=runtime_dir)

    assert SERVED in planned.stderr and planned.returncode == 3, planned.stderr
    assert len(json.loads(runs_a.stdout)) == 4  # recorded in the caller's GITOPS_DATA_DIR
    assert json.loads(runs_b.stdout) == []


def test_exit_codes_and_usage_errors_come_back_unchanged(tmp_path, runtime_dir):
    launch("version", data_dir=tmp_path / "data", runtime_dir=runtime_dir)
    server_socket(runtime_dir)

    bad = launch("--debug", "plan", "--no-such-option", data_dir=tmp_path, runtime_dir=runtime_dir)
    missing = launch(
        "plan", "--repo", str(tmp_path / "nowhere"), data_dir=tmp_path, runtime_dir=runtime_dir
    )

    assert SERVED in bad.stderr
    assert bad.returncode == 2 and "No such option" in bad.stderr
    assert missing.returncode == 2 and "nowhere" in missing.stderr


@pytest.mark.parametrize("layout", ["open to others", "a symlink", "a file"])
def test_a_socket_directory_others_could_reach_is_never_used(tmp_path, runtime_dir, layout):
    place = runtime_dir / "gitops-runner"
    if layout == "open to others":
        place.mkdir(mode=0o755)
        place.chmod(0o755)
    elif layout == "a symlink":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        place.symlink_to(elsewhere)
    else:
        place.write_text("")

    first = launch("version", data_dir=tmp_path / "data", runtime_dir=runtime_dir)
    second = launch("--debug", "version", data_dir=tmp_path / "data", runtime_dir=runtime_dir)

    assert first.returncode == second.returncode == 0
    assert "warning: not using a CLI server" in second.stderr
    assert SERVED not in second.stderr
    assert not list(tmp_path.rglob("*.sock"))


SYSTEM_PYTHON = Path("/usr/bin/python3")  # one a stranger may run (not under /root)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs /usr/bin/python3")
def test_another_user_who_reaches_the_socket_gets_no_command_run(tmp_path):
    runtime_dir = Path(tempfile.mkdtemp(prefix="gitops-stranger-"))  # outside tmp_path (0700)
    try:
        launch("version", data_dir=tmp_path / "data", runtime_dir=runtime_dir)
        path = server_socket(runtime_dir)
        for directory in (runtime_dir, path.parent):  # a mistake that lets a stranger in
            directory.chmod(0o711)
        path.chmod(0o777)
        marker = runtime_dir / "ran"
        stranger = (
            "import os, socket, sys\n"
            "from runner.cli_server.protocol import Request, receive_int, send_request\n"
            "conn = socket.socket(socket.AF_UNIX); conn.connect(sys.argv[1])\n"
            "cwd = os.open('/', os.O_RDONLY)\n"
            f"request = Request(['db', 'upgrade'], {{'GITOPS_DATA_DIR': {str(marker)!r}}})\n"
            "try:\n"
            "    send_request(conn, request, [0, 1, 2, cwd])\n"
            "except OSError:\n"
            "    pass\n"
            "print(receive_int(conn))\n"
        )

        answer = subprocess.run(
            [str(SYSTEM_PYTHON), "-c", stranger, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            user=65534,
            cwd="/",
            env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )

        assert answer.stdout.strip() == "None", answer.stderr  # no pid: nothing started
        assert not marker.exists()
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)


def test_a_server_runs_only_the_short_commands_even_when_asked_directly(tmp_path, runtime_dir):
    """`serve` (a long-running server) is never run in a fork of the CLI server, even by
    a caller that skips the launcher and speaks the protocol itself."""
    launch("version", data_dir=tmp_path / "data", runtime_dir=runtime_dir)
    path = server_socket(runtime_dir)
    read_err, write_err = os.pipe()
    cwd = os.open("/", os.O_RDONLY)
    with socket.socket(socket.AF_UNIX) as connection:
        connection.connect(str(path))
        request = Request(["serve"], {"GITOPS_DATA_DIR": str(tmp_path / "data")})
        send_request(connection, request, [0, 1, write_err, cwd])
        os.close(write_err)
        os.close(cwd)
        pid = receive_int(connection)
        status = receive_int(connection)
    with os.fdopen(read_err) as stderr:
        said = stderr.read()

    assert pid is not None and status == 2
    assert "a CLI server runs only" in said


def test_an_idle_server_leaves_and_takes_its_socket_with_it(tmp_path, runtime_dir):
    launch(
        "version", data_dir=tmp_path / "data", runtime_dir=runtime_dir, GITOPS_CLI_SERVER_IDLE="1"
    )
    path = server_socket(runtime_dir)

    deadline = time.monotonic() + 60
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)

    assert not path.exists()


def test_a_caller_that_closes_its_stdin_still_gets_its_command_run(tmp_path, runtime_dir):
    launch("version", data_dir=tmp_path / "data", runtime_dir=runtime_dir)
    server_socket(runtime_dir)
    env = cli_env(tmp_path / "data", XDG_RUNTIME_DIR=str(runtime_dir), GITOPS_CLI_SERVER="true")

    closed = subprocess.run(
        ["bash", "-c", '"$@" <&-', "launch", *LAUNCHER, "--debug", "version"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert closed.returncode == 0, closed.stderr
    assert SERVED in closed.stderr and "gitops-runner" in closed.stdout


@pytest.mark.parametrize("served", [True, False], ids=["served", "cold"])
def test_ctrl_c_cancels_the_plan_and_records_it(tmp_path, runtime_dir, served):
    """A plan waiting on a backend that never answers is cancelled by Ctrl-C on the
    caller (Terraform, in a session of its own, is interrupted by the runner), the run is
    recorded as cancelled, and a server keeps serving."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    project = tmp_path / "hanging"
    project.mkdir()
    (project / "main.tf").write_text(
        'data "terraform_remote_state" "slow" {\n  backend = "http"\n'
        f'  config = {{ address = "http://127.0.0.1:{port}/state" }}\n}}\n'
    )
    launch("version", data_dir=tmp_path / "data", runtime_dir=runtime_dir)
    server_socket(runtime_dir)
    env = cli_env(
        tmp_path / "data",
        XDG_RUNTIME_DIR=str(runtime_dir),
        GITOPS_CLI_SERVER=str(served).lower(),
    )
    env.pop("CI", None)

    with silent:
        caller = subprocess.Popen(
            [*LAUNCHER, "--debug", "plan", "--repo", str(project), "--no-progress"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        waiting, _ = silent.accept()  # Terraform is now waiting for the state
        caller.send_signal(signal.SIGINT)
        try:
            _out, err = caller.communicate(timeout=120)
        finally:
            caller.kill()
            waiting.close()

    assert (SERVED in err) is served
    assert "interrupted: cancelling the running plans" in err
    assert caller.returncode == 1
    runs = launch("runs", "--json", data_dir=tmp_path / "data", runtime_dir=runtime_dir)
    assert "cancelled" in runs.stdout, runs.stdout
    again = launch("--debug", "version", data_dir=tmp_path / "data", runtime_dir=runtime_dir)
    assert SERVED in again.stderr and again.returncode == 0


def test_a_served_first_command_gets_its_database_from_the_servers_migrated_schema(
    tmp_path, runtime_dir
):
    """A new data dir's database is the server's migrated in-memory schema written to
    the file (no migration in the command), and is then used like any other."""
    sample = copy_sample(tmp_path)
    data = tmp_path / "data"
    launch("version", data_dir=data, runtime_dir=runtime_dir)
    server_socket(runtime_dir)

    planned = served_plan(sample, data, runtime_dir)
    runs = launch("runs", "--json", data_dir=data, runtime_dir=runtime_dir)

    assert SERVED in planned.stderr and planned.returncode == 3, planned.stderr
    assert "from the migrated schema" in planned.stderr
    assert "Running upgrade" not in planned.stderr
    assert not (data / "gitops-runner.db.migrate.lock").exists()  # migrate() never ran
    assert len(json.loads(runs.stdout)) == 4
    checked = run_cli("db", "current", data_dir=data)  # a cold process reads it
    head = head_revision()
    assert checked.returncode == 0, checked.stderr
    assert f"current: {head}  head: {head}" in checked.stdout


def test_served_commands_racing_in_a_new_data_dir_all_get_one_database(tmp_path, runtime_dir):
    data = tmp_path / "data"
    launch("version", data_dir=tmp_path / "other", runtime_dir=runtime_dir)
    server_socket(runtime_dir)
    env = cli_env(data, XDG_RUNTIME_DIR=str(runtime_dir), GITOPS_CLI_SERVER="true")
    env.pop("CI", None)

    callers = [
        subprocess.Popen(
            [*LAUNCHER, "--debug", "runs", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    answers = [caller.communicate(timeout=120) for caller in callers]

    assert [caller.returncode for caller in callers] == [0] * 4, answers
    assert all(SERVED in err and json.loads(out) == [] for out, err in answers)
    assert sum("from the migrated schema" in err for _, err in answers) <= 1
    assert sorted(p.name for p in data.glob("*gitops-runner.db*")) <= [
        "gitops-runner.db",
        "gitops-runner.db-shm",
        "gitops-runner.db-wal",
        "gitops-runner.db.migrate.lock",
    ]
    checked = run_cli("db", "current", data_dir=data)
    head = head_revision()
    assert checked.returncode == 0, checked.stderr
    assert f"current: {head}  head: {head}" in checked.stdout


# ---- the parts, without processes ---------------------------------------------------------


def test_new_code_at_the_same_place_gets_a_new_server(tmp_path):
    package = tmp_path / "runner"
    package.mkdir()
    module = package / "module.py"
    module.write_text("A = 1\n")
    before = code_fingerprint(package, {})

    module.write_text("A = 22\n")
    edited = code_fingerprint(package, {})
    (package / "new.py").write_text("")
    added = code_fingerprint(package, {})

    assert len({before, edited, added}) == 3
    assert code_fingerprint(package, {"PYTHONPATH": "/elsewhere"}) != added
    assert code_fingerprint(package, {"UNRELATED": "x"}) == added
    old, new = socket_path(tmp_path, package, before), socket_path(tmp_path, package, added)
    other_place = socket_path(tmp_path, tmp_path / "other", before)
    assert old and new and other_place
    for path in (old, new, other_place):
        path.touch()
    assert superseded(new) == [old]


def test_only_short_commands_are_served_and_ci_runs_cold_unless_asked():
    assert subcommand(["--config", "plan", "runs", "-p", "x"]) == "runs"
    assert wanted(["--debug", "plan"], {})
    assert not wanted(["serve"], {})
    assert not wanted(["worker"], {})
    assert not wanted(["reconcile", "--once"], {})
    assert not wanted(["--help"], {})
    assert not wanted(["plan"], {"GITOPS_CLI_SERVER": "false"})
    assert not wanted(["plan"], {"CI": "true"})
    assert wanted(["plan"], {"CI": "true", "GITOPS_CLI_SERVER": "true"})


def test_a_request_travels_with_its_descriptors():
    left, right = socket.socketpair(socket.AF_UNIX)
    read_end, write_end = os.pipe()
    with left, right:
        send_request(left, Request(["plan", "-p", "x"], {"A": "1"}), [read_end, 1, 2, write_end])
        from runner.cli_server.protocol import receive_request

        request, fds = receive_request(right)
        os.write(fds[3], b"through")
        assert os.read(read_end, 7) == b"through"
        for fd in (*fds, read_end, write_end):
            os.close(fd)
        left.close()
        assert receive_int(right) is None
    assert request.argv == ["plan", "-p", "x"] and request.env == {"A": "1"}
