"""The local-module graph: which directory calls which local module (`./…`, `../…`).

Change detection needs "who calls modules/tags, even through other modules", and
autodiscovery needs "which directories are only modules". Parsing every `.tf` file of
a large monorepo with python-hcl2 takes seconds, so the graph works in two steps:

1. A text pre-filter (`git grep`, or a Python scan outside git) finds every line that
   looks like `source = "./…"` / `"../…"`. Terraform only accepts a literal string on
   the `source` line, so this is a superset of the real calls: candidate edges. What
   they imply before any file is parsed (`_Skeleton`: the Terraform dirs, the
   candidate callers of each dir) depends on the tree alone.
2. A candidate edge is confirmed only when it is needed, by reading that one file's
   top-level `module` blocks (so comments, heredocs and `source` attributes of
   resources or provisioners do not count): a token pass for plain files
   (hcl_scan.py), python-hcl2 for everything else. Results are cached by git blob SHA
   in memory and, optionally, in a cache directory.

With a cache directory the graph is the graph of the checkout's index tree, and its
skeleton is kept by tree id, in this process and in the tree index (tree_index.py);
`_skeleton_of` is the one place that chooses how a tree's skeleton is obtained.
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
import threading
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from runner.gc_pause import gc_paused
from runner.git_command import run_git
from runner.terraform.hcl_scan import lexical_local_calls
from runner.terraform.tree_index import (
    TreeIndex,
    TreeScan,
    apply_changes,
    blob_sha,
    checkout_blobs,
    diff_from_newest,
    index_tree,
    indexed_blobs,
    regular_file_bytes,
    replaced_rows,
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
_V = TypeVar("_V")


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
    proc = run_git(repo_root, *args)
    # git grep exits 1 when nothing matched.
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and proc.stderr):
        raise RuntimeError(f"git {args[0]} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def _sources_in_line(line: str) -> list[str]:
    return [] if _COMMENT_LINE_RE.match(line) else _TF_SOURCE_RE.findall(line)


def _scan_git(repo_root: Path) -> TreeScan:
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
    return TreeScan(
        tuple(tf_files),
        {p: tuple(s) for p, s in sources.items()},
        {p: blobs[p] for p in tf_files if p in blobs},
    )


def _listed(path: str) -> bool:
    """A path the git scan lists: a Terraform file outside hidden directories."""
    return _is_tf(path) and not is_hidden(path)


def _text_sources(path: str, text: str) -> tuple[str, ...]:
    """Candidate local sources in a file's text, as `git grep -I` finds them: `.tf`
    files only, lines split at newlines, nothing in a binary file (NUL in its head)."""
    if not path.endswith(".tf") or "\0" in text[:_GIT_BINARY_PROBE]:
        return ()
    return tuple(s for line in text.split("\n") for s in _sources_in_line(line))


def _scan_tree(repo_root: Path) -> TreeScan:
    """The scan of a directory outside git (no blob ids): a file walk, the text of each
    `.tf` file searched as `git grep` searches it."""
    tf_files: list[str] = []
    sources: dict[str, tuple[str, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(repo_root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(repo_root).as_posix()
        for name in filenames:
            if name.startswith(".") or not _is_tf(name):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            data = _file_bytes(repo_root, rel)
            if isinstance(data, str):
                continue  # a link leaving the repository: never read
            tf_files.append(rel)
            found = _text_sources(rel, data.decode(errors="replace")) if data else ()
            if found:
                sources[rel] = found
    return TreeScan(tuple(sorted(tf_files)), sources, {})


def _file_bytes(repo_root: Path, path: str) -> bytes | str | None:
    """A file of the checkout that has no blob id to check it by (outside git, or a
    link). Links are followed inside the repository only: a problem (str) for one
    leaving it. Only a regular file is read (a FIFO is not waited on): None otherwise."""
    file = repo_root / path
    if file.is_symlink():
        file = file.resolve()
        if not file.is_relative_to(repo_root.resolve()):
            return f"{path}: symlink pointing outside the repository; ignored"
    return regular_file_bytes(file.parent, file.name)


# --- the skeleton of a tree ----------------------------------------------------------------


def _skeleton_of(root: Path, cache_dir: Path | None) -> _Skeleton:
    """The skeleton of the checkout at `root`. Every way below gives what a full scan
    gives (tests/test_detection_index.py compares them field by field); each exists for
    a case the ones before it cannot serve:

    - A file walk: outside git there is no blob id nor tree id to key anything by.
    - A full `git grep` scan: without a cache dir nothing is kept (the CLI, a local
      plan); with one, when nothing kept can be brought to this tree (a first run,
      entries of other repositories only, a diff too large to be cheaper).
    - This process's skeleton of the tree: the same tree again (a re-plan, the next
      event of an unchanged PR) costs nothing, and keeps the calls confirmed so far.
    - Derived from a skeleton this process keeps for another tree of the repository
      (a PR's next push, a PR after its base branch): only the diff is read, the calls
      confirmed for unchanged files are kept, and no entry is loaded.
    - Loaded from the tree index: a tree another process stored (after a restart, on
      another worker): one file read, no source resolved again.
    - Derived from the newest stored entry of a tree the repository holds: a new
      process and a tree nobody stored yet, typically a PR's first push after a
      restart, from its base branch's entry.
    """
    if not (root / ".git").exists():
        return _Skeleton.of(_scan_tree(root))
    tree = index_tree(root) if cache_dir is not None else None
    if cache_dir is None or tree is None:
        return _Skeleton.of(_scan_git(root))
    index = TreeIndex(cache_dir / TREE_INDEX_DIR)
    skeleton = (
        _SKELETONS.get(tree)
        or _derived_from_kept(root, tree, index)
        or _loaded(index, tree)
        or _derived_from_stored_or_scanned(root, tree, index)
    )
    _SKELETONS[tree] = skeleton
    return skeleton


def _derived_from_kept(root: Path, tree: str, index: TreeIndex) -> _Skeleton | None:
    """From a skeleton of this process; stored unless the index has the tree already."""
    kept = dict(_SKELETONS.newest_first())
    skeleton = _derived(root, tree, list(kept), kept.get)
    if skeleton is not None and not index.has(tree):
        index.store(tree, skeleton.stored())
    return skeleton


def _derived_from_stored_or_scanned(root: Path, tree: str, index: TreeIndex) -> _Skeleton:
    """From a stored entry, else a full scan; stored (over a damaged entry, if any)."""
    base_of = functools.partial(_loaded, index)
    skeleton = _derived(root, tree, index.trees(), base_of) or _Skeleton.of(_scan_git(root))
    index.store(tree, skeleton.stored())
    return skeleton


def _derived(
    root: Path, tree: str, bases: Sequence[str], skeleton_of: Callable[[str], _Skeleton | None]
) -> _Skeleton | None:
    """`tree`'s skeleton from that of the newest of `bases` (tree ids) the repository
    holds, the paths of their diff re-read; None when there is none."""
    found = diff_from_newest(root, tree, bases)
    if found is None:
        return None
    base_tree, changes = found
    base = skeleton_of(base_tree)
    if base is None:
        return None
    scan = apply_changes(root, base.scan, changes, _listed, _text_sources)
    return base.updated(scan, [change.path for change in changes])


def _loaded(index: TreeIndex, tree: str) -> _Skeleton | None:
    stored = index.load(tree)
    return _Skeleton.of_stored(stored) if stored is not None else None


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
    """Local module calls per file content (git blob SHA), in memory (`_PARSED`, shared by
    every graph of this process: a content id means the same calls in any tree) and, with
    a cache dir, in one SQLite file there that processes share (WAL: readers never wait).

    The disk cache is an optimisation only: any SQLite problem (damaged file, full
    disk, lock timeout) turns it off for this graph instead of failing detection.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._memory = _PARSED
        self._db = _open_db(directory) if directory is not None else None
        # Asked of the disk and not there: not asked again by this graph.
        self._absent: set[str] = set()
        # What `put` was given inside `batch()`, written when it ends; None outside one.
        self._pending: list[tuple[str, str]] | None = None

    def get(self, sha: str) -> dict | None:
        if sha not in self._memory:
            self.prefetch((sha,))
        return self._memory.get(sha)

    def prefetch(self, shas: Iterable[str]) -> None:
        """The disk entries of `shas` read into memory in one query per 500; the ones
        absent are remembered, so `get` does not ask for them again."""
        wanted = [sha for sha in shas if sha not in self._memory and sha not in self._absent]
        for start in range(0, len(wanted), _PREFETCH_CHUNK):
            chunk = wanted[start : start + _PREFETCH_CHUNK]
            rows = self._on_disk(functools.partial(_select_entries, shas=chunk))
            if rows is None:
                return  # no disk cache (or it just failed): `get` finds nothing either
            for sha, text in rows:
                entry = _decode_entry(text)
                if entry is not None:
                    self._memory[sha] = entry
            self._absent.update(sha for sha in chunk if sha not in self._memory)

    def put(self, sha: str, entry: dict) -> None:
        self._absent.discard(sha)
        self._memory[sha] = entry
        row = (sha, json.dumps(entry))
        if self._pending is None:
            self._on_disk(functools.partial(_insert_entries, rows=[row]))
        else:
            self._pending.append(row)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """The puts of the block written at its end, in one transaction and one
        statement: one commit instead of one per file (~40 µs each: 250 confirmed
        callers of a changed module, ~10 ms), none when nothing is put (a warm query),
        and SQLite's write lock held only while writing, never while files are parsed.
        Nests; what was put is written even when the block fails (each entry stands
        on its own)."""
        if self._pending is not None:  # inside another batch: that one writes
            yield
            return
        self._pending = []
        try:
            yield
        finally:
            rows, self._pending = self._pending, None
            if rows:
                self._on_disk(functools.partial(_insert_entries, rows=rows))

    def _on_disk(self, work: Callable[[sqlite3.Connection], _T]) -> _T | None:
        """`work` done on the disk cache; None without one, or when it fails: the first
        failure turns the disk cache off."""
        if self._db is None:
            return None
        try:
            return work(self._db)
        except (sqlite3.Error, OSError):
            self._db = None
            return None


class _BoundedMemo(dict[str, _V]):
    """A dict of the `size` entries put most recently (putting an entry again makes it
    the newest): the skeletons of the last few trees, and the parse entries of file
    contents (a few hundred bytes each: a monorepo's files fit many times over)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size
        self._lock = threading.Lock()  # graphs are built and queried in many threads

    def __setitem__(self, key: str, value: _V) -> None:
        with self._lock:
            self.pop(key, None)
            super().__setitem__(key, value)
            if len(self) > self._size:
                del self[next(iter(self))]

    def newest_first(self) -> list[tuple[str, _V]]:
        with self._lock:
            return list(reversed(self.items()))


_PARSED: _BoundedMemo[dict] = _BoundedMemo(200_000)
_SKELETONS: _BoundedMemo[_Skeleton] = _BoundedMemo(8)
# Below SQLite's default limit of host parameters per statement (999 before 3.32).
_PREFETCH_CHUNK = 500


def _open_db(directory: Path) -> sqlite3.Connection | None:
    """The module-call cache file of `directory`; None when it cannot be opened."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # Autocommit; the graph may be handed to another thread, never shared by two.
        db = sqlite3.connect(
            directory / f"{_cache_namespace()}.sqlite3",
            timeout=5,
            isolation_level=None,
            check_same_thread=False,
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS calls (sha TEXT PRIMARY KEY, entry TEXT)")
    except (sqlite3.Error, OSError):
        return None
    return db


def _select_entries(db: sqlite3.Connection, shas: list[str]) -> list[tuple[str, str]]:
    marks = ",".join("?" * len(shas))
    return db.execute(f"SELECT sha, entry FROM calls WHERE sha IN ({marks})", shas).fetchall()


def _insert_entries(db: sqlite3.Connection, rows: list[tuple[str, str]]) -> None:
    with db:  # BEGIN … COMMIT, or ROLLBACK when it fails
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO calls (sha, entry) VALUES (?, ?)", rows)


def _decode_entry(text: str) -> dict | None:
    """A stored parse entry if it has a shape `_parse_entry` gives; None for a damaged or
    foreign one (the file is parsed again)."""
    try:
        entry = json.loads(text)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("error"), str):
        return entry
    calls = entry.get("calls")
    if isinstance(calls, list) and all(_is_name_and_source(call) for call in calls):
        return entry
    return None


def _is_name_and_source(call: object) -> bool:
    return isinstance(call, list) and len(call) == 2 and all(isinstance(s, str) for s in call)


@dataclass(frozen=True)
class _Skeleton:
    """What a tree's text scan implies before any file is parsed: the Terraform dirs and
    the candidate edges. It depends on the tree alone, so graphs of one tree share it."""

    scan: TreeScan
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
        return replace(self.scan, callers=self.candidate_callers, dirs=self.tf_dirs)

    @classmethod
    def of_stored(cls, stored: TreeScan) -> _Skeleton:
        """`of` the stored scan, its candidate edges taken as stored (the entry's
        checksum says they are the ones `of` computed when it was written)."""
        if stored.callers is None or stored.dirs is None:
            return cls.of(stored)
        in_dir: dict[str, list[str]] = {}
        # The files with sources (a scan keeps none without), in path order as stored:
        # those of one dir stay in order. Keys only: the rows stay unsplit.
        for path in stored.candidate_sources:
            if not path.endswith(".tf.json"):
                in_dir.setdefault(path.rpartition("/")[0] or ".", []).append(path)
        return cls(
            stored,
            stored.dirs,
            stored.callers,
            {dir: tuple(files) for dir, files in in_dir.items()},
            tuple(path for path in stored.tf_files if path.endswith(".tf.json")),
        )

    @classmethod
    def of(cls, scan: TreeScan) -> _Skeleton:
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

    def updated(self, scan: TreeScan, changed: Iterable[str]) -> _Skeleton:
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
        candidate_callers = replaced_rows(
            self.candidate_callers, {target: frozenset(f) for target, f in callers.items()}
        )
        files_in_dir = replaced_rows(
            self.files_in_dir, {dir: tuple(sorted(f)) for dir, f in in_dir.items()}
        )
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


@dataclass(frozen=True)
class _FileCalls:
    """The local module calls of one file, and the problem met reading it (if any)."""

    calls: tuple[ModuleCall, ...]
    problem: str | None = None


class ModuleGraph:
    """Local module calls between the directories of one working copy.

    Build it once per checkout with `ModuleGraph.build`; queries parse lazily only the
    files they need, so asking about a few modules in a huge repo stays cheap.
    """

    def __init__(self, repo_root: Path, skeleton: _Skeleton, cache: _ParseCache) -> None:
        self.repo_root = repo_root
        self._skeleton = skeleton
        self._scan = skeleton.scan
        self._cache = cache
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

        `cache_dir` keeps hcl2 parse results by blob SHA across runs and processes, and
        the text scan by git tree id (see `_skeleton_of`).
        """
        root = Path(repo_root)
        directory = Path(cache_dir) if cache_dir else None
        return cls(root, _skeleton_of(root, directory), _ParseCache(directory))

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
        return self.memo("module_dirs", self._called_dirs)

    def _index(self, path: str, targets: Iterable[str]) -> None:
        """Add a JSON file's calls (only on this graph's own copies, see __init__)."""
        self._files_in_dir.setdefault(dir_of(path), []).append(path)  # type: ignore[attr-defined]
        for target in targets:
            self._candidate_callers.setdefault(target, set()).add(path)  # type: ignore[attr-defined]

    def _called_dirs(self) -> frozenset[str]:
        targets = [t for t in self._candidate_callers if t in self._tf_dirs]
        # The first candidate caller of each target confirms most: asked in one query.
        self._prefetch(min(self._candidate_callers[t], default="") for t in targets)
        with self._cache.batch():
            return frozenset(t for t in targets if self._has_caller(t))

    def _has_caller(self, target: str) -> bool:
        if target in self._direct:
            return bool(self._direct[target])
        callers = self._candidate_callers.get(target, ())
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
        entry = self._entry(path)
        if entry is None or isinstance(entry, str):
            return _FileCalls((), entry)
        raw, problem = entry.get("calls", ()), None
        if "error" in entry:
            # Unparseable: trust the text scan rather than miss a caller.
            raw = [("?", s) for s in self._scan.candidate_sources.get(path, ())]
            problem = f"{path}: {entry['error']}"
        caller = dir_of(path)
        calls = tuple(
            ModuleCall(caller, path, name, src, resolved)
            for name, src in raw
            if (resolved := resolve_source(caller, src)) is not None
        )
        return _FileCalls(calls, problem)

    def _entry(self, path: str) -> dict | str | None:
        """The parse entry of a file by its content id: a cache hit reads nothing, a miss
        is parsed and kept. A file of the tree is read from the checkout while it still
        holds the blob, else from the blob (what was planned in the checkout may have
        rewritten it); one without a blob id (outside git, a link) as `_file_bytes`
        reads it, which gives a problem (str) for a link leaving the repository."""
        blob = self._scan.blobs.get(path)
        data: bytes | str | None = None  # with a blob id: read on a cache miss only
        if blob is None:
            data = _file_bytes(self.repo_root, path)
            if not isinstance(data, bytes):
                return data
            blob = blob_sha(data)
        entry = self._cache.get(blob)
        if entry is None:
            if data is None:
                data = checkout_blobs(self.repo_root, {blob: path}).get(blob)
            if data is not None:
                entry = _parse_entry(path, data)
                self._cache.put(blob, entry)
        return entry


def _parse_entry(path: str, data: bytes) -> dict:
    text = data.decode(errors="replace")
    parse = parse_json_local_calls if path.endswith(".json") else parse_hcl_local_calls
    try:
        return {"calls": [list(c) for c in parse(text)]}
    except Exception as exc:  # any parser failure means "could not tell"
        first_line = next(iter(str(exc).splitlines()), "")
        return {"error": f"cannot parse ({type(exc).__name__}): {first_line}"}
