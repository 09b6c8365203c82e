"""Plain-text pieces the terminal reports of drift and reconcile share."""

from __future__ import annotations

MAX_ERROR_LINES = 12


def error_detail(error: str, log_path: str | None, indent: str = "      ") -> list[str]:
    """Terraform's own message (already masked) below a one-line headline, then the log.

    The headline ("Terraform exited with code 1") is on the report's line already;
    what follows is what a person needs to fix it without opening the log.
    """
    lines = [line.rstrip() for line in error.strip().splitlines()[1:] if line.strip()]
    shown = lines[:MAX_ERROR_LINES]
    if len(lines) > len(shown):
        shown.append(f"... {len(lines) - len(shown)} more line(s) in the log")
    if log_path:
        shown.append(f"log: {log_path}")
    return [indent + line for line in shown]
