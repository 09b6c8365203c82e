"""Reading a local Terraform state file in tests, while Terraform may be writing it."""

from __future__ import annotations

import json
from pathlib import Path


def applied_input(path: Path) -> str | None:
    """The `input` of the first resource in the state at `path` (a `terraform_data`);
    None when nothing was applied yet, or while Terraform is writing the file (its local
    backend does not write atomically, and a test polling the file can catch it empty)."""
    if not path.is_file():
        return None
    try:
        resources = json.loads(path.read_text())["resources"]
    except json.JSONDecodeError:
        return None
    return resources[0]["instances"][0]["attributes"]["input"]["value"] if resources else None
