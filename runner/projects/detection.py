"""Which projects a change affects, and why, in one line each.

A project is affected (when its autoplan is enabled) if a changed file matches its
`autoplan.when_modified` globs, or if it calls, directly or through other local
modules, a module whose directory holds a changed Terraform file. Explicit selection
(`-p/-d/-w`) is `select_projects`.
"""

from __future__ import annotations

import functools
import itertools
import posixpath
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from wcmatch import glob

from runner.config.model import DEFAULT_WHEN_MODIFIED, ProjectConfig, RepoConfig, normalize_dir
from runner.gc_pause import gc_paused
from runner.terraform.modules import ModuleGraph, dir_of, is_hidden

# `**` crosses directories, `*` matches dotfiles too (like Atlantis), and no magic ever
# matches a `..` segment: only patterns written with `../` reach outside the project.
_GLOB_FLAGS = glob.GLOBSTAR | glob.DOTGLOB | glob.FORCEUNIX
# What Terraform reads from a module directory (templates included).
_MODULE_FILE_SUFFIXES = (".tf", ".tf.json", ".tftpl")
_MAX_LISTED = 5
_GLOB_MAGIC = re.compile(r"[*?\[\\]")


@dataclass(frozen=True)
class AffectedProject:
    """A project to plan for a change, with the one-line reason shown to users."""

    project: ProjectConfig
    reason: str


class ProjectSelectionError(ValueError):
    """An explicit `-p/-d/-w` selection that names no configured project."""


@gc_paused()
def affected_projects(
    config: RepoConfig, changed_files: Sequence[str], graph: ModuleGraph
) -> list[AffectedProject]:
    """The projects a change affects, in config order, each with its reason."""
    files = sorted({posixpath.normpath(f) for f in changed_files})
    enabled = [p for p in config.projects if p.autoplan.enabled]
    by_file = _file_matches(enabled, files, frozenset(p.dir for p in config.projects))
    by_module = _module_matches(enabled, files, graph)
    affected = []
    for index, project in enumerate(enabled):
        parts = []
        if index in by_file:
            parts.append(f"files changed: {_listing(by_file[index], 'more')}")
        parts.extend(by_module.get(project.dir, ()))
        if parts:
            affected.append(AffectedProject(project, f"{project.name}: {'; '.join(parts)}"))
    return affected


def select_projects(
    config: RepoConfig,
    name: str | None = None,
    dir: str | None = None,
    workspace: str | None = None,
) -> list[ProjectConfig]:
    """The projects an explicit `-p NAME` / `-d DIR` / `-w WORKSPACE` selection names.

    Criteria combine (all must hold); none given selects every project. `-d` alone
    selects every workspace of that dir. Raises `ProjectSelectionError` on no match.
    """
    wanted_dir = None
    if dir is not None:
        try:
            wanted_dir = normalize_dir(dir)
        except ValueError as exc:
            raise ProjectSelectionError(f"-d {dir}: {exc}") from exc
    selected = [
        p
        for p in config.projects
        if (name is None or p.name == name)
        and (wanted_dir is None or p.dir == wanted_dir)
        and (workspace is None or p.workspace == workspace)
    ]
    if not selected:
        asked = " ".join(
            f"{flag} {value}"
            for flag, value in (("-p", name), ("-d", dir), ("-w", workspace))
            if value is not None
        )
        known = _listing([p.name for p in config.projects], "others") or "none"
        raise ProjectSelectionError(f"no project matches {asked}; projects: {known}")
    return selected


def matches_globs(patterns: Sequence[str], path: str) -> bool:
    """Whether `path` (relative to the project dir) is selected by `when_modified`.

    Patterns apply in order and the last one matching decides; `!` excludes.
    """
    for pattern in reversed(patterns):
        negated = pattern.startswith("!")
        if _compiled(pattern[1:] if negated else pattern).match(path):
            return not negated
    return False


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    include, _ = glob.translate(_clean(pattern), flags=_GLOB_FLAGS)
    return re.compile("|".join(include))


def _file_matches(
    projects: Sequence[ProjectConfig], files: Sequence[str], project_dirs: frozenset[str]
) -> dict[int, list[str]]:
    """Project index -> changed files (relative to its dir) matching its globs."""
    index = _candidate_index(projects)
    matched: dict[int, list[str]] = defaultdict(list)
    for file in files:
        candidates = {i for d in _ancestors(dir_of(file)) for i in index.get(d, ())}
        for i in sorted(candidates):
            project = projects[i]
            if _owned_by_nested_project(project, file, project_dirs):
                continue
            relative = _relative(file, project.dir)
            if matches_globs(project.autoplan.when_modified, relative):
                matched[i].append(relative)
    return matched


def _candidate_index(projects: Sequence[ProjectConfig]) -> dict[str, set[int]]:
    """Dir -> projects whose globs may match files below it, so each changed file is
    tried against a few projects rather than thousands: a project at its own dir, and
    at the fixed part of each `../` pattern (no wildcard matches `..`, so a file outside
    the project dir can only match such a pattern below that part)."""
    index: dict[str, set[int]] = defaultdict(set)
    for i, project in enumerate(projects):
        index[project.dir].add(i)
        for fixed in _outside_anchors(tuple(project.autoplan.when_modified)):
            anchor = posixpath.normpath(posixpath.join(project.dir, *fixed))
            if anchor != ".." and not anchor.startswith("../"):
                index[anchor].add(i)
    return index


@functools.lru_cache(maxsize=1024)
def _outside_anchors(patterns: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """The fixed leading parts of the `../` patterns; computed once per set of globs
    (thousands of projects share the default one, which has none)."""
    anchors = []
    for pattern in map(_clean, patterns):
        if pattern.startswith("../"):
            fixed = itertools.takewhile(
                lambda part: not _GLOB_MAGIC.search(part), pattern.split("/")[:-1]
            )
            anchors.append(tuple(fixed))
    return tuple(anchors)


def _clean(pattern: str) -> str:
    while pattern.startswith("./"):
        pattern = pattern[2:]
    return pattern


def _owned_by_nested_project(
    project: ProjectConfig, file: str, project_dirs: frozenset[str]
) -> bool:
    """Default globs are recursive but must not plan `infra` for `infra/app/main.tf`
    when `infra/app` is a project itself; custom globs are taken literally."""
    if project.autoplan.when_modified != DEFAULT_WHEN_MODIFIED:
        return False
    for ancestor in _ancestors(dir_of(file)):
        if ancestor == project.dir:
            return False
        if ancestor in project_dirs:
            return True
    return False  # the file is outside the project


def _module_matches(
    projects: Sequence[ProjectConfig], files: Sequence[str], graph: ModuleGraph
) -> dict[str, list[str]]:
    """Project dir -> reasons `calls X → Y, which changed`, one per changed module."""
    changed = sorted({dir_of(f) for f in files if _is_module_file(f)})
    project_dirs = {p.dir for p in projects}
    chains: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for module_dir in changed:
        for chain in graph.callers_of(module_dir):
            if chain.caller in project_dirs:
                chains[chain.caller].append(chain.modules)
    changed_set = set(changed)
    reasons: dict[str, list[str]] = {}
    for caller, found in chains.items():
        # A chain through another changed module repeats that module's own reason.
        # (Only a module cycle, which Terraform refuses, could hide them all.)
        shown = [c for c in found if not changed_set.intersection(c[:-1])] or found[:1]
        lines = [f"calls {' → '.join(c)}, which changed" for c in shown[:_MAX_LISTED]]
        if len(shown) > _MAX_LISTED:
            lines.append(f"and {len(shown) - _MAX_LISTED} more changed modules")
        reasons[caller] = lines
    return reasons


def _is_module_file(path: str) -> bool:
    return path.endswith(_MODULE_FILE_SUFFIXES) and not is_hidden(path)


def _ancestors(dir: str) -> Iterable[str]:
    """`a/b/c` -> `a/b/c`, `a/b`, `a`, `.`."""
    while dir not in (".", ""):
        yield dir
        dir = posixpath.dirname(dir)
    yield "."


def _relative(file: str, dir: str) -> str:
    if dir == ".":
        return file
    if file.startswith(dir + "/"):
        return file[len(dir) + 1 :]
    return posixpath.relpath(file, dir)


def _listing(items: Sequence[str], rest: str) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return f"{shown} and {len(items) - _MAX_LISTED} {rest}" if len(items) > _MAX_LISTED else shown
