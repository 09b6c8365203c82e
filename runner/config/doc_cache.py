"""Parsed config files kept on disk, so a new process skips the YAML of a file it has seen.

Reading a 5,000-project `gitops-runner.yaml` is ~30 ms of YAML before anything is
validated; the file changes rarely, and every process of a runner (a restart, each RQ
worker) reads the same one again. So the parsed data of a file is kept in the cache dir
(the module graph's, in the data dir) as JSON, keyed by the SHA-256 of the file's text.

Only data: what is read back is validated by the models exactly as a fresh parse would
be, so a damaged or planted entry cannot make an invalid project (never pickle: the data
dir is not trusted to run code). Each entry carries its key and the SHA-256 of its JSON;
an entry whose checksum or key does not match, or which is not well-formed, is ignored
and the file is parsed again. The checksum finds damage, not forgery: whoever can write
the data dir can still make a kept entry say other valid projects (as they can edit the
module-call cache and the tree index beside it).

Only data JSON represents exactly is kept (string keys; str, int, float, bool, null
values; lists: what the loader's plain path reads), anything else is parsed every time.
The line of each key, for error messages, is not kept: it is read from the text when a
message needs one. At most `MAX_ENTRIES` files are kept; the oldest go first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

CACHE_SUBDIR = "config-docs-v1"
MAX_ENTRIES = 16
_FORMAT = "gitops-runner config document, v1"


def text_key(text: str) -> str:
    """The key of a config file's text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class DocCache:
    """The parsed data of config files by the SHA-256 of their text, in `directory`.

    The cache is an optimisation only: any problem reading or writing it (a damaged
    entry, a full disk, no permission) is the same as an entry that is not there.
    """

    def __init__(self, directory: Path) -> None:
        self._dir = Path(directory) / CACHE_SUBDIR

    def get(self, key: str) -> dict[str, Any] | None:
        """The kept data of the text with this key, or None."""
        try:
            raw = (self._dir / f"{key}.json").read_bytes()
        except OSError:
            return None
        checksum, _, payload = raw.partition(b"\n")
        if hashlib.sha256(payload).hexdigest().encode() != checksum:
            return None
        try:
            entry = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(entry, dict) or entry.get("format") != _FORMAT:
            return None
        if entry.get("key") != key or not isinstance(entry.get("data"), dict):
            return None
        return entry["data"]

    def put(self, key: str, data: dict[str, Any]) -> None:
        """Keep `data`, the text's parsed document. The caller vouches that JSON gives it
        back exactly (tuples as lists): JSON would turn a key `1` or `true` into a string
        (the loader keeps only plain documents with string keys)."""
        try:
            payload = json.dumps({"format": _FORMAT, "key": key, "data": data}).encode()
        except (RecursionError, TypeError, ValueError):
            return  # not JSON (a date, a set) or nested deeper than the stack: not kept
        checksum = hashlib.sha256(payload).hexdigest().encode()
        with contextlib.suppress(OSError):
            self._dir.mkdir(parents=True, exist_ok=True)
            self._write_atomically(self._dir / f"{key}.json", checksum + b"\n" + payload)
            self._prune()

    def _write_atomically(self, path: Path, content: bytes) -> None:
        """A reader sees the whole entry or none: written aside, then renamed."""
        fd, temp = tempfile.mkstemp(dir=self._dir, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(content)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def _prune(self) -> None:
        entries = []
        for path in self._dir.glob("*.json"):
            with contextlib.suppress(OSError):
                entries.append((path.stat().st_mtime, path))
        entries.sort(reverse=True)
        for _, path in entries[MAX_ENTRIES:]:
            with contextlib.suppress(OSError):
                path.unlink()
