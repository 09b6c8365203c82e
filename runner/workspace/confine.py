"""Keep file operations inside a checkout: a committed symlink must not lead out of it.

A pull request decides what every path of its checkout is, symlinks included. A link
to the runner's data directory, to `/etc` or to `/proc/self/environ` turns an innocent
"delete `.terraform`" or "read the config file" into an operation on the runner's own
files. Every check here compares real paths (all links resolved) with the checkout's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


def is_inside(root: Path, path: Path) -> bool:
    """Whether `path`, with every symlink resolved, is `root` or lies below it."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def remove_escaping_links(root: Path, links: Iterable[str]) -> list[str]:
    """Unlink each of the symlinks `links` (relative to `root`) that resolves outside it.

    Only the link itself is removed, and only when its own directory is inside `root`
    (so a path through another link is never touched). Returns the paths removed.
    """
    removed = []
    for rel in links:
        path = root / rel
        if not os.path.islink(path) or not is_inside(root, path.parent):
            continue
        if not is_inside(root, path):
            os.unlink(path)
            removed.append(rel)
    return removed
