"""The one error a repository configuration can fail with.

A broken config is a user mistake in a pull request, so the message must point at
the exact file and line, like a compiler error, and never be a traceback.
"""

from __future__ import annotations


class ConfigError(Exception):
    """A repository configuration that cannot be used, located by file and line.

    `str()` reads like ``gitops-runner.yaml:12: projects[1].dir: '../x' escapes the
    repository``; parts that are unknown (no line, no key path) are left out.
    """

    def __init__(self, file: str, line: int | None, reason: str, path: str | None = None) -> None:
        self.file = file
        self.line = line
        self.path = path
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        what = f"{self.path}: {self.reason}" if self.path else self.reason
        return f"{where}: {what}"
