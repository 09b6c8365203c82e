"""JSON plans kept for policy checks, filed by the sha256 of the plan file they describe.

`terraform show -json` is run once, when the plan is made (`engine/planner.py`); the
document is kept under the data directory, out of reach of the checkout's code, and
found again from the checksum every `ApplyItem` carries. The apply path verifies that
checksum against the plan file, so the policies judged exactly what is applied.

Documents hold plan values, so they are not kept forever: whenever one is saved, those
older than the retention (`GITOPS_PLAN_JSON_RETENTION_DAYS`) are deleted, at most once
an hour (a marker file's mtime says when, shared by every process on the data dir).
A plan older than that is refused by the gate ("plan again"): it fails closed.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_FORMAT = 1
_PRUNE_EVERY_S = 3600.0
_PRUNE_MARKER = ".pruned"
_DAY_S = 86400.0


@dataclass(frozen=True)
class PlanDocument:
    """A JSON plan and the Terraform flags (`-target=...`) it was made with."""

    plan: Mapping[str, Any]
    flags: tuple[str, ...] = field(default=())


class PlanDocuments:
    """One JSON file per plan checksum; plans hold values, so files are owner-only."""

    def __init__(self, directory: Path, retention_days: float = 30.0) -> None:
        self._directory = directory
        self._retention_s = retention_days * _DAY_S

    def save(self, checksum: str, plan: Mapping[str, Any], flags: Sequence[str] = ()) -> Path:
        """Keep the document of a plan; old ones are pruned first (hourly at most)."""
        self.prune_if_due()
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

    def prune_if_due(self, now: float | None = None) -> int:
        """Delete documents past the retention unless that was done within the hour.

        Returns how many were deleted. The marker is touched before pruning so that
        concurrent planners do not all walk the directory at once.
        """
        now = time.time() if now is None else now
        marker = self._directory / _PRUNE_MARKER
        if marker.exists() and now - marker.stat().st_mtime < _PRUNE_EVERY_S:
            return 0
        self._directory.mkdir(parents=True, exist_ok=True)
        marker.touch()
        os.utime(marker, (now, now))
        return self.prune(now - self._retention_s)

    def prune(self, older_than: float) -> int:
        """Delete every document last written before `older_than` (a Unix time)."""
        removed = 0
        for path in self._directory.glob("??/*.json"):
            try:
                if path.stat().st_mtime < older_than:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # another process pruned it first
                continue
        return removed

    def _path(self, checksum: str) -> Path:
        if not _SHA256_HEX.match(checksum):
            raise ValueError(f"not a sha256 checksum: {checksum!r}")
        return self._directory / checksum[:2] / f"{checksum}.json"
