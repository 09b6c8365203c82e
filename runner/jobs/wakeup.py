"""`JobWakeup`: the web processes wake `serve`'s job process when they store a job.

Without it the job process (runner/jobs/job_process.py) could only learn of new jobs by
reading the store over and over: every 50 ms it did, about 20 queries a second per job
process with nothing to do (issue 10). Now it sleeps until a web process has stored a
job, and reads the store once, with a slow poll (`inprocess.DEFAULT_FALLBACK_POLL_S`)
as the safety net.

The channel is an anonymous Unix datagram socket pair, made by `serve` before it forks
(the job process, then gunicorn's workers), so every process of that `serve` inherits
both ends and nothing else can reach them:

- it has no name: no path in the file system, no abstract address, nothing to connect
  or send to; only a process holding the descriptor can write;
- the descriptors are close-on-exec (Python's default), so the programs the runner
  starts (Terraform, git, providers) never hold them;
- a datagram carries nothing but "look": its content is never read, so even a process
  that holds the descriptor can only make the job process read the store once more,
  never run a job that is not in it. Datagrams pending together cost one read.

Why not PostgreSQL's LISTEN/NOTIFY: it works only for PostgreSQL (SQLite needs this
channel anyway), a NOTIFY in the webhook's transaction takes a lock that serialises the
commits of every notifying transaction in the database, and the listener needs a
connection of its own, with reconnects. What it would add, waking the job processes of
other hosts' `serve`s, the fallback poll does within a second: the job process of the
host that received the webhook is woken at once.

A lost wake-up (a full socket buffer: wake-ups are pending anyway; a job process being
restarted) costs at most the fallback poll interval, never a job: the job is in the
store before anyone is woken.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time

# A wake-up says only "look"; whatever a datagram holds is ignored.
_LOOK = b"\x01"
_DRAIN_BYTES = 64


class JobWakeup:
    """Both ends of the channel; `notify` in the web processes, `wait` in the job process."""

    def __init__(self, receiver: socket.socket, sender: socket.socket) -> None:
        """`receiver` and `sender`: the two ends of a `socketpair` (see `JobWakeup.pair`)."""
        self._receiver = receiver
        self._sender = sender
        # Never block a webhook: a full buffer means wake-ups are pending already.
        self._sender.setblocking(False)
        self._receiver.setblocking(False)

    @classmethod
    def pair(cls) -> JobWakeup:
        """A new private channel: make it before forking the processes that share it."""
        receiver, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        return cls(receiver, sender)

    def notify(self) -> None:
        """Wake the job process (it reads the store once). Never raises, never blocks:
        a wake-up that cannot be sent costs the fallback poll interval, not the job."""
        with contextlib.suppress(OSError):  # BlockingIOError (full), or closed
            self._sender.send(_LOOK)

    def wait(self, timeout: float) -> bool:
        """Block until woken or `timeout` s passed; True if woken. Every wake-up pending
        is consumed: a burst of them is one look at the store."""
        try:
            readable, _, _ = select.select([self._receiver], [], [], timeout)
        except (OSError, ValueError):
            # Closed: sleep as the fallback poll would, never spin.
            time.sleep(timeout)
            return False
        return bool(readable) and self._drain()

    def close(self) -> None:
        self._receiver.close()
        self._sender.close()

    def _drain(self) -> bool:
        woken = False
        while True:
            try:
                self._receiver.recv(_DRAIN_BYTES)
            except OSError:  # BlockingIOError: nothing more pending
                return woken
            woken = True
