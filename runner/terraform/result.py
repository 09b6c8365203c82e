"""The outcome of one Terraform CLI invocation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CommandOutcome:
    """What one `terraform <step>` did. Exit codes are kept as Terraform defines them."""

    argv: tuple[str, ...]
    exit_code: int  # -N when killed by signal N (subprocess convention)
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False
    cancelled: bool = False
    log_path: Path | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.cancelled

    def stderr_tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr.rstrip().splitlines()[-lines:])
