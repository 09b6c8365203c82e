"""The `gitops-runner` command as installed: hand the command to a CLI server, or run it.

A person's `plan`, `runs`, `drift`, ... is sent to this user's CLI server for this
code (server.py), which runs it in a process whose imports are already done; when
there is none yet, one is started in the background and this command runs in-process,
as it always did. `serve`, `worker`, `reconcile` and the others always run here.
GITOPS_CLI_SERVER=false turns the server off (it is off by default under CI=true: a CI
machine is thrown away after a few commands); `python -m runner` never uses it.

Only the standard library is imported before the command is handed over: this module
is what every invocation pays.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from runner.cli_server.protocol import (
    SERVED_COMMANDS,
    NotPrivate,
    Request,
    code_fingerprint,
    import_path,
    peer_uid,
    private_dir,
    receive_int,
    send_request,
    socket_dir,
    socket_path,
    subcommand,
    superseded,
)

ENABLED_ENV = "GITOPS_CLI_SERVER"
IDLE_ENV = "GITOPS_CLI_SERVER_IDLE"
DEFAULT_IDLE_S = 900.0
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# What the server process itself needs from the environment: finding programs (GitPython
# runs `git version` when imported) and its locale. Each command brings its own.
_SERVER_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR")
_TRUE = ("1", "true", "yes", "on")
_FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# `python -I` (no current directory, no user site, no PYTHON* variables) on the
# caller's exact import path: a directory the command was started in is never searched.
_SERVER_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from runner.cli_server.server import main; main(sys.argv[2:])"
)


def main() -> None:
    """Console-script entry point."""
    argv = sys.argv[1:]
    if wanted(argv, os.environ):
        status = run_served(argv)
        if status is not None:
            sys.exit(status)
    from runner.cli import main as run_here

    run_here()


def wanted(argv: list[str], env: dict[str, str] | os._Environ[str]) -> bool:
    default = "false" if env.get("CI", "").lower() in _TRUE else "true"
    enabled = env.get(ENABLED_ENV, default).lower() in _TRUE
    return enabled and subcommand(argv) in SERVED_COMMANDS


def run_served(argv: list[str]) -> int | None:
    """The command's exit status from the server; None: run it here (no server yet, or
    none that can be trusted; a new one is started for next time)."""
    try:
        directory = private_dir(socket_dir())
    except NotPrivate as why:
        print(f"warning: not using a CLI server: {why}", file=sys.stderr)
        return None
    path = socket_path(directory, PACKAGE_DIR, code_fingerprint(PACKAGE_DIR, os.environ))
    if path is None:
        return None
    connection = _connect(path)
    if connection is None:
        _start_server(path)
        return None
    with connection:
        if peer_uid(connection) != os.getuid():
            print(f"warning: not using a CLI server: {path} is another user's", file=sys.stderr)
            return None
        return _run_through(connection, argv)


def _connect(path: Path) -> socket.socket | None:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(str(path))
    except OSError:  # none yet, or a server that died and left its socket behind
        connection.close()
        return None
    return connection


def _run_through(connection: socket.socket, argv: list[str]) -> int | None:
    fds = [_usable(fd) for fd in (0, 1, 2)] + [os.open(".", os.O_RDONLY | os.O_DIRECTORY)]
    try:
        send_request(connection, Request(argv=argv, env=dict(os.environ)), fds)
    except OSError:
        return None
    finally:
        for fd in fds:
            if fd > 2:
                os.close(fd)
    pid = receive_int(connection)
    if pid is None:  # the server took the request but never started the command
        return None
    for number in _FORWARDED_SIGNALS:
        signal.signal(number, _forward_to(pid))
    status = receive_int(connection)
    if status is None:
        print(f"error: the command's process ({pid}) ended without an exit status", file=sys.stderr)
        return 1
    return status


def _usable(fd: int) -> int:
    """`fd` itself, or /dev/null in its place when the caller closed it (`<&-`)."""
    try:
        os.fstat(fd)
    except OSError:
        return os.open(os.devnull, os.O_RDWR)
    return fd


def _forward_to(pid: int) -> Callable[[int, object], None]:
    def forward(number: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, number)

    return forward


def _start_server(path: Path) -> None:
    """A server for this code, in the background, for the next command; servers of the
    code that was here before lose their socket, and so stop within seconds."""
    import json
    import subprocess

    for older in superseded(path):
        older.unlink(missing_ok=True)
        older.with_suffix(".log").unlink(missing_ok=True)

    idle = os.environ.get(IDLE_ENV) or str(DEFAULT_IDLE_S)
    log = path.with_suffix(".log")
    with open(log, "wb", opener=_private_opener) as log_file:
        subprocess.Popen(
            [sys.executable, "-I", "-c", _SERVER_BOOT, json.dumps(import_path()), str(path), idle],
            cwd="/",
            env={
                name: value
                for name, value in os.environ.items()
                if name in _SERVER_ENV or name.startswith("GIT_PYTHON_")
            },
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
            close_fds=True,
        )


def _private_opener(file: str, flags: int) -> int:
    return os.open(file, flags, 0o600)
