"""The identity of a saved plan file: what an apply checks before it applies."""

from __future__ import annotations

import hashlib
from pathlib import Path


def plan_checksum(path: Path) -> str:
    """Hex sha256 of a plan file, so an apply can prove it applies what was reviewed."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
