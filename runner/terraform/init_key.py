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
is ever written out as text. Anything unreadable or unparsable gives no key (None),
and init runs for real.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from lark import Token, Tree
from lark.exceptions import LarkError

from runner.terraform.modules import _hcl_parser

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
    digest = hashlib.sha256(b"init-key-v1\0" + identity.encode())
    try:
        for part in _module_parts(workdir, workdir, set(), 0):
            digest.update(part.encode())
            digest.update(b"\0")
        digest.update(_lock_file_part(workdir))
    except (_Unknowable, OSError, UnicodeDecodeError, LarkError):
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
    tree = _hcl_parser().parse(text + "\n")
    parts = list(_top_level_parts(tree))
    parts += sorted(set(_PROVIDER_FUNCTION.findall(text)))
    sources = tuple(_local_sources(tree))
    result = (tuple(parts), sources)
    with _memo_lock:
        if len(_memo) >= _MEMO_LIMIT:
            _memo.clear()
        _memo[content_id] = result
    return result


def _top_level_parts(tree: Tree) -> Iterator[str]:
    for block in _blocks(tree):
        kind = _identifier(block.children[0])
        if kind == "terraform":
            yield _canonical(block)
        elif kind == "module":
            yield "module" + _labels(block) + _arguments(block, _MODULE_ARGUMENTS)
        elif kind in _PROVIDER_BLOCKS:
            yield from _provider_parts(block, kind)
        for nested in _nested_blocks(block):
            nested_kind = _identifier(nested.children[0])
            if nested_kind in _PROVIDER_BLOCKS:
                yield from _provider_parts(nested, nested_kind)


def _provider_parts(block: Tree, kind: str) -> Iterator[str]:
    if kind in ("import", "removed"):
        yield _canonical(block)
        return
    labels = [_canonical(child) for child in block.children if _is_label(child)]
    # The type (first label) names the provider; the second label is only a name.
    yield f"{kind}:{labels[0] if labels else ''}" + _arguments(block, frozenset({"provider"}))


def _blocks(tree: Tree) -> Iterator[Tree]:
    body = tree.children[0]
    for child in body.children:
        if isinstance(child, Tree) and child.data == "block":
            yield child


def _nested_blocks(block: Tree) -> Iterator[Tree]:
    for body in _bodies(block):
        for child in body.children:
            if isinstance(child, Tree) and child.data == "block":
                yield child
                yield from _nested_blocks(child)


def _bodies(block: Tree) -> Iterator[Tree]:
    for child in block.children:
        if isinstance(child, Tree) and child.data == "body":
            yield child


def _arguments(block: Tree, names: frozenset[str]) -> str:
    found = []
    for body in _bodies(block):
        for attribute in body.children:
            if isinstance(attribute, Tree) and attribute.data == "attribute":
                name = _identifier(attribute.children[0])
                if name in names:
                    found.append(_canonical(attribute))
    return "{" + ";".join(sorted(found)) + "}"


def _labels(block: Tree) -> str:
    return "[" + ",".join(_canonical(c) for c in block.children if _is_label(c)) + "]"


def _is_label(node: Tree | Token) -> bool:
    return isinstance(node, Tree) and node.data in ("string", "identifier")


def _identifier(node: Tree | Token) -> str | None:
    if isinstance(node, Tree) and node.data == "identifier":
        return str(node.children[0])
    return None


def _local_sources(tree: Tree) -> Iterator[str]:
    for block in _blocks(tree):
        if _identifier(block.children[0]) != "module":
            continue
        for body in _bodies(block):
            for attribute in body.children:
                if (
                    isinstance(attribute, Tree)
                    and attribute.data == "attribute"
                    and _identifier(attribute.children[0]) == "source"
                ):
                    source = _string_literal(attribute.children[-1])
                    if source is not None and source.startswith(("./", "../")):
                        yield source


def _string_literal(expr: Tree | Token) -> str | None:
    strings = list(expr.find_data("string")) if isinstance(expr, Tree) else []
    if len(strings) != 1:
        return None
    parts = [c for c in strings[0].children if isinstance(c, Tree)]
    if all(p.data == "string_part" and isinstance(p.children[0], Token) for p in parts):
        return "".join(str(p.children[0]) for p in parts)
    return None


def _canonical(node: Tree | Token) -> str:
    """A stable text of a parse tree without its layout: comments and blank lines do not
    change the key, any token does."""
    if isinstance(node, Token):
        return str(node)
    if node.data == "new_line_or_comment":
        return ""
    return f"{node.data}(" + " ".join(_canonical(child) for child in node.children) + ")"
