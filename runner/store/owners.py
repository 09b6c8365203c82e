"""Who runs something: `host:pid:start` names a process among all, past and present.

Job leases, scheduler leases and run records carry such an owner, so a restarted
runner can tell at once that the process holding a job or an apply is gone (the
process start time keeps a recycled pid, as after a container restart, from being
mistaken for the old process). An id made by `new_owner_id` is
`host:pid:start:label:nonce.`.
"""

from __future__ import annotations

import os
import re
import socket
import uuid

_OWNER = re.compile(r"^(?P<host>[^:]+):(?P<pid>\d+):(?P<start>\d+):")


def hostname() -> str:
    # Owner ids are split on ":"; a host name never has one, but be safe.
    return socket.gethostname().replace(":", "_") or "localhost"


def process_start(pid: int) -> int:
    """When process `pid` started (clock ticks since boot), or 0 where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return 0
    # Field 2 (the command) is parenthesised and may contain spaces; start time is
    # field 22, the 20th after the closing parenthesis.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])


def process_owner_prefix() -> str:
    """`host:pid:start`: identifies this process among all processes, past and present."""
    pid = os.getpid()
    return f"{hostname()}:{pid}:{process_start(pid)}"


def new_owner_id(prefix: str, label: str) -> str:
    """A lease-owner id unique to one claim.

    The trailing "." ends it, so as a prefix (`JobStore.recover_after_restart`) it
    can match no other id.
    """
    return f"{prefix}:{label}:{uuid.uuid4().hex[:12]}."


def owner_is_gone(owner: str | None) -> bool:
    """True when `owner` names a process of this host that no longer runs.

    False when unsure: another host, an id not made by `new_owner_id`, a pid that runs
    (without /proc, a recycled pid looks alive). The lease then decides.
    """
    match = _OWNER.match(owner or "")
    if match is None or match["host"] != hostname():
        return False
    pid, start = int(match["pid"]), int(match["start"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, under another user
    return start != 0 and process_start(pid) not in (0, start)
