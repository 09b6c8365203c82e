"""JSON plans kept for policy checks, filed by the sha256 of the plan file they describe.

`terraform show -json` is run once, when the plan is made (`engine/planner.py`); the
document is kept under the data directory, out of reach of the checkout's code, and
found again from the checksum every `ApplyItem` carries. The apply path verifies that
checksum against the plan file, so the policies judged exactly what is applied.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_FORMAT = 1


@dataclass(frozen=True)
class PlanDocument:
    """A JSON plan and the Terraform flags (`-target=...`) it was made with."""

    plan: Mapping[str, Any]
    flags: tuple[str, ...] = field(default=())


class PlanDocuments:
    """One JSON file per plan checksum; plans hold values, so files are owner-only."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def save(self, checksum: str, plan: Mapping[str, Any], flags: Sequence[str] = ()) -> Path:
        path = self._path(checksum)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"format": _FORMAT, "flags": list(flags), "plan": plan})
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(body)
        return path

    def load(self, checksum: str) -> PlanDocument | None:
        """The document of the plan with this checksum; None when none was kept."""
        if not _SHA256_HEX.match(checksum):
            return None
        path = self._path(checksum)
        if not path.is_file():
            return None
        stored = json.loads(path.read_text(encoding="utf-8"))
        return PlanDocument(stored["plan"], tuple(stored.get("flags", ())))

    def _path(self, checksum: str) -> Path:
        if not _SHA256_HEX.match(checksum):
            raise ValueError(f"not a sha256 checksum: {checksum!r}")
        return self._directory / checksum[:2] / f"{checksum}.json"
