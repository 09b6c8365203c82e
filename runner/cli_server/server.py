"""The CLI server: the runner's modules imported once, a fresh process for each command.

`gitops-runner plan` spends most of a second importing (SQLAlchemy, the config models,
GitPython, the planner) before it does anything. The server does that once, then waits
on a Unix socket in the user's private directory (protocol.py). Each connection is a
command: the server forks, and the child, a copy of a process that has only imported
modules, takes the caller's standard streams, working directory, environment and
arguments and runs `runner.cli.main` exactly as the cold command would. Nothing a
command computes outlives it: each child starts from the same imported state and exits.

Trust: only a process of this user reaches the socket (a 0700 directory, and the
kernel's peer credentials are checked on every connection), the caller checks the
server's the same way, and a server only answers under the code fingerprint it was
started for. It exits after GITOPS_CLI_SERVER_IDLE seconds without a command, or as soon
as its socket is removed or taken over by a newer server.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from runner.cli import SERVED_BY_ENV
from runner.cli_server.protocol import (
    SERVED_COMMANDS,
    peer_uid,
    receive_request,
    send_int,
    subcommand,
)

# What `plan`, `drift`, `runs` and `policy` import: loaded before the first command.
PRELOADED = (
    "runner.cli",
    "runner.settings",
    "runner.engine.local_plan",
    "runner.engine.recording",
    "runner.wiring",
    "runner.drift.scan",
    "runner.console.progress",
    "runner.console.errors",
    "runner.console.tables",
    "runner.observability.logs",
    "sqlalchemy.dialects.sqlite",
    # A database an older gitops-runner made is migrated (a new one is made from the
    # schema template, see _warm_up).
    "alembic.command",
    "alembic.runtime.migration",
)
# How often the server looks whether its socket is still its own.
CHECK_INTERVAL_S = 2.0


def serve(path: Path, idle_s: float) -> None:
    """Answer commands on `path` until idle for `idle_s` or the socket is not ours."""
    for module in PRELOADED:
        importlib.import_module(module)
    _warm_up()
    if threading.active_count() != 1:  # forking a threaded process copies held locks
        raise SystemExit("the CLI server started a thread while importing; not serving")
    gc.collect()
    gc.freeze()  # the children share these pages instead of copying them on first GC
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    listener, inode = _listen(path)
    last_command = time.monotonic()
    while _still_ours(path, inode) and time.monotonic() - last_command < idle_s:
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        last_command = time.monotonic()
        with connection:
            if peer_uid(connection) != os.getuid():
                continue
            if os.fork() == 0:
                listener.close()
                _run_command(connection)  # never returns
    if _still_ours(path, inode):
        path.unlink(missing_ok=True)


def _warm_up() -> None:
    """What every command would repeat and nothing a command brings changes: mapping
    the ORM classes, compiling the comment templates, reading the migrations, and
    migrating an in-memory database whose bytes a command's new SQLite file gets
    (`db.build_schema_template`: a first command in a new data dir does not migrate)."""
    from sqlalchemy.orm import configure_mappers

    from runner.results.render import compile_templates
    from runner.store.db import build_schema_template, migrations

    configure_mappers()
    compile_templates()
    migrations()
    build_schema_template()


def _listen(path: Path) -> tuple[socket.socket, int]:
    """Listen on a new name, then move it over `path`: a caller never meets a socket
    that is not listening yet, and of two servers started at once the later wins."""
    staging = path.with_name(f"{path.name}.{os.getpid()}")
    staging.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(staging))
    os.chmod(staging, 0o600)
    listener.listen(64)
    listener.settimeout(CHECK_INTERVAL_S)
    os.replace(staging, path)
    return listener, os.lstat(path).st_ino


def _still_ours(path: Path, inode: int) -> bool:
    try:
        return os.lstat(path).st_ino == inode
    except FileNotFoundError:
        return False


def _run_command(connection: socket.socket) -> None:
    """In the forked child: become the caller's command, run it, report its exit code."""
    status = 1
    try:
        status = _become_caller_and_run(connection)
    except BaseException:
        traceback.print_exc()
    finally:
        # The caller closes the connection once it has the status: that is no Ctrl-C.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        with contextlib.suppress(OSError):
            send_int(connection, status)
        os._exit(status)


def _become_caller_and_run(connection: socket.socket) -> int:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # subprocess waits for its children
    signal.signal(signal.SIGINT, signal.default_int_handler)
    request, fds = receive_request(connection)
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    os.fchdir(fds[3])
    for fd in fds:
        os.close(fd)
    os.environ.clear()
    os.environ.update(request.env)
    _reopen_standard_streams(request.env)
    send_int(connection, os.getpid())  # the caller forwards Ctrl-C to this process
    threading.Thread(target=_interrupt_when_caller_leaves, args=(connection,), daemon=True).start()
    return _run_cli(request.argv)


def _reopen_standard_streams(env: dict[str, str]) -> None:
    """Python's standard streams over the caller's descriptors, buffered as a process
    started by the caller would have them (line by line on a terminal)."""
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    sys.stdin = open(0, encoding="utf-8", errors="surrogateescape", closefd=False)  # noqa: SIM115
    sys.stdout = open(  # noqa: SIM115
        1, "w", encoding="utf-8", errors="surrogateescape", closefd=False
    )
    sys.stderr = open(  # noqa: SIM115
        2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1
    )
    if unbuffered:
        sys.stdout.reconfigure(write_through=True)
        sys.stderr.reconfigure(write_through=True)


def _interrupt_when_caller_leaves(connection: socket.socket) -> None:
    """A caller that is gone (killed, its terminal closed) cancels its command, as
    Ctrl-C would: plans stop and their locks are released."""
    try:
        while connection.recv(64):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGINT)


def _run_cli(argv: list[str]) -> int:
    from runner.cli import main

    if subcommand(argv) not in SERVED_COMMANDS:  # what the launcher never sends
        print(
            f"error: a CLI server runs only {', '.join(sorted(SERVED_COMMANDS))}", file=sys.stderr
        )
        return 2
    sys.argv = ["gitops-runner", *argv]
    os.environ[SERVED_BY_ENV] = str(os.getppid())  # for `--debug`'s first line
    try:
        main()
    except SystemExit as done:
        return _exit_status(done.code)
    return 0


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def main(args: list[str]) -> None:
    """Started by the launcher (client.py) with the socket's path and the idle seconds."""
    serve(Path(args[0]), float(args[1]))
