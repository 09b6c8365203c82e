"""One error path for the CLI: every expected failure becomes a line or two and an exit code.

Commands raise what their layers raise (a `ConfigError` with file and line, a
`SettingsError`, a git failure...). `explain` turns it into a `Failure`: the message
to print after `error: ` and the documented exit code, 2 for usage and configuration
mistakes, 1 for everything that failed while running. Tracebacks are for `--debug`.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_FAILED = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class Failure:
    """What the user reads and the exit code the command ends with."""

    message: str
    exit_code: int


class CliError(Exception):
    """A failure a command detected itself (a bad `--repo`, nothing to do)."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def explain(error: BaseException) -> Failure:
    """The message and exit code of an exception a command let through."""
    if isinstance(error, CliError):
        return Failure(str(error), error.exit_code)
    if isinstance(error, _usage_errors()):
        return Failure(_one_paragraph(error), EXIT_USAGE)
    if isinstance(error, _run_errors()):
        return Failure(_one_paragraph(error), EXIT_FAILED)
    if isinstance(error, OSError):
        return Failure(_os_error(error), EXIT_FAILED)
    return Failure(
        f"unexpected {type(error).__name__}: {_one_paragraph(error)} "
        "(run with --debug for the traceback)",
        EXIT_FAILED,
    )


def _usage_errors() -> tuple[type[BaseException], ...]:
    """Mistakes in what the user gave: settings, repository config, project names, refs."""
    # Imported here: only a failing command pays for them, never `--help`.
    from git import BadName

    from runner.config.errors import ConfigError
    from runner.projects.changes import ChangeDetectionError
    from runner.projects.detection import ProjectSelectionError
    from runner.settings import SettingsError

    return (SettingsError, ConfigError, ProjectSelectionError, ChangeDetectionError, BadName)


def _run_errors() -> tuple[type[BaseException], ...]:
    """Failures while running: git, snapshots, Terraform not found."""
    from runner.terraform.locate import TerraformNotFoundError
    from runner.workspace.snapshot import SnapshotError
    from runner.workspace.working_copy import WorkingCopyError

    return (SnapshotError, WorkingCopyError, TerraformNotFoundError)


def _os_error(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or error}"


def _one_paragraph(error: BaseException) -> str:
    """The exception's text with blank lines dropped: a few lines at most."""
    lines = [line.rstrip() for line in str(error).strip().splitlines() if line.strip()]
    return "\n  ".join(lines[:6]) or type(error).__name__
