"""Docs that name modules are checked against the tree.

Every `package/module.py` path and every `runner.package.module` name in the README
and `docs/` must exist, so a rename or a move cannot leave the architecture docs
describing code that is gone (as `events/gitlab.py` once was).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
# `web/webhooks.py`, `runner/drift/scan.py`, `tests/support/pr_world.py`, `bench/drift.py`
_PATH = re.compile(r"(?<![\w./-])((?:[a-z_]+/)+[a-z_0-9]+\.(?:py|j2|html|ini|toml))\b")
# `runner.drift.scan`, `runner.wiring:create_app_from_env`
_DOTTED = re.compile(r"(?<![\w./-])runner(?:\.[a-z_0-9]+)+")
# Paths that name things outside this repository or in a user's checkout.
_ELSEWHERE = ("server/events/", "site-packages/", "example/", "infra/", "modules/")


_SKIPPED_DIRS = {".git", ".venv", ".ci-venv", "__pycache__", "node_modules"}


def _tree_files() -> set[str]:
    """Every file of the project, as a POSIX path relative to the root."""
    files: set[str] = set()
    for directory, subdirs, names in os.walk(ROOT):
        subdirs[:] = [d for d in subdirs if d not in _SKIPPED_DIRS and not d.startswith(".")]
        base = Path(directory).relative_to(ROOT)
        files.update((base / name).as_posix() for name in names)
    return files


TREE = _tree_files()


def _exists(path: str) -> bool:
    """A path as docs write it: from the root, from `runner/`, or its tail."""
    return path in TREE or f"runner/{path}" in TREE or any(f.endswith(f"/{path}") for f in TREE)


def _named_paths(text: str) -> set[str]:
    return {p for p in _PATH.findall(text) if not p.startswith(_ELSEWHERE)}


def _module_exists(dotted: str) -> bool:
    parts = dotted.split(".")
    # Trailing parts may be attributes (`runner.wiring.build_services`): some prefix
    # of at least two parts must be a module or package.
    for end in range(len(parts), 1, -1):
        base = ROOT.joinpath(*parts[:end])
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_module_a_doc_names_exists(doc: Path) -> None:
    text = doc.read_text()
    missing = sorted(path for path in _named_paths(text) if not _exists(path))
    missing += sorted(name for name in set(_DOTTED.findall(text)) if not _module_exists(name))
    assert missing == [], f"{doc.name} names what the tree does not have: {missing}"
