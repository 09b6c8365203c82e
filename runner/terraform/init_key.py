"""The cache key of an initialised `.terraform`: only what `terraform init` depends on.

`init` installs providers, downloads modules and records the backend. What it installs
follows from a few parts of the configuration, not from resource bodies, so two commits
(or two projects) that differ only in resource arguments can share one initialised
`.terraform` (see init_cache.py). The key covers, for the root module and every local
module it calls (recursively):

- the whole `terraform` block (required_providers, backend, cloud, required_version),
- each `module` block's label, `source`, `version` and `providers`,
- the type and `provider` argument of every resource, data and ephemeral block, every
  `provider` block's name, every `import` and `removed` block, every provider-defined
  function (`provider::NAME::...`): each can make init install a provider,
- the whole text of JSON-syntax and OpenTofu files (not parsed: any change counts),
- the dependency lock file, byte for byte,

plus the caller's `identity` (Terraform binary and version, CLI configuration, TF_*
environment). The key is a SHA-256: no backend value (which may hold a credential)
is ever written out as text. Files are read by the token pass of hcl_scan.py, not
parsed (a parse cost more than the plan it saved); anything unreadable, or anything that
pass is unsure of, gives no key (None), and init runs for real.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from runner.terraform.hcl_scan import HclAttribute, HclBlock, Token, hcl_body, plain_string

LOCK_FILE = ".terraform.lock.hcl"
# Blocks that can make init install a provider, wherever they are nested (a `data`
# block inside a `check` block counts as much as a top-level one).
_PROVIDER_BLOCKS = frozenset({"resource", "data", "ephemeral", "provider", "import", "removed"})
_MODULE_ARGUMENTS = frozenset({"source", "version", "providers"})
_PROVIDER_FUNCTION = re.compile(r"provider::[\w-]+::")
_UNPARSED_SUFFIXES = (".tf.json", ".tofu", ".tofu.json")
_MAX_MODULE_DEPTH = 20
_MEMO_LIMIT = 4096


class _Unknowable(Exception):
    """The key cannot be computed; init must run."""


def init_cache_key(workdir: Path, identity: str) -> str | None:
    """The SHA-256 key of what init in `workdir` depends on; None when unknowable."""
    digest = hashlib.sha256(b"init-key-v2\0" + identity.encode())
    try:
        for part in _module_parts(workdir, workdir, set(), 0):
            digest.update(part.encode())
            digest.update(b"\0")
        digest.update(_lock_file_part(workdir))
    except (_Unknowable, OSError, UnicodeDecodeError):
        return None
    return digest.hexdigest()


def _lock_file_part(workdir: Path) -> bytes:
    lock_file = workdir / LOCK_FILE
    if lock_file.is_symlink():
        raise _Unknowable("the lock file is a symlink")
    if not lock_file.exists():
        return b"no-lock-file"
    if not lock_file.is_file():
        raise _Unknowable("the lock file is not a regular file")
    return b"lock-file\0" + lock_file.read_bytes()


def _module_parts(root: Path, directory: Path, seen: set[Path], depth: int) -> Iterator[str]:
    """The init-relevant parts of a module and, recursively, of its local modules."""
    resolved = directory.resolve()
    if resolved in seen:
        return
    if depth > _MAX_MODULE_DEPTH or not resolved.is_dir():
        raise _Unknowable(f"module directory {directory} is missing or too deep")
    seen.add(resolved)
    # Lexical (no symlink resolution): the same `source` strings give the same part.
    yield f"module:{os.path.relpath(os.path.normpath(directory), os.path.normpath(root))}"
    for path in sorted(resolved.iterdir()):
        if not path.name.endswith((".tf", *_UNPARSED_SUFFIXES)):
            continue
        if not path.is_file():  # a FIFO or device planted as `x.tf` must not hang the read
            raise _Unknowable(f"{path} is not a regular file")
        if path.name.endswith(_UNPARSED_SUFFIXES):
            yield f"file:{path.name}:{hashlib.sha256(path.read_bytes()).hexdigest()}"
        elif path.suffix == ".tf":
            parts, local_sources = _file_parts(path.read_text())
            yield f"file:{path.name}"
            yield from parts
            for source in local_sources:
                yield from _module_parts(root, directory / source, seen, depth + 1)


_memo: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
_memo_lock = threading.Lock()


def _file_parts(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(init-relevant parts, local module sources) of one HCL file, memoised by content."""
    content_id = hashlib.sha256(text.encode()).hexdigest()
    with _memo_lock:
        known = _memo.get(content_id)
    if known is not None:
        return known
    body = hcl_body(text)
    if body is None:
        raise _Unknowable("a file the token pass cannot read")
    blocks = [item for item in body if isinstance(item, HclBlock)]
    parts = [part for block in blocks for part in _block_parts(block)]
    parts += sorted(set(_PROVIDER_FUNCTION.findall(text)))
    result = (tuple(parts), tuple(_local_sources(blocks)))
    with _memo_lock:
        if len(_memo) >= _MEMO_LIMIT:
            _memo.clear()
        _memo[content_id] = result
    return result


def _block_parts(block: HclBlock) -> Iterator[str]:
    """What one top-level block contributes to the key, nested provider uses included."""
    if block.type == "terraform":
        yield _canonical(block.tokens)
    elif block.type == "module":
        yield "module" + _canonical(block.labels) + _arguments(block, _MODULE_ARGUMENTS)
    elif block.type in _PROVIDER_BLOCKS:
        yield _provider_part(block)
    for nested in _nested_blocks(block):
        if nested.type in _PROVIDER_BLOCKS:
            yield _provider_part(nested)


def _provider_part(block: HclBlock) -> str:
    if block.type in ("import", "removed"):
        return _canonical(block.tokens)
    # The type (first label) names the provider; the second label is only a name.
    first_label = _canonical(block.labels[:1])
    return f"{block.type}:{first_label}" + _arguments(block, frozenset({"provider"}))


def _nested_blocks(block: HclBlock) -> Iterator[HclBlock]:
    for nested in block.blocks():
        yield nested
        yield from _nested_blocks(nested)


def _arguments(block: HclBlock, names: frozenset[str]) -> str:
    found = [
        f"{item.name}={_canonical(item.value)}"
        for item in block.body
        if isinstance(item, HclAttribute) and item.name in names
    ]
    return "{" + ";".join(sorted(found)) + "}"


def _local_sources(blocks: list[HclBlock]) -> Iterator[str]:
    for block in blocks:
        source = block.attribute("source") if block.type == "module" else None
        literal = plain_string(source.value) if source is not None else None
        if literal is not None and literal.startswith(("./", "../")):
            yield literal


def _canonical(tokens: tuple[Token, ...]) -> str:
    """The tokens without layout: comments, spaces and line breaks do not change the key,
    any other token does."""
    return "\x1f".join(f"{kind}:{text}" for kind, text in tokens if kind != "newline")
