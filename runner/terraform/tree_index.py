"""The text scan of a checkout (Terraform files, their blob ids, candidate module sources),
kept by git tree id and brought up to date from the diff between two trees.

Scanning a 5,000-project monorepo (`git ls-files` + `git grep` over every `.tf` file)
costs a few hundred milliseconds, every time a pull request is planned, although a PR
touches a few dozen files. The scan of a tree is stored under the tree's id; the next
checkout with the same tree loads it, and a checkout of another tree starts from the
most recent stored scan of a tree this repository has and re-reads only the paths
`git diff-tree` names.

A scan is a function of the tree's content alone: everything is read from git objects
(the index, `git cat-file`), or from the work tree only where a file's SHA-1 is the
blob id git names for it; the code a pull request plans can rewrite the work tree, but
not that. So an entry stored by one checkout is right for every checkout of the same
tree, whichever repository or worktree stored it (tree ids name content).

An entry may also keep what the caller derived from the scan alone: the candidate
callers of each module dir and the Terraform dirs (modules.py resolves ~15,000 sources
for those, ~17 ms in a new process: more than loading the whole entry).

Entries are plain text (never pickle: the cache directory must not be able to run
code): one header line (format, the SHA-256 of the tree id, the field lengths and the
fields, and those lengths), then the fields themselves, strings of paths joined by NUL
and newline, whose rows stay text until asked for. No JSON: it would escape each NUL
as six characters, for nothing the lengths and the checksum do not check already.
Written atomically, checked on load; a damaged, truncated, misfiled (another tree's)
or foreign entry, or one whose fields contradict each other, is ignored and the scan
made again. The checksum finds damage, not forgery: whoever can write the data dir can
make an entry list other files or edges, as they can edit the module-call cache beside
it.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import stat
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from runner.git_command import git_output, run_git

FORMAT = "tree-scan-v4"
SUFFIX = ".scan"
MAX_ENTRIES = 64
# Beyond this many changed paths a full scan is as cheap as the update.
MAX_DIFF_PATHS = 2000
_REGULAR_FILE_MODES = ("100644", "100755")
_FIELDS = 5  # tf_files, blobs, sources, callers, dirs
_V = TypeVar("_V", frozenset[str], tuple[str, ...])
_READ_NO_FOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class TreeScan:
    """Terraform files of a tree, the blob id of each regular one (symlinks have none),
    and, per `.tf` file, the local sources its text names. `callers`, when the caller of
    the index derived them: the files naming a source that resolves to each module dir."""

    tf_files: tuple[str, ...]
    candidate_sources: Mapping[str, tuple[str, ...]]
    blobs: Mapping[str, str]
    callers: Mapping[str, frozenset[str]] | None = None
    # The dirs of `tf_files`, kept with `callers` (both or neither).
    dirs: frozenset[str] | None = None


class _Rows(Mapping[str, _V]):
    """Rows of an entry by key (`key NUL item NUL item…`), each split into its value on
    first use. A new process's query reads a few of a monorepo's thousands of rows
    (15,000 names, ~4 ms to split them all), and an edited copy (`replaced_rows`) or a
    stored one keeps the untouched rows as text."""

    def __init__(self, rows: dict[str, str | _V]) -> None:
        self._rows = rows

    def _split(self, text: str) -> _V:
        raise NotImplementedError

    def __getitem__(self, key: str) -> _V:
        found = self._rows[key]
        if isinstance(found, str):
            # Replacing the value of a present key: safe while another thread iterates.
            found = self._rows[key] = self._split(found)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def row_text(self, key: str) -> str:
        """The row of `key` as stored."""
        found = self._rows[key]
        return f"{key}\0{found if isinstance(found, str) else chr(0).join(found)}"  # type: ignore[arg-type]


class CallerRows(_Rows[frozenset[str]]):
    """Candidate callers (files) by target dir."""

    def _split(self, text: str) -> frozenset[str]:
        return frozenset(text.split("\0"))


class SourceRows(_Rows[tuple[str, ...]]):
    """Candidate sources by file."""

    def _split(self, text: str) -> tuple[str, ...]:
        return tuple(text.split("\0"))


class TreeIndex:
    """Scans by tree id under `directory`; every failure means the caller scans again."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def load(self, tree: str) -> TreeScan | None:
        """The stored scan of `tree`, or None (absent, damaged, another tree's)."""
        try:
            data = (self._directory / f"{tree}{SUFFIX}").read_bytes()
        except OSError:
            return None
        return _decoded(tree, data)

    def has(self, tree: str) -> bool:
        return (self._directory / f"{tree}{SUFFIX}").exists()

    def trees(self) -> list[str]:
        """Stored tree ids, most recent first."""
        try:
            entries = sorted(
                self._directory.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime, reverse=True
            )
        except OSError:
            return []
        return [entry.stem for entry in entries if _is_object_id(entry.stem)]

    def store(self, tree: str, scan: TreeScan) -> None:
        """Keep `scan` for other processes (an optimisation only: failures are ignored)."""
        data = _encoded(tree, scan)
        if data is None:
            return
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
            partial = self._directory / f".{uuid.uuid4().hex}.tmp"
            partial.write_bytes(data)
            os.replace(partial, self._directory / f"{tree}{SUFFIX}")
            self._prune()
        except OSError:
            return

    def _prune(self) -> None:
        entries = sorted(self._directory.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime)
        for stale in entries[: max(0, len(entries) - MAX_ENTRIES)]:
            stale.unlink(missing_ok=True)
        for legacy in self._directory.glob("*.json"):  # tree-scan-v3 entries: never read
            legacy.unlink(missing_ok=True)


def _encoded(tree: str, scan: TreeScan) -> bytes | None:
    """The entry's bytes, or None when a path holds a newline (it would split a row)."""
    rows_keys = list(scan.candidate_sources) + list(scan.callers or ())
    if any("\n" in key for key in rows_keys):
        return None
    callers, dirs = scan.callers, scan.dirs
    derived = callers is not None and dirs is not None
    fields = (
        "\0".join(scan.tf_files),
        "\0".join(map(scan.blobs.get, scan.tf_files, itertools.repeat(""))),
        # Sorted, as a full scan lists them: the reader groups them by dir in one pass.
        "\n".join(_row_texts(scan.candidate_sources, sorted(scan.candidate_sources))),
        "\n".join(_row_texts(callers, callers)) if derived else "",  # type: ignore[arg-type]
        "\0".join(dirs) if derived else "",  # type: ignore[arg-type]
    )
    lengths = " ".join(str(len(field)) for field in fields)
    lengths += " +" if derived else " -"
    body = "".join(fields).encode("utf-8", "surrogateescape")
    header = f"{FORMAT} {_digest(tree, lengths, body)} {lengths}\n"
    return header.encode() + body


def _decoded(tree: str, data: bytes) -> TreeScan | None:
    """The scan an entry holds, if its header and checksum say it is `tree`'s, whole."""
    header, newline, body = data.partition(b"\n")
    parts = header.decode("ascii", "replace").split(" ")
    if not newline or len(parts) != _FIELDS + 3 or parts[0] != FORMAT:
        return None
    lengths = " ".join(parts[2:])
    if parts[1] != _digest(tree, lengths, body):
        return None  # damaged, truncated, or written for another tree: scan again
    text = body.decode("utf-8", "surrogateescape")
    if not all(part.isdigit() for part in parts[2:-1]):
        return None
    fields, start = [], 0
    for length in map(int, parts[2:-1]):
        fields.append(text[start : start + length])
        start += length
    if start != len(text):
        return None
    files_text, blobs_text, sources_text, callers_text, dirs_text = fields
    # One string per field, split in C. Paths cannot hold NUL; git's -z output relies
    # on that too.
    files = tuple(files_text.split("\0")) if files_text else ()
    blob_ids = blobs_text.split("\0") if files else []
    if len(blob_ids) != len(files):
        return None
    blobs = dict(zip(files, blob_ids, strict=True))
    if "" in blob_ids:  # symlinks: no blob id of their own
        blobs = {path: blob for path, blob in blobs.items() if blob}
    callers, dirs = None, None
    if parts[-1] == "+":
        callers = CallerRows(_raw_rows(callers_text))
        dirs = frozenset(dirs_text.split("\0")) if dirs_text else frozenset()
    return TreeScan(files, SourceRows(_raw_rows(sources_text)), blobs, callers, dirs)


def _raw_rows(text: str) -> dict[str, str | Any]:
    """`key NUL rest` rows by key, the rest kept as text; a row without items is none."""
    rows = (row.partition("\0") for row in text.split("\n"))
    return {key: rest for key, _, rest in rows if rest}


def _row_texts(rows: Mapping[str, Collection[str]], keys: Iterable[str]) -> Iterator[str]:
    """The rows of `keys` as stored; rows read from an entry and not split are copied."""
    if isinstance(rows, _Rows):
        return map(rows.row_text, keys)
    return ("\0".join((key, *rows[key])) for key in keys)


def _digest(tree: str, lengths: str, body: bytes) -> str:
    digest = hashlib.sha256(f"{FORMAT}\0{tree}\0{lengths}\0".encode())
    digest.update(body)
    return digest.hexdigest()


@dataclass(frozen=True)
class Change:
    """One path of `git diff-tree` between two trees."""

    status: str  # A, M, T or D
    path: str
    mode: str  # the new mode ("000000" when deleted)
    blob: str  # the new blob id


def diff_from_newest(
    repo_root: Path, tree: str, bases: Sequence[str]
) -> tuple[str, list[Change]] | None:
    """The newest of `bases` (tree ids, most recent first) this repository holds and its
    diff to `tree`; None when none is held or the diff is too large to be worth it. The
    newest is diffed straight away (git refuses a tree this repository does not hold):
    it is usually there, and that spares asking git which trees it has."""
    changes = _changed_paths(repo_root, bases[0], tree) if bases else None
    if changes is not None:
        return bases[0], changes
    base = _newest_present(repo_root, list(bases[1:]))
    changes = _changed_paths(repo_root, base, tree) if base is not None else None
    return (base, changes) if base is not None and changes is not None else None


def apply_changes(
    repo_root: Path,
    scan: TreeScan,
    changes: list[Change],
    keeps: Callable[[str], bool],
    sources_in: Callable[[str, str], tuple[str, ...]],
) -> TreeScan:
    """`scan` with every changed path re-read from its new blob (present) or dropped:
    `keeps(path)` says which paths a scan lists, `sources_in(path, text)` what it finds
    in a file's text."""
    gone = {change.path for change in changes}
    # Every changed path's sources: none (dropped) unless its new text names some.
    sources: dict[str, tuple[str, ...]] = dict.fromkeys(gone, ())
    blobs = dict(scan.blobs)
    kept = [c for c in changes if c.status != "D" and keeps(c.path)]
    # `.tf` files are grepped as `git grep` does; symlinks are grepped as their link text.
    texts = checkout_blobs(repo_root, {c.blob: c.path for c in kept if c.path.endswith(".tf")})
    for path in gone:
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
    return TreeScan(tuple(files), replaced_rows(scan.candidate_sources, sources), blobs)


def replaced_rows(rows: Mapping[str, _V], edits: Mapping[str, _V]) -> Mapping[str, _V]:
    """`rows` with the `edits` in, the empty ones dropped; rows read from an entry stay
    text (copying a dict of 5,000 strings, not splitting them)."""
    edited = dict(rows._rows if isinstance(rows, _Rows) else rows)
    for key, value in edits.items():
        if value:
            edited[key] = value
        else:
            edited.pop(key, None)
    return type(rows)(edited) if isinstance(rows, _Rows) else edited


def index_tree(repo_root: Path) -> str | None:
    """The tree id of the checkout's index (what `git grep --cached` searches)."""
    output = git_output(repo_root, "write-tree")
    tree = output.strip() if output is not None else ""
    return tree if _is_object_id(tree) else None


def indexed_blobs(repo_root: Path, pathspecs: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """The paths of the checkout's index matching `pathspecs` (stage 0: a clean checkout
    has no other) and the blob id of each regular file among them."""
    output = git_output(repo_root, "ls-files", "-s", "-z", "--", *pathspecs) or ""
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


def checkout_blobs(repo_root: Path, paths: Mapping[str, str]) -> dict[str, bytes]:
    """The content of each blob id of `paths` (blob id -> a path of the checkout): the
    checkout's regular file where it still holds that blob (its SHA-1 is the blob id),
    the object store for the rest. A PR's few dozen changed files cost no `git cat-file`
    while its checkout is as committed; a file rewritten since is read from git."""
    texts: dict[str, bytes] = {}
    for blob, path in paths.items():
        data = regular_file_bytes(repo_root, path)
        if data is not None and blob_sha(data) == blob:
            texts[blob] = data
    missing = [blob for blob in paths if blob not in texts]
    texts.update(read_blobs(repo_root, missing))
    return texts


def regular_file_bytes(repo_root: Path, path: str) -> bytes | None:
    """The checkout's file if it is a regular one. A link or a FIFO put there since the
    checkout is never followed nor waited on: O_NOFOLLOW refuses a link, O_NONBLOCK
    opens a FIFO at once, and fstat says what was opened."""
    try:
        fd = os.open(os.path.join(repo_root, path), _READ_NO_FOLLOW)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        chunks = [os.read(fd, info.st_size + 1)]
        while chunks[-1]:  # on to the end: the file may have grown since fstat
            chunks.append(os.read(fd, 1 << 16))
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def blob_sha(data: bytes) -> str:
    """The id git gives a blob of `data` (so a content proves it is that blob)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


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
    proc = run_git(repo_root, "cat-file", mode, stdin="\n".join(names).encode() + b"\n")
    return proc.stdout if proc.returncode == 0 else None


def _changed_paths(repo_root: Path, base: str, tree: str) -> list[Change] | None:
    """Every path added (A), modified (M, T) or deleted (D) between two trees, with its
    new mode and blob; None when git cannot tell (a tree this repository does not hold)
    or a full scan is as cheap."""
    output = git_output(repo_root, "diff-tree", "-r", "-z", "--no-renames", base, tree)
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
        changes.append(Change(status[:1], path, new_mode, new_id))
    return None if len(changes) > MAX_DIFF_PATHS else changes


def _is_object_id(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)
