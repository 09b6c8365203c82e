"""The text scan of a checkout (Terraform files, candidate module sources), kept by git
tree id and brought up to date from the diff between two trees.

Scanning a 5,000-project monorepo (`git ls-files` + `git grep` over every `.tf` file)
costs a few hundred milliseconds, every time a pull request is planned, although a PR
touches a few dozen files. The scan of a tree is stored under the tree's id; the next
checkout with the same tree loads it, and a checkout of another tree starts from the
most recently stored scan and re-reads only the paths `git diff-tree` names.

Entries are JSON (never pickle: the cache directory must not be able to run code),
written atomically, and checked on load; a damaged or foreign entry means a full scan.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

FORMAT = "tree-scan-v2"
MAX_ENTRIES = 64
# How many of the most recent scans are tried as the base of an update.
RECENT_BASES = 4
# Beyond this many changed paths a full scan is as cheap as the update.
MAX_DIFF_PATHS = 2000


@dataclass(frozen=True)
class TreeScan:
    """Terraform files of a tree and, per `.tf` file, the local sources its text names."""

    tf_files: tuple[str, ...]
    sources: dict[str, tuple[str, ...]]


class TreeIndex:
    """Scans by tree id under `directory`; every failure falls back to `full_scan`."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def scan(
        self,
        repo_root: Path,
        tree: str | None,
        full_scan: Callable[[], TreeScan],
        keeps: Callable[[str], bool],
        sources_of: Callable[[str], tuple[str, ...]],
    ) -> TreeScan:
        """The scan of the checkout's index: stored, updated from a stored one, or full.

        `tree`: the checkout's `index_tree`; `keeps(path)`: a Terraform file the scan
        lists; `sources_of(path)`: the candidate sources of a `.tf` file of this checkout.
        """
        if tree is None:
            return full_scan()
        stored = self._load(tree)
        if stored is not None:
            return stored
        scan = self._updated(repo_root, tree, keeps, sources_of) or full_scan()
        self._store(tree, scan)
        return scan

    def _updated(
        self,
        repo_root: Path,
        tree: str,
        keeps: Callable[[str], bool],
        sources_of: Callable[[str], tuple[str, ...]],
    ) -> TreeScan | None:
        """The most recent stored scan, brought to `tree` through the diff; None if none."""
        # Several recent ones: the latest may be a tree of another repository.
        for base in self._recent():
            scan = self._load(base)
            changed = _changed_paths(repo_root, base, tree) if scan is not None else None
            if scan is not None and changed is not None:
                return _apply(scan, changed, keeps, sources_of)
        return None

    def _recent(self) -> list[str]:
        try:
            entries = sorted(
                self._directory.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True
            )
        except OSError:
            return []
        return [entry.stem for entry in entries[:RECENT_BASES]]

    def _load(self, tree: str) -> TreeScan | None:
        try:
            document = json.loads((self._directory / f"{tree}.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            return None
        files, sources = document.get("tf_files"), document.get("sources")
        if not isinstance(files, str) or not isinstance(sources, str):
            return None
        # One string per field, split in C: a 10,000-file list loads several times faster
        # than as JSON arrays. Paths cannot hold NUL; git's -z output relies on that too.
        rows = (row.split("\0") for row in sources.split("\n") if row)
        return TreeScan(
            tuple(path for path in files.split("\0") if path),
            {row[0]: tuple(row[1:]) for row in rows if len(row) > 1},
        )

    def _store(self, tree: str, scan: TreeScan) -> None:
        if any("\n" in path for path in scan.sources):
            return  # a newline in a path would split a row: do not keep this one
        document = {
            "format": FORMAT,
            "tf_files": "\0".join(scan.tf_files),
            "sources": "\n".join("\0".join((p, *found)) for p, found in scan.sources.items()),
        }
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
            partial = self._directory / f".{uuid.uuid4().hex}.tmp"
            partial.write_text(json.dumps(document))
            os.replace(partial, self._directory / f"{tree}.json")
            self._prune()
        except OSError:
            return  # an optimisation only

    def _prune(self) -> None:
        entries = sorted(self._directory.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for stale in entries[: max(0, len(entries) - MAX_ENTRIES)]:
            stale.unlink(missing_ok=True)


def _apply(
    scan: TreeScan,
    changed: list[tuple[str, str]],
    keeps: Callable[[str], bool],
    sources_of: Callable[[str], tuple[str, ...]],
) -> TreeScan:
    """`scan` with every changed path re-read (present) or dropped (deleted)."""
    files = set(scan.tf_files)
    sources = dict(scan.sources)
    for status, path in changed:
        files.discard(path)
        sources.pop(path, None)
        if status == "D" or not keeps(path):
            continue
        files.add(path)
        found = sources_of(path)
        if found:
            sources[path] = found
    return TreeScan(tuple(sorted(files)), sources)


def index_tree(repo_root: Path) -> str | None:
    """The tree id of the checkout's index (what `git grep --cached` searches)."""
    output = _git(repo_root, "write-tree")
    tree = output.strip() if output is not None else ""
    return tree if len(tree) in (40, 64) and all(c in "0123456789abcdef" for c in tree) else None


def _changed_paths(repo_root: Path, base: str, tree: str) -> list[tuple[str, str]] | None:
    """(status, path) of every path added (A), modified (M, T) or deleted (D) between two
    trees; None when git cannot tell (e.g. `base` is a tree of another repository)."""
    output = _git(repo_root, "diff-tree", "-r", "-z", "--no-renames", "--name-status", base, tree)
    if output is None:
        return None
    fields = output.split("\0")
    # -z --name-status: STATUS NUL PATH NUL, repeated.
    pairs = zip(fields[::2], fields[1::2], strict=False)  # a trailing NUL leaves one over
    changes = [(status, path) for status, path in pairs if path]
    return None if len(changes) > MAX_DIFF_PATHS else changes


def _git(repo_root: Path, *args: str) -> str | None:
    # --no-optional-locks: never rewrite the index of a working copy someone else uses.
    proc = subprocess.run(
        ["git", "--no-optional-locks", "-C", str(repo_root), *args],
        capture_output=True,
        check=False,
    )
    return os.fsdecode(proc.stdout) if proc.returncode == 0 else None
