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
import platform
import re
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".terraform.lock.hcl"

_LOCKED_PROVIDER = re.compile(r'provider\s+"([^"]+)"\s*\{[^}]*?version\s*=\s*"([^"]+)"', re.S)
_NEEDS_PROVIDER = re.compile(
    r'required_providers|^\s*provider\s+"|^\s*(?:resource|data|ephemeral)\s+"(?!terraform_)',
    re.M,
)
_MODULE_SOURCE = re.compile(r'^\s*source\s*=\s*"([^"]*)"', re.M)
_MAX_MODULE_DEPTH = 20


def init_may_write_plugin_cache(workdir: Path, plugin_cache_dir: Path) -> bool:
    """False only when init provably needs nothing that is missing from the cache."""
    lock_file = workdir / LOCK_FILE
    try:
        if lock_file.is_file():
            return not _all_locked_providers_cached(lock_file.read_text(), plugin_cache_dir)
        return _needs_any_provider(workdir)
    except (OSError, UnicodeDecodeError):
        return True


def _all_locked_providers_cached(lock_text: str, cache: Path) -> bool:
    platform_dir = _platform()
    for address, version in _LOCKED_PROVIDER.findall(lock_text):
        if not (cache / address / version / platform_dir).is_dir():
            return False
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


def _platform() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        machine, machine
    )
    return f"{platform.system().lower()}_{arch}"


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
