"""What `terraform init` in a directory depends on, read without running Terraform.

Two questions: whether init can write to the shared plugin cache, and whether the
inputs of a previous successful init are unchanged (so it need not run again).

Whether init can write to the shared plugin cache:

Inits are serialised on the plugin cache because two writers corrupt it. But an
init only writes there when it must install a provider that is not cached yet;
when every provider it needs is already in the cache (the common, warm case) or
it needs none, it only reads, and the lock would merely make parallel plans wait
for each other. This module answers the question conservatively: any doubt
means "may write" and the lock is taken.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".terraform.lock.hcl"

_NEEDS_PROVIDER = re.compile(
    r'required_providers|^\s*provider\s+"|^\s*(?:resource|data|ephemeral)\s+"(?!terraform_)',
    re.M,
)
_MODULE_SOURCE = re.compile(r'^\s*source\s*=\s*"([^"]*)"', re.M)
_MAX_MODULE_DEPTH = 20


def init_may_write_plugin_cache(workdir: Path) -> bool:
    """False only when init provably needs no provider at all.

    A provider already in the cache is not enough: installing from a filesystem
    mirror re-links the cache entry even when it exists, and a parallel init then
    finds it missing ("Failed to load plugin schemas"). So any lock file, and any
    provider use in the configuration, means the lock is taken.
    """
    try:
        if (workdir / LOCK_FILE).is_file():
            return True
        return _needs_any_provider(workdir)
    except (OSError, UnicodeDecodeError):
        return True


def _needs_any_provider(workdir: Path) -> bool:
    """Any provider use in the root module or the local modules it calls."""
    for text in _module_texts(workdir, set(), 0):
        if text is None or _NEEDS_PROVIDER.search(text):
            return True
    return False


def _module_texts(directory: Path, seen: set[Path], depth: int) -> Iterator[str | None]:
    """The .tf texts of a module and its local modules; None marks something unknowable."""
    directory = directory.resolve()
    if directory in seen:
        return
    if depth > _MAX_MODULE_DEPTH or not directory.is_dir():
        yield None
        return
    seen.add(directory)
    for path in sorted(directory.glob("*.tf")) + sorted(directory.glob("*.tf.json")):
        text = path.read_text()
        if path.suffix == ".json":
            yield None  # JSON syntax: not scanned, assume providers
            return
        yield text
        for source in _MODULE_SOURCE.findall(text):
            if source.startswith(("./", "../")):
                yield from _module_texts(directory / source, seen, depth + 1)
            else:
                yield None  # a registry or git module may need any provider


def init_inputs_digest(workdir: Path, identity: str) -> str | None:
    """A digest of everything a successful init depended on; None when unknowable.

    The root module's and its local modules' configuration, the dependency lock file,
    and `identity` (the Terraform binary and CLI configuration). Registry or git
    modules make it unknowable: their remote content may have moved.
    """
    digest = hashlib.sha256(identity.encode())
    try:
        for text in _module_texts(workdir, set(), 0):
            if text is None:
                return None
            digest.update(text.encode())
        lock_file = workdir / LOCK_FILE
        if lock_file.is_file():
            digest.update(lock_file.read_bytes())
    except (OSError, UnicodeDecodeError):
        return None
    return digest.hexdigest()
