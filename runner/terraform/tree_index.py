"""The text scan of a checkout (Terraform files, their blob ids, candidate module sources),
kept by git tree id and brought up to date from the diff between two trees.

Scanning a 5,000-project monorepo (`git ls-files` + `git grep` over every `.tf` file)
costs a few hundred milliseconds, every time a pull request is planned, although a PR
touches a few dozen files. The scan of a tree is stored under the tree's id; the next
checkout with the same tree loads it, and a checkout of another tree starts from the
most recent stored scan of a tree this repository has and re-reads only the paths
`git diff-tree` names.

A scan is a function of the tree's content alone: everything is read from git objects
(the index, `git cat-file`), never from the work tree, which the code a pull request
plans can rewrite. So an entry stored by one checkout is right for every checkout of
the same tree, whichever repository or worktree stored it (tree ids name content).

Entries are JSON (never pickle: the cache directory must not be able to run code),
written atomically, carry a SHA-256 of their content and are checked on load; a
damaged or foreign entry means a full scan.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

FORMAT = "tree-scan-v3"
MAX_ENTRIES = 64
# Beyond this many changed paths a full scan is as cheap as the update.
MAX_DIFF_PATHS = 2000
_REGULAR_FILE_MODES = ("100644", "100755")


@dataclass(frozen=True)
class TreeScan:
    """Terraform files of a tree, the blob id of each regular one (symlinks have none),
    and, per `.tf` file, the local sources its text names."""

    tf_files: tuple[str, ...]
    sources: Mapping[str, tuple[str, ...]]
    blobs: Mapping[str, str]


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
        sources_in: Callable[[str, str], tuple[str, ...]],
    ) -> TreeScan:
        """The scan of the checkout's index: stored, updated from a stored one, or full.

        `tree`: the checkout's `index_tree`; `keeps(path)`: a Terraform file the scan
        lists; `sources_in(path, text)`: the candidate sources of a `.tf` file's text.
        """
        if tree is None:
            return full_scan()
        stored = self._load(tree)
        if stored is not None:
            return stored
        scan = self._updated(repo_root, tree, keeps, sources_in) or full_scan()
        self._store(tree, scan)
        return scan

    def update(
        self,
        repo_root: Path,
        tree: str,
        bases: Mapping[str, TreeScan],
        keeps: Callable[[str], bool],
        sources_in: Callable[[str, str], tuple[str, ...]],
    ) -> tuple[str, TreeScan, list[str]] | None:
        """`tree`'s scan from one of `bases` (scans the caller holds, by tree id, most
        recent first): the newest this repository has, brought to `tree` through the
        diff and stored for other processes. (base, scan, changed paths), or None."""
        base = _newest_present(repo_root, list(bases))
        changed = _changed_paths(repo_root, base, tree) if base is not None else None
        if base is None or changed is None:
            return None
        scan = _apply(repo_root, bases[base], changed, keeps, sources_in)
        if not (self._directory / f"{tree}.json").exists():
            self._store(tree, scan)
        return base, scan, [change.path for change in changed]

    def _updated(
        self,
        repo_root: Path,
        tree: str,
        keeps: Callable[[str], bool],
        sources_in: Callable[[str, str], tuple[str, ...]],
    ) -> TreeScan | None:
        """The most recent stored scan of a tree this repository holds, brought to `tree`
        through the diff; None if there is none."""
        base = _newest_present(repo_root, self._recent())
        scan = self._load(base) if base is not None else None
        if base is None or scan is None:
            return None
        changed = _changed_paths(repo_root, base, tree)
        if changed is None:
            return None
        return _apply(repo_root, scan, changed, keeps, sources_in)

    def _recent(self) -> list[str]:
        """Stored tree ids, most recent first."""
        try:
            entries = sorted(
                self._directory.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True
            )
        except OSError:
            return []
        return [entry.stem for entry in entries if _is_object_id(entry.stem)]

    def _load(self, tree: str) -> TreeScan | None:
        try:
            document = json.loads((self._directory / f"{tree}.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            return None
        fields = [document.get(key) for key in ("tf_files", "blobs", "sources")]
        if not all(isinstance(value, str) for value in fields):
            return None
        if document.get("sha256") != _digest(tree, *fields):
            return None  # damaged (or written for another tree): scan again
        files_text, blobs_text, sources_text = fields
        # One string per field, split in C: a 10,000-file list loads several times faster
        # than as JSON arrays. Paths cannot hold NUL; git's -z output relies on that too.
        files = tuple(path for path in files_text.split("\0") if path)
        blob_ids = blobs_text.split("\0")
        if len(blob_ids) != len(files):
            return None
        rows = (row.split("\0") for row in sources_text.split("\n") if row)
        return TreeScan(
            files,
            {row[0]: tuple(row[1:]) for row in rows if len(row) > 1},
            {path: blob for path, blob in zip(files, blob_ids, strict=True) if blob},
        )

    def _store(self, tree: str, scan: TreeScan) -> None:
        if any("\n" in path for path in scan.sources):
            return  # a newline in a path would split a row: do not keep this one
        fields = (
            "\0".join(scan.tf_files),
            "\0".join(scan.blobs.get(path, "") for path in scan.tf_files),
            "\n".join("\0".join((p, *found)) for p, found in scan.sources.items()),
        )
        document = {
            "format": FORMAT,
            "tf_files": fields[0],
            "blobs": fields[1],
            "sources": fields[2],
            "sha256": _digest(tree, *fields),
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


def _digest(tree: str, *fields: str) -> str:
    digest = hashlib.sha256(f"{FORMAT}\0{tree}".encode())
    for value in fields:
        digest.update(b"\1" + value.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


@dataclass(frozen=True)
class _Change:
    status: str  # A, M, T or D
    path: str
    mode: str  # the new mode ("000000" when deleted)
    blob: str  # the new blob id


def _apply(
    repo_root: Path,
    scan: TreeScan,
    changed: list[_Change],
    keeps: Callable[[str], bool],
    sources_in: Callable[[str, str], tuple[str, ...]],
) -> TreeScan:
    """`scan` with every changed path re-read from its new blob (present) or dropped."""
    gone = {change.path for change in changed}
    sources = dict(scan.sources)
    blobs = dict(scan.blobs)
    kept = [c for c in changed if c.status != "D" and keeps(c.path)]
    # `.tf` files are grepped as `git grep` does; symlinks are grepped as their link text.
    texts = read_blobs(repo_root, [c.blob for c in kept if c.path.endswith(".tf")])
    for path in gone:
        sources.pop(path, None)
        blobs.pop(path, None)
    for change in kept:
        if change.mode in _REGULAR_FILE_MODES:
            blobs[change.path] = change.blob
        data = texts.get(change.blob)
        found = sources_in(change.path, data.decode(errors="replace")) if data is not None else ()
        if found:
            sources[change.path] = found
    # The list stays nearly sorted: sorting it again is one pass, not n log n.
    files = [path for path in scan.tf_files if path not in gone]
    files.extend(change.path for change in kept)
    files.sort()
    return TreeScan(tuple(files), sources, blobs)


def index_tree(repo_root: Path) -> str | None:
    """The tree id of the checkout's index (what `git grep --cached` searches)."""
    output = _git(repo_root, "write-tree")
    tree = output.strip() if output is not None else ""
    return tree if _is_object_id(tree) else None


def indexed_blobs(repo_root: Path, pathspecs: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """The paths of the checkout's index matching `pathspecs` (stage 0: a clean checkout
    has no other) and the blob id of each regular file among them."""
    output = _git(repo_root, "ls-files", "-s", "-z", "--", *pathspecs) or ""
    paths: list[str] = []
    blobs: dict[str, str] = {}
    for record in output.split("\0"):
        meta, _, path = record.partition("\t")
        parts = meta.split(" ")
        if not path or len(parts) != 3:
            continue
        mode, blob, _stage = parts
        paths.append(path)
        if mode in _REGULAR_FILE_MODES:
            blobs[path] = blob
    return paths, blobs


def read_blobs(repo_root: Path, blobs: list[str]) -> dict[str, bytes]:
    """The content of each blob id, read from the object store in one `git cat-file`."""
    wanted = sorted(set(blobs))
    out = _cat_file(repo_root, "--batch", wanted) if wanted else None
    if out is None:
        return {}
    texts: dict[str, bytes] = {}
    pos = 0
    while pos < len(out):
        end = out.index(b"\n", pos)
        header = out[pos:end].split(b" ")
        pos = end + 1
        if len(header) != 3:  # "<id> missing"
            continue
        size = int(header[2])
        texts[header[0].decode()] = out[pos : pos + size]
        pos += size + 1
    return texts


def _newest_present(repo_root: Path, trees: list[str]) -> str | None:
    """The first of `trees` this repository holds as a tree object (one `git cat-file`):
    an entry stored for another repository is only a candidate base if its tree is
    here too, and then its diff is exact."""
    out = _cat_file(repo_root, "--batch-check", trees) if trees else None
    if out is None:
        return None
    for tree, line in zip(trees, out.decode().splitlines(), strict=False):
        if line.split(" ")[1:2] == ["tree"]:
            return tree
    return None


def _cat_file(repo_root: Path, mode: str, names: list[str]) -> bytes | None:
    """`git cat-file --batch` or `--batch-check` of `names`; None when git fails."""
    proc = subprocess.run(
        ["git", "--no-optional-locks", "-C", str(repo_root), "cat-file", mode],
        input="\n".join(names).encode() + b"\n",
        capture_output=True,
        check=False,
    )
    return proc.stdout if proc.returncode == 0 else None


def _changed_paths(repo_root: Path, base: str, tree: str) -> list[_Change] | None:
    """Every path added (A), modified (M, T) or deleted (D) between two trees, with its
    new mode and blob; None when git cannot tell or a full scan is as cheap."""
    output = _git(repo_root, "diff-tree", "-r", "-z", "--no-renames", base, tree)
    if output is None:
        return None
    fields = output.split("\0")
    # Raw -z format: ":OLDMODE NEWMODE OLDID NEWID STATUS" NUL PATH NUL, repeated.
    changes = []
    for meta, path in zip(fields[::2], fields[1::2], strict=False):
        parts = meta.lstrip(":").split(" ")
        if not path or len(parts) != 5:
            continue
        _old_mode, new_mode, _old_id, new_id, status = parts
        changes.append(_Change(status[:1], path, new_mode, new_id))
    return None if len(changes) > MAX_DIFF_PATHS else changes


def _is_object_id(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)


def _git(repo_root: Path, *args: str) -> str | None:
    # --no-optional-locks: never rewrite the index of a working copy someone else uses.
    proc = subprocess.run(
        ["git", "--no-optional-locks", "-C", str(repo_root), *args],
        capture_output=True,
        check=False,
    )
    return os.fsdecode(proc.stdout) if proc.returncode == 0 else None
