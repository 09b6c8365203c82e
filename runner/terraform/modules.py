"""The local-module graph: which directory calls which local module (`./…`, `../…`).

Change detection needs "who calls modules/tags, even through other modules", and
autodiscovery needs "which directories are only modules". Parsing every `.tf` file of
a large monorepo with python-hcl2 takes seconds, so the graph works in two steps:

1. A text pre-filter (`git grep`, or a Python scan outside git) finds every line that
   looks like `source = "./…"` / `"../…"`. Terraform only accepts a literal string on
   the `source` line, so this is a superset of the real calls: candidate edges.
2. A candidate edge is confirmed only when it is needed, by reading that one file's
   top-level `module` blocks (so comments, heredocs and `source` attributes of
   resources or provisioners do not count): a token pass for plain files
   (hcl_scan.py), python-hcl2 for everything else. Results are cached by git blob SHA
   in memory and, optionally, in a cache directory.

With a cache directory the graph is the graph of the checkout's index tree: step 1 is
kept by git tree id and updated from the diff (tree_index.py); what it implies
(`_Skeleton`: candidate edges, confirmed calls, module dirs) is shared by every graph of
the same tree in this process, and the skeleton of a new tree is derived from a kept one
through the diff. The index entry keeps the candidate edges too, so a new process derives
a PR's skeleton from its base branch's entry without resolving every source again.
Files are read by blob id (the checkout's copy only while it still holds that blob), so
code run in a checkout cannot change what is kept for its tree.

A file that python-hcl2 cannot parse keeps its candidate edges (over-planning is safer
than missing a project); the problem is listed in `ModuleGraph.problems`.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import importlib.util
import json
import os
import posixpath
import re
import sqlite3
import subprocess
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from runner.gc_pause import gc_paused
from runner.terraform.hcl_scan import lexical_local_calls
from runner.terraform.tree_index import (
    CallerRows,
    TreeIndex,
    TreeScan,
    blob_sha,
    index_tree,
    indexed_blobs,
    read_blobs,
    regular_file_bytes,
)

if TYPE_CHECKING:
    from lark import Lark, Token, Tree

# ERE for `git grep`: deliberately loose; `_TF_SOURCE_RE` decides on each line.
_GREP_PATTERN = r'source[[:space:]]*=[[:space:]]*"\.\.?/'
_TF_SOURCE_RE = re.compile(r'(?<![\w-])source\s*=\s*"(\.\.?/[^"]*)"')
# A line starting with `#` or `//` is a comment whatever it holds, so it can never be
# a real call: dropping it keeps the candidates a superset and spares hcl2 parses.
_COMMENT_LINE_RE = re.compile(r"\s*(?:#|//)")
_GREP_RECORD_RE = re.compile(r"([^\0]*)\0([^\n]*)\n")
# How much of a file git reads to call it binary (`git grep -I` skips those).
_GIT_BINARY_PROBE = 8000
TREE_INDEX_DIR = "tree-scans"
_T = TypeVar("_T")


@functools.cache
def _hcl2_version() -> str:
    """python-hcl2's version, read without importing the package: its `__init__` loads
    lark and the HCL grammar (~0.1 s), which only a file the token pass is unsure of
    needs. "unknown" as hcl2 itself says when its version file is missing."""
    spec = importlib.util.find_spec("hcl2")
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        return "unknown"
    version_spec = importlib.util.spec_from_file_location(
        "_runner_hcl2_version", os.path.join(locations[0], "version.py")
    )
    if version_spec is None or version_spec.loader is None:
        return "unknown"
    version_module = importlib.util.module_from_spec(version_spec)
    try:
        version_spec.loader.exec_module(version_module)
    except (OSError, ImportError):
        return "unknown"
    return str(getattr(version_module, "version", "unknown"))


def _cache_namespace() -> str:
    """Module calls are kept per python-hcl2 version: another parser may answer otherwise."""
    return f"module-calls-v1-hcl2-{_hcl2_version()}"


@dataclass(frozen=True)
class ModuleCall:
    """One `module` block with a local source, resolved to a repo-relative dir."""

    caller_dir: str
    file: str
    name: str
    source: str  # as written in the file
    module_dir: str


@dataclass(frozen=True)
class CallChain:
    """How `caller` reaches a module: `modules[0]` is called by `caller`, and so on."""

    caller: str
    modules: tuple[str, ...]

    def describe(self) -> str:
        """The chain as shown in a reason, e.g. `modules/network → modules/tags`."""
        return " → ".join(self.modules)


@dataclass(frozen=True)
class _Scan:
    """What the cheap text pass found: every Terraform file and the candidate sources."""

    tf_files: tuple[str, ...]
    candidate_sources: Mapping[str, tuple[str, ...]]  # .tf file -> local sources in its text
    # Regular files of a git scan -> their blob id in the index (none outside git).
    blobs: Mapping[str, str] = field(default_factory=dict)


def dir_of(path: str) -> str:
    """The repo-relative directory of a repo-relative file ('.' for the root)."""
    # Paths from git have no '//' or trailing '/': the head of the last '/' is the
    # dirname (posixpath.dirname, 3x slower, is called for every file of a big tree).
    return path.rpartition("/")[0] or "."


def is_hidden(path: str) -> bool:
    """True for paths Terraform and discovery ignore: any segment starting with '.'."""
    return path.startswith(".") or "/." in path


def resolve_source(caller_dir: str, source: str) -> str | None:
    """The repo-relative dir a local source points to, or None if it leaves the repo."""
    shape = _source_shape(source)
    if shape is not None and caller_dir != ".":
        ups, rest = shape
        # The common `../../modules/x` of a monorepo: string cuts, no normpath.
        parts = caller_dir.rsplit("/", ups) if ups else [caller_dir]
        if len(parts) < ups:
            return None  # above the repository root
        head = parts[0] if len(parts) > ups else ""
        return f"{head}/{rest}" if head and rest else head or rest or "."
    resolved = posixpath.normpath(posixpath.join(caller_dir, source))
    if resolved == ".." or resolved.startswith("../"):
        return None
    return resolved


@functools.lru_cache(maxsize=4096)
def _source_shape(source: str) -> tuple[int, str] | None:
    """`../../modules/x` -> (2, "modules/x"): the leading `..` and `.` segments counted
    (`..` only) and a clean rest (no `.`, `..` or empty segment); None for any other
    shape, which `resolve_source` leaves to normpath. Thousands of calls share a few
    hundred sources."""
    parts = source.split("/")
    ups = 0
    while parts and parts[0] in (".", ".."):
        ups += parts.pop(0) == ".."
    if any(part in ("", ".", "..") for part in parts):
        return None
    return ups, "/".join(parts)


def _is_tf(path: str) -> bool:
    return path.endswith((".tf", ".tf.json"))


def _run_git(repo_root: Path, *args: str) -> bytes:
    # --no-optional-locks: never rewrite the index of a working copy someone else uses.
    proc = subprocess.run(
        ["git", "--no-optional-locks", "-C", str(repo_root), *args],
        capture_output=True,
        check=False,
    )
    # git grep exits 1 when nothing matched.
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and proc.stderr):
        raise RuntimeError(f"git {args[0]} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def _sources_in_line(line: str) -> list[str]:
    return [] if _COMMENT_LINE_RE.match(line) else _TF_SOURCE_RE.findall(line)


def _scan_git(repo_root: Path) -> _Scan:
    # Tracked files only: working copies are checkouts of commits, and listing
    # untracked files would make git walk the whole tree (several times slower).
    listed, blobs = indexed_blobs(repo_root, ("*.tf", "*.tf.json"))
    tf_files = sorted({p for p in listed if not is_hidden(p)})
    # --cached: search the index, as listed above (cheaper than stat-ing the work tree).
    grepped = _run_git(
        repo_root, "grep", "--cached", "-z", "-I", "-E", "-e", _GREP_PATTERN, "--", "*.tf"
    )
    sources: dict[str, list[str]] = defaultdict(list)
    for path, line in _GREP_RECORD_RE.findall(os.fsdecode(grepped)):
        found = _sources_in_line(line)
        if found and not is_hidden(path):
            sources[path].extend(found)
    return _Scan(
        tuple(tf_files),
        {p: tuple(s) for p, s in sources.items()},
        {p: blobs[p] for p in tf_files if p in blobs},
    )


def _stored_skeleton(repo_root: Path, tree: str, index: TreeIndex) -> _Skeleton:
    """The skeleton of `tree` in a process that keeps none of this repository: from the
    tree's own entry in the index; else from the newest stored tree this repository
    holds, brought to `tree` through the diff (a PR's first push after a restart: its
    base branch's entry); else from a full scan. Stored for the next process."""
    stored = index.load(tree)
    if stored is not None:
        return _Skeleton.of_stored(stored)
    derived = index.derive_from_stored(repo_root, tree, _listed, _text_sources)
    if derived is not None:
        base_scan, scan, changed = derived
        skeleton = _Skeleton.of_stored(base_scan).updated(_as_scan(scan), changed)
    else:
        skeleton = _Skeleton.of(_scan_git(repo_root))
    index.store(tree, skeleton.stored())
    return skeleton


def _derived_skeleton(repo_root: Path, tree: str, index: TreeIndex) -> _Skeleton | None:
    """The skeleton of `tree` from one this process keeps for another tree of the same
    repository (a PR's next push, the base branch): the diff re-read, nothing loaded."""
    recent = dict(_SKELETONS.recent())
    update = index.update(
        repo_root,
        tree,
        {base: kept.stored() for base, kept in recent.items()},
        _listed,
        _text_sources,
    )
    if update is None:
        return None
    base, scan, changed = update
    skeleton = recent[base].updated(_as_scan(scan), changed)
    if not index.has(tree):
        index.store(tree, skeleton.stored())
    return skeleton


def _as_scan(scan: TreeScan) -> _Scan:
    return _Scan(scan.tf_files, scan.sources, scan.blobs)


def _listed(path: str) -> bool:
    """A path the git scan lists: a Terraform file outside hidden directories."""
    return _is_tf(path) and not is_hidden(path)


def _text_sources(path: str, text: str) -> tuple[str, ...]:
    """Candidate local sources in a file's text, as `git grep -I` finds them: `.tf`
    files only, lines split at newlines, nothing in a binary file (NUL in its head)."""
    if not path.endswith(".tf") or "\0" in text[:_GIT_BINARY_PROBE]:
        return ()
    return tuple(s for line in text.split("\n") for s in _sources_in_line(line))


def _scan_tree(repo_root: Path) -> _Scan:
    tf_files: list[str] = []
    sources: dict[str, tuple[str, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(repo_root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(repo_root).as_posix()
        for name in filenames:
            if name.startswith(".") or not _is_tf(name):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            file = Path(dirpath, name)
            if file.is_symlink() and not file.resolve().is_relative_to(repo_root.resolve()):
                continue  # never read outside the repository
            tf_files.append(rel)
            if name.endswith(".tf"):
                text = file.read_text(errors="replace")
                found = tuple(s for line in text.splitlines() for s in _sources_in_line(line))
                if found:
                    sources[rel] = found
    return _Scan(tuple(sorted(tf_files)), sources)


def _text(node: Tree | Token) -> str | None:
    """The text of an identifier or of a string literal without interpolation."""
    from lark import Token, Tree  # imported by `_hcl_parser` already: a dict lookup

    if isinstance(node, Token):
        return None
    if node.data == "identifier":
        return str(node.children[0])
    if node.data == "string":
        parts = [c for c in node.children if isinstance(c, Tree)]
        if all(isinstance(p.children[0], Token) for p in parts):
            return "".join(str(p.children[0]) for p in parts)
    return None


def _module_blocks(tree: Tree) -> Iterator[Tree]:
    from lark import Tree

    body = tree.children[0]
    for block in body.children:
        if (
            isinstance(block, Tree)
            and block.data == "block"
            and _text(block.children[0]) == "module"
        ):
            yield block


def _block_label_and_source(block: Tree) -> tuple[str, str | None]:
    from lark import Tree

    label = (_text(block.children[1]) or "") if len(block.children) > 1 else ""
    body = next(c for c in block.children if isinstance(c, Tree) and c.data == "body")
    for attr in body.children:
        if (
            isinstance(attr, Tree)
            and attr.data == "attribute"
            and _text(attr.children[0]) == "source"
        ):
            expr = attr.children[-1]
            return label, _text(expr.children[0]) if isinstance(expr, Tree) else None
    return label, None


@functools.cache
def _hcl_parser() -> Lark:
    """python-hcl2's own grammar and post-lexer, minus the source positions hcl2 records
    for its own use: the same parse trees, about 40% faster. Compiled once per machine
    (lark caches it in the temp dir). Imported here, on the first file the token pass is
    unsure of: most processes never need python-hcl2 or lark."""
    import hcl2.parser
    from hcl2.postlexer import PostLexer
    from lark import Lark

    return Lark.open(
        "hcl2.lark",
        rel_to=hcl2.parser.__file__,
        parser="lalr",
        propagate_positions=False,
        postlex=PostLexer(),
        cache=True,
    )


def parse_hcl_local_calls(text: str) -> tuple[tuple[str, str], ...]:
    """(name, source) of the top-level module blocks of an HCL file with a local source."""
    fast = lexical_local_calls(text)  # same answer, no parse, for plain files
    if fast is not None:
        return fast
    # The trailing newline is hcl2's own workaround: its grammar needs one at the end.
    tree = _hcl_parser().parse(text + "\n")
    calls = (_block_label_and_source(b) for b in _module_blocks(tree))
    return tuple((name, src) for name, src in calls if src and src.startswith(("./", "../")))


def parse_json_local_calls(text: str) -> tuple[tuple[str, str], ...]:
    """Same as `parse_hcl_local_calls` for `.tf.json` (JSON syntax allows dicts or lists)."""
    doc = json.loads(text)
    found: list[tuple[str, str]] = []
    for modules in _as_list(doc.get("module") if isinstance(doc, dict) else None):
        for name, bodies in modules.items() if isinstance(modules, dict) else ():
            for body in _as_list(bodies):
                src = body.get("source") if isinstance(body, dict) else None
                if isinstance(src, str) and src.startswith(("./", "../")):
                    found.append((name, src))
    return tuple(found)


def _as_list(value: object) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


class _ParseCache:
    """Local module calls per file content (git blob SHA), in memory (shared by every
    graph of this process: a content id means the same calls in any tree) and, with a
    cache dir, in one SQLite file there that processes share (WAL: readers never wait).

    The disk cache is an optimisation only: any SQLite problem (damaged file, full
    disk, lock timeout) turns it off for this graph instead of failing detection.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._memory = _PARSED
        self._db: sqlite3.Connection | None = None
        self._batch_depth = 0
        self._pending: list[tuple[str, str]] = []  # put in a batch, written at its end
        # Asked of the disk by `prefetch` and not there: not asked again by this graph.
        self._absent: set[str] = set()
        if directory is not None:
            try:
                self._db = _open_db(directory / f"{_cache_namespace()}.sqlite3")
            except (sqlite3.Error, OSError):
                self._db = None

    def get(self, sha: str) -> dict | None:
        if sha in self._memory:
            return self._memory[sha]
        if sha in self._absent:
            return None
        row = self._run("SELECT entry FROM calls WHERE sha = ?", (sha,))
        entry = _decode_entry(row[0]) if row else None
        if entry is not None:
            self._memory[sha] = entry
        return entry

    def prefetch(self, shas: Sequence[str]) -> None:
        """The disk entries of `shas` read into memory in one query per 500; the ones
        absent are remembered, so `get` does not ask for them again."""
        wanted = [sha for sha in shas if sha not in self._memory and sha not in self._absent]
        for start in range(0, len(wanted), _PREFETCH_CHUNK):
            chunk = wanted[start : start + _PREFETCH_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._run_all(f"SELECT sha, entry FROM calls WHERE sha IN ({marks})", chunk)
            if rows is None:
                return  # no disk cache (or it just failed): `get` finds nothing either
            found = set()
            for sha, text in rows:
                entry = _decode_entry(text)
                if entry is not None:
                    self._memory[sha] = entry
                    found.add(sha)
            self._absent.update(sha for sha in chunk if sha not in found)

    def put(self, sha: str, entry: dict) -> None:
        self._absent.discard(sha)
        self._memory[sha] = entry
        row = (sha, json.dumps(entry))
        if self._batch_depth:
            self._pending.append(row)
        else:
            self._write([row])

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """The puts of the block written at its end, in one transaction and one
        statement: one commit instead of one per file (~40 µs each: 250 confirmed
        callers of a changed module, ~10 ms), none when nothing is put (a warm query),
        and SQLite's write lock held only while writing, never while files are parsed.
        Nests; what was put is written even when the block fails (each entry stands
        on its own)."""
        self._batch_depth += 1
        try:
            yield
        finally:
            self._batch_depth -= 1
            if self._batch_depth == 0 and self._pending:
                rows, self._pending = self._pending, []
                self._write(rows)

    def _write(self, rows: list[tuple[str, str]]) -> None:
        """Insert `rows` in one transaction; a failure turns the disk cache off."""
        if self._db is None:
            return
        try:
            with self._db:  # BEGIN … COMMIT, or ROLLBACK when it fails
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR REPLACE INTO calls (sha, entry) VALUES (?, ?)", rows
                )
        except (sqlite3.Error, OSError):
            self._db = None

    def _run_all(self, sql: str, params: Sequence[str]) -> list[Any] | None:
        """All rows of one query on the disk cache; None without one (or on failure,
        which turns it off, as in `_run`)."""
        if self._db is None:
            return None
        try:
            return self._db.execute(sql, params).fetchall()
        except (sqlite3.Error, OSError):
            self._db = None
            return None

    def _run(self, sql: str, params: tuple[str, ...]) -> Any:
        """One statement on the disk cache; the first failure turns the disk cache off."""
        if self._db is None:
            return None
        try:
            return self._db.execute(sql, params).fetchone()
        except (sqlite3.Error, OSError):
            self._db = None
            return None


class _BoundedMemo(dict[str, dict]):
    """A dict that forgets everything once it holds `size` entries: parse entries are a
    few hundred bytes, and a monorepo's files fit many times over."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size

    def __setitem__(self, key: str, value: dict) -> None:
        if len(self) >= self._size:
            self.clear()
        super().__setitem__(key, value)


_PARSED = _BoundedMemo(200_000)
# Below SQLite's default limit of host parameters per statement (999 before 3.32).
_PREFETCH_CHUNK = 500


def _open_db(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Autocommit; the graph may be handed to another thread, never shared by two.
    db = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS calls (sha TEXT PRIMARY KEY, entry TEXT)")
    return db


def _decode_entry(text: str) -> dict | None:
    try:
        entry = json.loads(text)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not ({"calls", "error"} & entry.keys()):
        return None  # damaged or foreign: parse again
    return entry


@dataclass(frozen=True)
class _Skeleton:
    """What a tree's text scan implies before any file is parsed: the Terraform dirs and
    the candidate edges. It depends on the tree alone, so graphs of one tree share it."""

    scan: _Scan
    tf_dirs: frozenset[str]
    candidate_callers: Mapping[str, frozenset[str]]
    files_in_dir: Mapping[str, tuple[str, ...]]
    json_files: tuple[str, ...]  # their calls need a parse: indexed per graph
    # Confirmed calls per file and values derived from them (module dirs, discovered
    # projects): a file's content is fixed by the tree, so graphs of one tree share them.
    calls: dict[str, _FileCalls] = field(default_factory=dict)
    derived: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def fixed_by_tree(self) -> bool:
        """Every Terraform file is a blob of the tree (no symlink, no file walk)."""
        return len(self.scan.blobs) == len(self.scan.tf_files)

    def stored(self) -> TreeScan:
        """What the tree index keeps of this skeleton: the scan and the candidate edges
        (resolving every source again is most of `of`'s cost)."""
        scan = self.scan
        return TreeScan(
            scan.tf_files, scan.candidate_sources, scan.blobs, self.candidate_callers, self.tf_dirs
        )

    @classmethod
    def of_stored(cls, stored: TreeScan) -> _Skeleton:
        """`of` the stored scan, its candidate edges taken as stored (the entry's
        checksum says they are the ones `of` computed when it was written)."""
        scan = _as_scan(stored)
        if stored.callers is None or stored.dirs is None:
            return cls.of(scan)
        in_dir: dict[str, list[str]] = {}
        # The files with sources (a scan keeps none without), in path order as stored:
        # those of one dir stay in order. Keys only: the rows stay unsplit.
        for path in stored.sources:
            if not path.endswith(".tf.json"):
                in_dir.setdefault(path.rpartition("/")[0] or ".", []).append(path)
        return cls(
            scan,
            stored.dirs,
            stored.callers,
            {dir: tuple(files) for dir, files in in_dir.items()},
            tuple(path for path in stored.tf_files if path.endswith(".tf.json")),
        )

    @classmethod
    def of(cls, scan: _Scan) -> _Skeleton:
        callers: dict[str, set[str]] = defaultdict(set)
        in_dir: dict[str, list[str]] = defaultdict(list)
        tf_dirs: set[str] = set()
        json_files = []
        sources_of = scan.candidate_sources
        for path in scan.tf_files:
            caller = path.rpartition("/")[0] or "."  # dir_of, inlined: 10,000s of files
            tf_dirs.add(caller)
            if path.endswith(".tf.json"):
                json_files.append(path)
                continue
            sources = sources_of.get(path)
            if not sources:
                continue
            in_dir[caller].append(path)
            for source in sources:
                target = resolve_source(caller, source)
                if target is not None:
                    callers[target].add(path)
        return cls(
            scan,
            frozenset(tf_dirs),
            {target: frozenset(files) for target, files in callers.items()},
            {dir: tuple(files) for dir, files in in_dir.items()},
            tuple(json_files),
        )

    def _dirs_after(
        self,
        changed: set[str],
        old_files: _SortedPaths,
        new_files: _SortedPaths,
        files: tuple[str, ...],
    ) -> frozenset[str]:
        """`tf_dirs` of the new tree (sorted `files`): this tree's with the dirs of added
        files in and the dirs left without a file out (not 10,000 paths cut again)."""
        added = {dir_of(p) for p in changed if p in new_files and p not in old_files}
        gone = {dir_of(p) for p in changed if p in old_files and p not in new_files}
        gone = {d for d in gone - added if not _holds_a_file(files, d)}
        if not added - self.tf_dirs and not gone:
            return self.tf_dirs
        return (self.tf_dirs | added) - gone

    def updated(self, scan: _Scan, changed: Iterable[str]) -> _Skeleton:
        """The skeleton of `scan`, the scan of this one's tree with the `changed` paths
        re-read: only their contributions are taken out and put back. Equal to
        `_Skeleton.of(scan)` (tests/test_detection_index.py) at a fraction of its cost,
        and the confirmed calls of every unchanged file are kept."""
        changed = set(changed)
        old_files, new_files = _SortedPaths(self.scan.tf_files), _SortedPaths(scan.tf_files)
        callers: dict[str, set[str]] = {}  # copied on first write
        in_dir: dict[str, set[str]] = {}
        json_files = set(self.json_files)

        def edit(path: str, sources: tuple[str, ...], add: bool) -> None:
            caller = dir_of(path)
            files = in_dir.setdefault(caller, set(self.files_in_dir.get(caller, ())))
            files.add(path) if add else files.discard(path)
            for source in sources:
                target = resolve_source(caller, source)
                if target is not None:
                    found = callers.setdefault(target, set(self.candidate_callers.get(target, ())))
                    found.add(path) if add else found.discard(path)

        for path in changed:
            if path.endswith(".tf.json"):
                json_files.discard(path)
                if path in new_files:
                    json_files.add(path)
                continue
            if path in old_files and self.scan.candidate_sources.get(path):
                edit(path, self.scan.candidate_sources[path], add=False)
            if path in new_files and scan.candidate_sources.get(path):
                edit(path, scan.candidate_sources[path], add=True)
        candidate_callers = _merged(self.candidate_callers, callers, frozenset)
        files_in_dir = _merged(self.files_in_dir, in_dir, lambda f: tuple(sorted(f)))
        return _Skeleton(
            scan,
            self._dirs_after(changed, old_files, new_files, scan.tf_files),
            candidate_callers,
            files_in_dir,
            tuple(sorted(json_files)),
            # dict(): one C-level copy, so a graph of the old tree adding to it meanwhile
            # (another thread) cannot break the iteration.
            {path: calls for path, calls in dict(self.calls).items() if path not in changed},
        )


def _holds_a_file(files: tuple[str, ...], dir: str) -> bool:
    """Whether the sorted `files` have one directly in `dir` (bisection to its subtree)."""
    if dir == ".":
        return any("/" not in path for path in files)
    prefix = f"{dir}/"
    index = bisect.bisect_left(files, prefix)
    while index < len(files) and files[index].startswith(prefix):
        if "/" not in files[index][len(prefix) :]:
            return True
        index += 1
    return False


class _SortedPaths:
    """Membership in a sorted tuple of paths by bisection (no 10,000-entry set built)."""

    def __init__(self, paths: tuple[str, ...]) -> None:
        self._paths = paths

    def __contains__(self, path: str) -> bool:
        index = bisect.bisect_left(self._paths, path)
        return index < len(self._paths) and self._paths[index] == path


def _merged(
    base: Mapping[str, Any], edited: dict[str, set[str]], freeze: Callable[[set[str]], Any]
) -> Mapping[str, Any]:
    """`base` with the `edited` entries replaced (frozen by `freeze`), empty ones dropped."""
    if isinstance(base, CallerRows):  # as loaded: the rows not edited stay unsplit
        return base.replaced({key: freeze(files) for key, files in edited.items()})
    merged = dict(base)
    for key, files in edited.items():
        if files:
            merged[key] = freeze(files)
        else:
            merged.pop(key, None)
    return merged


@dataclass(frozen=True)
class _FileCalls:
    """The local module calls of one file, and the problem met reading it (if any)."""

    calls: tuple[ModuleCall, ...]
    problem: str | None = None


class _SkeletonMemo:
    """The skeletons of the last few trees of this process, by tree id."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[str, _Skeleton] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, tree: str) -> _Skeleton | None:
        with self._lock:
            found = self._entries.get(tree)
            if found is not None:
                self._entries.move_to_end(tree)
            return found

    def put(self, tree: str, skeleton: _Skeleton) -> None:
        with self._lock:
            self._entries[tree] = skeleton
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def recent(self) -> list[tuple[str, _Skeleton]]:
        """Every kept skeleton with its tree id, the most recently used first."""
        with self._lock:
            return list(reversed(self._entries.items()))


_SKELETONS = _SkeletonMemo(8)


class ModuleGraph:
    """Local module calls between the directories of one working copy.

    Build it once per checkout with `ModuleGraph.build`; queries parse lazily only the
    files they need, so asking about a few modules in a huge repo stays cheap.
    """

    def __init__(
        self,
        repo_root: Path,
        scan: _Scan,
        cache: _ParseCache,
        skeleton: _Skeleton | None = None,
    ) -> None:
        self.repo_root = repo_root
        self._scan = scan
        self._cache = cache
        skeleton = skeleton or _Skeleton.of(scan)
        self._skeleton = skeleton
        self._tf_dirs = skeleton.tf_dirs
        self._calls: dict[str, tuple[ModuleCall, ...]] = {}
        self._direct: dict[str, frozenset[str]] = {}
        # Files this graph read and could not parse (informative; a query answered from
        # the tree's memo, such as module_dirs(), reads nothing and adds nothing).
        self.problems: list[str] = []
        # Files that may call modules, by candidate target and by their own dir. Shared
        # with other graphs of the same tree: only copied when JSON files add to them.
        self._candidate_callers: Mapping[str, Collection[str]] = skeleton.candidate_callers
        self._files_in_dir: Mapping[str, Sequence[str]] = skeleton.files_in_dir
        if skeleton.json_files:
            self._candidate_callers = {k: set(v) for k, v in self._candidate_callers.items()}
            self._files_in_dir = {k: list(v) for k, v in self._files_in_dir.items()}
            for path in skeleton.json_files:
                self._index(path, (c.module_dir for c in self._calls_in(path)))

    @classmethod
    @gc_paused()
    def build(cls, repo_root: Path, cache_dir: Path | None = None) -> ModuleGraph:
        """Scan a working copy (git grep when it is a git work tree, else a file walk).

        `cache_dir` keeps hcl2 parse results by blob SHA across runs and processes.
        """
        root = Path(repo_root)
        cache = _ParseCache(Path(cache_dir) if cache_dir else None)
        if not (root / ".git").exists():
            return cls(root, _scan_tree(root), cache)
        if cache_dir is None:
            return cls(root, _scan_git(root), cache)
        index = TreeIndex(Path(cache_dir) / TREE_INDEX_DIR)
        tree = index_tree(root)
        if tree is None:
            return cls(root, _scan_git(root), cache)
        skeleton = (
            _SKELETONS.get(tree)
            or _derived_skeleton(root, tree, index)
            or _stored_skeleton(root, tree, index)
        )
        _SKELETONS.put(tree, skeleton)
        return cls(root, skeleton.scan, cache, skeleton)

    @property
    def cache_dir(self) -> Path | None:
        """The cache dir the graph was built with (None: nothing kept on disk)."""
        return self._cache.directory

    def terraform_dirs(self) -> frozenset[str]:
        """Every non-hidden directory holding `*.tf` or `*.tf.json` files."""
        return self._tf_dirs

    def modules_called_by(self, dir: str) -> tuple[ModuleCall, ...]:
        """The local module calls written in `dir` itself (not transitive)."""
        return tuple(
            c
            for f in self._files_in_dir.get(posixpath.normpath(dir), ())
            for c in self._calls_in(f)
        )

    def callers_of(self, module_dir: str) -> tuple[CallChain, ...]:
        """Every dir calling `module_dir`, directly or through other modules.

        Each caller comes with its shortest chain (breadth-first), sorted by caller.
        """
        target = posixpath.normpath(module_dir)
        chains: dict[str, tuple[str, ...]] = {}
        seen = {target}
        frontier: list[tuple[str, tuple[str, ...]]] = [(target, (target,))]
        with self._cache.batch():  # the files confirmed on the way: one commit
            while frontier:
                next_frontier = []
                for module, chain in frontier:
                    for caller in sorted(self._direct_callers(module) - seen):
                        seen.add(caller)
                        chains[caller] = chain
                        next_frontier.append((caller, (caller, *chain)))
                frontier = next_frontier
        return tuple(CallChain(caller, chains[caller]) for caller in sorted(chains))

    def module_dirs(self) -> frozenset[str]:
        """Terraform dirs that some other directory calls as a local module."""
        return self.memo(
            "module_dirs",
            lambda: frozenset(t for t in self._first_callers_prefetched() if self._has_caller(t)),
        )

    def _index(self, path: str, targets: Iterable[str]) -> None:
        """Add a JSON file's calls (only on this graph's own copies, see __init__)."""
        self._files_in_dir.setdefault(dir_of(path), []).append(path)  # type: ignore[attr-defined]
        for target in targets:
            self._candidate_callers.setdefault(target, set()).add(path)  # type: ignore[attr-defined]

    def _first_callers_prefetched(self) -> list[str]:
        """The candidate targets that are Terraform dirs, the first candidate caller of
        each asked of the disk cache in one query (it confirms most of them)."""
        targets = [t for t in self._candidate_callers if t in self._tf_dirs]
        self._prefetch(min(self._candidate_callers[t], default="") for t in targets)
        return targets

    def _has_caller(self, target: str) -> bool:
        if target in self._direct:
            return bool(self._direct[target])
        callers = self._candidate_callers.get(target, ())
        with self._cache.batch():
            return any(self._confirms(f, target) for f in sorted(callers))

    def _direct_callers(self, target: str) -> frozenset[str]:
        if target not in self._direct:
            files = self._candidate_callers.get(target, ())
            self._prefetch(files)
            self._direct[target] = frozenset(dir_of(f) for f in files if self._confirms(f, target))
        return self._direct[target]

    def _prefetch(self, files: Iterable[str]) -> None:
        """Ask the disk cache for the entries of the `files` not confirmed yet in one
        query: the ~250 callers of a changed module cost one SELECT instead of 250."""
        shared, blobs = self._skeleton.calls, self._scan.blobs
        self._cache.prefetch(
            [blobs[f] for f in files if f in blobs and f not in self._calls and f not in shared]
        )

    def _confirms(self, path: str, target: str) -> bool:
        return dir_of(path) != target and any(c.module_dir == target for c in self._calls_in(path))

    def memo(self, key: str, compute: Callable[[], _T]) -> _T:
        """`compute()`, kept for every graph of this tree in this process: for values
        derived from the graph alone (autodiscovery's projects, say)."""
        derived = self._skeleton.derived
        if not self._skeleton.fixed_by_tree:
            return compute()  # a file read from the checkout (a symlink, no git): not shared
        if key not in derived:
            derived[key] = compute()
        return derived[key]

    def _calls_in(self, path: str) -> tuple[ModuleCall, ...]:
        if path not in self._calls:
            shared = self._skeleton.calls
            found = shared.get(path)
            if found is None:
                found = self._read_calls(path)
                if path in self._scan.blobs:  # fixed by the tree: share it
                    shared[path] = found
            if found.problem is not None:
                self.problems.append(found.problem)
            self._calls[path] = found.calls
        return self._calls[path]

    def _read_calls(self, path: str) -> _FileCalls:
        caller = dir_of(path)
        raw, problem = self._raw_calls(path)
        calls = tuple(
            ModuleCall(caller, path, name, src, resolved)
            for name, src in raw
            if (resolved := resolve_source(caller, src)) is not None
        )
        return _FileCalls(calls, problem)

    def _raw_calls(self, path: str) -> tuple[tuple[tuple[str, str], ...], str | None]:
        blob = self._scan.blobs.get(path)
        found = self._entry_of_file(path) if blob is None else self._entry_of_blob(path, blob)
        if isinstance(found, str):
            return (), found
        if found is None:
            return (), None
        if "error" in found:
            # Unparseable: trust the text scan rather than miss a caller.
            candidates = self._scan.candidate_sources.get(path, ())
            return tuple(("?", s) for s in candidates), f"{path}: {found['error']}"
        return tuple((name, src) for name, src in found["calls"]), None

    def _entry_of_blob(self, path: str, blob: str) -> dict | None:
        """The parse entry of a file of the index by its blob id: no read on a cache hit;
        otherwise the checkout's file if it still holds that blob, else the blob itself
        (the work tree may have been rewritten by what was planned in it)."""
        entry = self._cache.get(blob)
        if entry is not None:
            return entry
        data = regular_file_bytes(self.repo_root, path)
        if data is None or blob_sha(data) != blob:
            data = read_blobs(self.repo_root, [blob]).get(blob)
            if data is None:
                return None
        entry = _parse_entry(path, data)
        self._cache.put(blob, entry)
        return entry

    def _entry_of_file(self, path: str) -> dict | str | None:
        """The parse entry of a file read from the checkout (no blob id: outside git, or
        a symlink); a problem (str) for a link leaving the repository."""
        file = self.repo_root / path
        # Never read outside the repository through a symlinked .tf file.
        if file.is_symlink() and not file.resolve().is_relative_to(self.repo_root.resolve()):
            return f"{path}: symlink pointing outside the repository; ignored"
        try:
            data = file.read_bytes()
        except OSError:  # listed by git but deleted in the working tree
            return None
        sha = blob_sha(data)
        entry = self._cache.get(sha)
        if entry is None:
            entry = _parse_entry(path, data)
            self._cache.put(sha, entry)
        return entry


def _parse_entry(path: str, data: bytes) -> dict:
    text = data.decode(errors="replace")
    parse = parse_json_local_calls if path.endswith(".json") else parse_hcl_local_calls
    try:
        return {"calls": [list(c) for c in parse(text)]}
    except Exception as exc:  # any parser failure means "could not tell"
        first_line = next(iter(str(exc).splitlines()), "")
        return {"error": f"cannot parse ({type(exc).__name__}): {first_line}"}
