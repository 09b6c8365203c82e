"""Initialised `.terraform` directories kept by what init depends on, reused across
worktrees, commits and projects.

Every new pull request gets a new worktree, so every project in it would run
`terraform init` again although nothing init depends on changed (init_key.py says
what that is). After a successful init in a directory that had no `.terraform`, its
`.terraform` (and the lock file init wrote, if any) is copied into an entry with a
manifest of SHA-256 checksums; the next directory with the same key gets a copy
instead of running Terraform.

Trust rules:
- Entries are copied in and out, never hard-linked or symlinked into a checkout: a
  file a plan writes in its `.terraform` cannot change the entry.
- A restore re-hashes every file against the manifest while it copies; any mismatch,
  unexpected file type or symlink that leads anywhere but into the runner's plugin
  cache discards the entry and init runs for real.
- Restoring only ever creates new paths (O_EXCL, no symlink followed): a checkout that
  already has a `.terraform` or a lock file of its own is left alone.
- Entries expire after `max_age_s`: like init in a kept directory, a cached entry does
  not pick up a new release of a module that matches the same version constraint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TERRAFORM_DIR = ".terraform"
LOCK_FILE = ".terraform.lock.hcl"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# Per-directory files an entry never carries: the selected workspace and our markers.
EXCLUDED = frozenset({"environment", "gitops-runner-init.sha256", "gitops-runner-init-cache"})
# Written into a restored `.terraform`: which entry it came from (see Terraform.plan).
RESTORED_MARKER = "gitops-runner-init-cache"
_CHUNK = 1 << 20


class PoisonedEntry(Exception):
    """An entry's content does not match its manifest."""


@dataclass(frozen=True)
class InitCacheStats:
    """Hits and misses of this process, for the benchmarks and logs."""

    hits: int
    misses: int
    discarded: int


class InitCache:
    """Entries under `root`, one directory per key; safe for many processes at once."""

    def __init__(
        self,
        root: Path,
        plugin_cache_dir: Path,
        *,
        max_entries: int = 512,
        max_age_s: float = 24 * 3600,
    ) -> None:
        self.root = root
        self._entries = root / "entries"
        self._scratch = root / "tmp"
        self._plugin_cache = plugin_cache_dir.resolve()
        self._max_entries = max_entries
        self._max_age_s = max_age_s
        self._hits = self._misses = self._discarded = 0
        self._in_flight: dict[str, threading.Lock] = {}
        self._in_flight_guard = threading.Lock()

    @property
    def stats(self) -> InitCacheStats:
        return InitCacheStats(self._hits, self._misses, self._discarded)

    @contextlib.contextmanager
    def single_flight(self, key: str) -> Iterator[None]:
        """Held around restore-or-init of `key`: projects of one PR often share a key, and
        on a busy machine one init and N-1 copies beat N inits running side by side."""
        with self._in_flight_guard:
            lock = self._in_flight.setdefault(key, threading.Lock())
        with lock:
            yield

    def restore(self, key: str, workdir: Path) -> bool:
        """Put the entry for `key` in place as `workdir/.terraform`; False on a miss.

        Never touches a checkout that already has a `.terraform`: that one is Terraform's.
        """
        entry = self._entries / key
        manifest = self._manifest(entry)
        if manifest is None or os.path.lexists(workdir / TERRAFORM_DIR):
            self._misses += 1
            return False
        if manifest.get("lock_file") and os.path.lexists(workdir / LOCK_FILE):
            self._misses += 1
            return False
        try:
            os.mkdir(workdir / TERRAFORM_DIR)  # fails if anything (a symlink too) appeared
        except OSError:
            self._misses += 1
            return False
        try:
            self._copy_out(entry, manifest, workdir)
        except (PoisonedEntry, OSError, KeyError, TypeError, ValueError):
            shutil.rmtree(workdir / TERRAFORM_DIR, ignore_errors=True)
            self.discard(key)
            self._misses += 1
            return False
        (workdir / TERRAFORM_DIR / RESTORED_MARKER).write_text(key)
        with contextlib.suppress(OSError):
            os.utime(entry)  # recently used: pruned last
        self._hits += 1
        return True

    def store(self, key: str, workdir: Path, *, lock_file_was_absent: bool) -> bool:
        """Keep `workdir/.terraform` (fresh from a successful init) under `key`.

        `lock_file_was_absent`: the directory had no lock file before init, so one init
        wrote goes with the entry. False when the directory holds something an entry may not carry.
        """
        if (self._entries / key / MANIFEST).is_file():
            return True
        scratch = self._scratch / uuid.uuid4().hex
        try:
            manifest = _copy_in(workdir, scratch, self._plugin_cache, lock_file_was_absent)
            if manifest is None:
                return False
            (scratch / MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
            self._entries.mkdir(parents=True, exist_ok=True)
            os.rename(scratch, self._entries / key)  # atomic; loses to a concurrent writer
        except OSError:
            return False
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self._prune()
        return True

    def discard(self, key: str) -> None:
        """Remove an entry (poisoned, or rejected by Terraform)."""
        entry = self._entries / key
        doomed = self._scratch / f"discard-{uuid.uuid4().hex}"
        try:
            self._scratch.mkdir(parents=True, exist_ok=True)
            os.rename(entry, doomed)  # atomic: no reader sees half an entry
        except OSError:
            return
        self._discarded += 1
        shutil.rmtree(doomed, ignore_errors=True)

    def _manifest(self, entry: Path) -> dict | None:
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, dict) or manifest.get("version") != FORMAT_VERSION:
            return None
        if time.time() - float(manifest.get("created", 0)) > self._max_age_s:
            self.discard(entry.name)
            return None
        return manifest

    def _copy_out(self, entry: Path, manifest: dict, workdir: Path) -> None:
        target = workdir / TERRAFORM_DIR
        _check_no_path_below_a_link(manifest)
        for relative in manifest["dirs"]:
            os.mkdir(target / _safe(relative))
        for relative, link in manifest["symlinks"].items():
            _check_link(link, self._plugin_cache)
            os.symlink(link, target / _safe(relative))
        for relative, (digest, mode) in manifest["files"].items():
            _copy_checked(entry / "tree" / _safe(relative), target / _safe(relative), digest, mode)
        if manifest.get("lock_file"):
            # Last, so a poisoned entry never leaves a lock file behind.
            digest, mode = manifest["lock_file"]
            _copy_checked(entry / "lock.hcl", workdir / LOCK_FILE, digest, mode)

    def _prune(self) -> None:
        """Drop the least recently used entries beyond `max_entries`."""
        try:
            entries = sorted(self._entries.iterdir(), key=lambda p: p.stat().st_mtime)
        except OSError:
            return
        for stale in entries[: max(0, len(entries) - self._max_entries)]:
            self.discard(stale.name)


def _copy_in(
    workdir: Path, scratch: Path, plugin_cache: Path, lock_file_was_absent: bool
) -> dict | None:
    """Copy `.terraform` into `scratch/tree`; the manifest, or None if it must not be kept."""
    source = workdir / TERRAFORM_DIR
    if source.is_symlink() or (source.exists() and not source.is_dir()):
        return None
    tree = scratch / "tree"
    tree.mkdir(parents=True)
    manifest: dict = {
        "version": FORMAT_VERSION,
        "created": time.time(),
        "dirs": [],
        "symlinks": {},
        "files": {},
        "lock_file": None,
    }
    for dirpath, dirnames, filenames in os.walk(source):
        here = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = here / name
            relative = path.relative_to(source).as_posix()
            if here == source and name in EXCLUDED:
                continue
            if not _add(path, relative, tree, manifest, plugin_cache):
                return None
        dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]
    lock = workdir / LOCK_FILE
    if lock_file_was_absent and os.path.lexists(lock):
        if lock.is_symlink() or not lock.is_file():
            return None
        manifest["lock_file"] = [_copy_hashed(lock, scratch / "lock.hcl"), _mode(lock)]
    return manifest


def _add(path: Path, relative: str, tree: Path, manifest: dict, plugin_cache: Path) -> bool:
    """Record one path of `.terraform` in the manifest; False for what may not be kept."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        link = os.readlink(path)
        try:
            _check_link(link, plugin_cache)
        except PoisonedEntry:
            return False
        manifest["symlinks"][relative] = link
    elif stat.S_ISDIR(info.st_mode):
        (tree / relative).mkdir()
        manifest["dirs"].append(relative)
    elif stat.S_ISREG(info.st_mode):
        manifest["files"][relative] = [_copy_hashed(path, tree / relative), _mode(path)]
    else:
        return False
    return True


def _check_link(link: str, plugin_cache: Path) -> None:
    """Terraform links providers from the plugin cache; any other symlink is refused."""
    target = Path(os.path.normpath(link))
    # Lexically: the cache's own entries may link on to a filesystem mirror.
    if not target.is_absolute() or not target.is_relative_to(plugin_cache):
        raise PoisonedEntry(f"symlink to {link} leads outside the plugin cache")
    if not target.exists():
        raise PoisonedEntry(f"plugin cache entry {link} is gone")


def _check_no_path_below_a_link(manifest: dict) -> None:
    """A file or directory "below" a symlink would be written through it (O_NOFOLLOW
    only guards the last component), into the plugin cache: refuse the entry."""
    links = set(manifest["symlinks"])
    for relative in [*manifest["dirs"], *manifest["files"], *links]:
        parents = Path(relative).parents
        if any(parent.as_posix() in links for parent in parents):
            raise PoisonedEntry(f"{relative} lies below a symlink")


def _safe(relative: str) -> str:
    parts = Path(relative).parts
    if not parts or Path(relative).is_absolute() or ".." in parts:
        raise PoisonedEntry(f"path {relative!r} leaves the directory")
    return relative


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _copy_hashed(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    with open(source, "rb") as reader, open(target, "xb") as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


def _copy_checked(source: Path, target: Path, expected: str, mode: int) -> None:
    """Copy while hashing; a file that does not match its manifest poisons the entry."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    digest = hashlib.sha256()
    with open(source, "rb") as reader, os.fdopen(os.open(target, flags, mode & 0o777), "wb") as w:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            w.write(chunk)
    if digest.hexdigest() != expected:
        target.unlink()  # created above (O_EXCL): ours to remove
        raise PoisonedEntry(f"{source} does not match its checksum")
