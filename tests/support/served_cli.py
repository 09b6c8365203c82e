"""`gitops-runner serve` as an operator starts it: a subprocess configured through the
environment, on a port the OS picked (read from gunicorn's "Listening at" line, in text
or JSON logs alike), its stderr kept for the test to read.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"Listening at: (http://127\.0\.0\.1:\d+)")


class ServedCli:
    """Start with `ServedCli(data_dir, GITOPS_...=...)`; `url`, `stderr`, `stop()`.

    `stdout`: a file for what serve writes there (gunicorn's access log); else dropped.
    """

    def __init__(self, data_dir: Path, stdout: Path | None = None, **env: str) -> None:
        clean = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith("GITOPS_") and name != "PROMETHEUS_MULTIPROC_DIR"
        }
        clean |= {"GITOPS_DATA_DIR": str(data_dir), "GITOPS_HOST": "127.0.0.1", "GITOPS_PORT": "0"}
        sink = stdout.open("wb") if stdout is not None else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "runner", "serve"], cwd=ROOT, env={**clean, **env},
                stdout=sink, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
        finally:
            if stdout is not None:
                sink.close()  # type: ignore[union-attr]  # the child has its own copy
        self._lines: list[str] = []
        self.url = self._read_url()
        # Keep draining stderr, or a full pipe would block the server.
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _read_url(self) -> str:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._lines.append(line)
            if match := _LISTENING.search(line):
                return match.group(1)
        raise AssertionError("serve exited before listening:\n" + "".join(self._lines))

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._lines)

    def stop(self) -> int:
        """SIGTERM, then wait for gunicorn to stop its workers."""
        if self.process.poll() is None:
            self.process.terminate()
        code = self.process.wait(timeout=120)
        self._drainer.join(timeout=10)  # every line written before the exit is read
        return code

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
