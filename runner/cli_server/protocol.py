"""What the `gitops-runner` launcher and its CLI server agree on.

Where the server listens (a private directory of this user's), which code it serves
(the fingerprint in its socket's name), and the one request a connection carries: the
command line, the environment, and the caller's standard streams and working directory
as file descriptors. Only the standard library is imported here: the launcher loads
this module on every command, before anything else.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import struct
import sys
from pathlib import Path

# The commands a server runs: short ones a person types again and again. `serve`,
# `worker` and `reconcile` (a loop) run in the process that was started for them, so a
# supervisor sees and signals the process doing the work.
SERVED_COMMANDS = frozenset({"plan", "runs", "locks", "drift", "policy", "version", "token"})
# Global options of `gitops-runner` that take a value (see runner/cli.py).
_OPTIONS_WITH_VALUE = frozenset({"--config"})
# The longest path a Unix socket address holds on Linux (sun_path, with its NUL).
_MAX_SOCKET_PATH = 107
_HEADER = struct.Struct("!I")
_STATUS = struct.Struct("!i")
# The caller's stdin, stdout, stderr and working directory, in this order.
PASSED_FDS = 4
# Environment variables read while modules are imported (the interpreter's own, and
# GitPython's at `import git`): a server started under other values serves other code.
_IMPORT_TIME_ENV = ("PYTHON", "GIT_PYTHON_")


class NotPrivate(Exception):
    """The socket directory could be reached by someone else: no server is used."""


class Request:
    """One command: its arguments (after `gitops-runner`) and the caller's environment.
    (A plain class: `dataclasses` would cost the launcher the import of `inspect`.)"""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.env = env


def subcommand(argv: list[str]) -> str | None:
    """The command `gitops-runner` was asked to run (`plan` in `--debug plan -p x`)."""
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg in _OPTIONS_WITH_VALUE:
            skip_value = True
        elif not arg.startswith("-"):
            return arg
    return None


def socket_dir(env: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    """This user's directory for server sockets: under XDG_RUNTIME_DIR (private by
    definition) when set, else a per-user directory in the temporary directory."""
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "gitops-runner"
    return Path(env.get("TMPDIR") or "/tmp") / f"gitops-runner-{os.getuid()}"


def private_dir(path: Path) -> Path:
    """`path`, created if missing, after checking nobody else can reach what is inside.

    A directory another user made first (in /tmp anyone can), a symbolic link, or one
    others may enter is refused: whoever controls it could answer in the server's
    place and read the environment a command sends."""
    try:
        path.mkdir(mode=0o700, parents=False)
    except FileExistsError:
        pass
    except OSError as error:
        raise NotPrivate(f"{path}: {error.strerror}") from error
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise NotPrivate(f"{path} is not a directory")
    if info.st_uid != os.getuid():
        raise NotPrivate(f"{path} belongs to another user (uid {info.st_uid})")
    if info.st_mode & 0o077:
        raise NotPrivate(f"{path} may be entered by others (mode {stat.S_IMODE(info.st_mode):o})")
    return path


def import_path() -> list[str]:
    """This interpreter's import path without the current directory (`python -c` puts
    it first): a server serves every directory, so it never imports from one."""
    return [entry for entry in sys.path if os.path.isabs(entry)]


def code_fingerprint(package_dir: Path, env: dict[str, str] | os._Environ[str]) -> str:
    """What the imported code depends on: the interpreter, the import path (and when
    anything was installed into it), every file of the runner package, and the variables
    read at import. A server only serves the fingerprint it was started with, so an
    upgrade or an edit is never answered by the code that was loaded before it."""
    digest = hashlib.sha256()
    searched = import_path()
    for part in (sys.executable, sys.version, *searched):
        digest.update(part.encode() + b"\0")
    for entry in searched:
        digest.update(_stat_line(Path(entry)))
    for directory, subdirs, files in os.walk(package_dir):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
        for name in sorted(files):
            digest.update(_stat_line(Path(directory, name)))
    for name in sorted(env):
        if name.startswith(_IMPORT_TIME_ENV):
            digest.update(f"{name}={env[name]}\0".encode())
    return digest.hexdigest()[:20]


def _stat_line(path: Path) -> bytes:
    try:
        info = os.stat(path)
    except OSError:
        return f"{path}:-\0".encode()
    return f"{path}:{info.st_mtime_ns}:{info.st_size}\0".encode()


def socket_path(directory: Path, package_dir: Path, fingerprint: str) -> Path | None:
    """The server's address for this code; None when too long for a Unix socket.

    Named by where the package is installed, then by the fingerprint of what is there
    now, so the servers of older code at the same place can be found (`superseded`)."""
    path = directory / f"{_place(package_dir)}-{fingerprint}.sock"
    return path if len(os.fsencode(path)) <= _MAX_SOCKET_PATH else None


def superseded(path: Path) -> list[Path]:
    """Sockets of servers for older code installed at the same place as `path`'s."""
    place = path.name.split("-", 1)[0]
    return [other for other in path.parent.glob(f"{place}-*.sock") if other != path]


def _place(package_dir: Path) -> str:
    return hashlib.sha256(os.fsencode(package_dir)).hexdigest()[:8]


def peer_uid(connection: socket.socket) -> int:
    """The user id of the process at the other end (the kernel's word, not the peer's)."""
    creds = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def send_request(connection: socket.socket, request: Request, fds: list[int]) -> None:
    body = json.dumps({"argv": request.argv, "env": request.env}).encode()
    socket.send_fds(connection, [_HEADER.pack(len(body))], fds)
    connection.sendall(body)


def receive_request(connection: socket.socket) -> tuple[Request, list[int]]:
    header, fds, _flags, _address = socket.recv_fds(connection, _HEADER.size, PASSED_FDS)
    if len(header) != _HEADER.size or len(fds) != PASSED_FDS:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("a request without its header or file descriptors")
    body = _receive_exactly(connection, _HEADER.unpack(header)[0])
    data = json.loads(body)
    return Request(argv=list(data["argv"]), env=dict(data["env"])), fds


def send_int(connection: socket.socket, value: int) -> None:
    connection.sendall(_STATUS.pack(value))


def receive_int(connection: socket.socket) -> int | None:
    """The next integer the other end sent; None when it closed the connection first."""
    try:
        data = _receive_exactly(connection, _STATUS.size)
    except ConnectionError:
        return None
    return int(_STATUS.unpack(data)[0])


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = connection.recv(min(remaining, 1 << 16))
        if not chunk:
            raise ConnectionError("the connection closed in the middle of a message")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
