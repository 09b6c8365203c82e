"""Load a repository's configuration: gitops-runner.yaml, else atlantis.yaml, else discovery.

The config comes from a pull request, so it is untrusted input: YAML is loaded safely,
every value is validated by the models, paths are kept inside the repository, and every
problem is a `ConfigError` pointing at the file and line (never a traceback). Keys of
atlantis.yaml that this runner cannot honour become `ConfigWarning`s instead.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from runner.config.discovery import discover
from runner.config.doc_cache import DocCache, text_key
from runner.config.errors import ConfigError
from runner.config.model import (
    DEFAULT_AUTOPLAN,
    DEFAULT_DRIFT,
    ConfigWarning,
    ProjectConfig,
    RepoConfig,
    default_project_name,
    normalize_dir,
)
from runner.config.server_config import RepoRules
from runner.config.workflows import Workflow, WorkflowError, parse_workflows
from runner.gc_pause import gc_paused
from runner.terraform.modules import ModuleGraph

RUNNER_FILE = "gitops-runner.yaml"
ATLANTIS_FILES = ("atlantis.yaml", "atlantis.yml")
MAX_CONFIG_BYTES = 8 * 1024 * 1024
MAX_KEPT_CONFIG_CHARS = 1024 * 1024
# Bounds the work YAML aliases can cause ("billion laughs") before anything walks the data.
MAX_YAML_NODES = 500_000

_Loc = tuple[str | int, ...]
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"


@gc_paused()
def load_repo_config(
    repo_root: Path, *, graph: ModuleGraph | None = None, rules: RepoRules | None = None
) -> RepoConfig:
    """The projects of the working copy at `repo_root`, from whichever source it has.

    `graph` is used (and built when not given) for autodiscovery; pass the one
    change detection uses to scan the repository once. Its cache dir, if any, also
    keeps the parsed config file for the next process (`config/doc_cache.py`).
    `rules` are the server's for this repository (`config/server_config.py`): given, a
    workflow or override they do not allow is a ConfigError naming the file and line;
    not given (reading rules of the default branch, say), nothing is refused but the
    repository's shell steps stay unrunnable. Either way each project carries the
    workflow it runs.
    """
    root = Path(repo_root)
    cache_dir = graph.cache_dir if graph is not None else None
    atlantis = next((root / n for n in ATLANTIS_FILES if (root / n).is_file()), None)
    if (root / RUNNER_FILE).is_file():
        doc, config = _parse(RUNNER_FILE, _read_text(root, RUNNER_FILE), cache_dir)
        if atlantis is not None:
            note = f"ignored: {RUNNER_FILE} takes precedence"
            config = _with_warnings(
                config, [ConfigWarning(file=atlantis.name, line=None, message=note)]
            )
    elif atlantis is not None:
        doc, config = _parse(atlantis.name, _read_text(root, atlantis.name), cache_dir)
    else:
        discovered = discover(graph if graph is not None else ModuleGraph.build(root))
        return govern_workflows(None, discovered, rules)
    config = govern_workflows(doc, config, rules)
    return _with_warnings(config, _check_dirs_on_disk(root, config, doc))


# --- YAML with line numbers ---------------------------------------------------------


class _Document:
    """Parsed YAML data plus the line of every key and list item, for error messages.

    A document read from the disk cache has no line map: the text is read again for it
    when a message first needs a line (a warning, an error), never otherwise."""

    def __init__(
        self, file: str, data: Any, lines: dict[_Loc, int] | None = None, text: str = ""
    ) -> None:
        self.file = file
        self.data = data
        self._lines = lines
        self._text = text
        # Whether JSON gives `data` back exactly (tuples as lists), so the disk cache may
        # keep it: set by the plain path when every key is a string.
        self.json_exact = False

    @property
    def lines(self) -> dict[_Loc, int]:
        if self._lines is None:
            self._lines = _read_yaml(self.file, self._text).lines
        return self._lines

    def line(self, loc: _Loc) -> int | None:
        """The line of `loc`, or of its closest ancestor that has one."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None

    def error(self, loc: _Loc, reason: str) -> ConfigError:
        return ConfigError(self.file, self.line(loc), reason, _format_loc(loc) or None)

    def warning(self, loc: _Loc, message: str) -> ConfigWarning:
        text = f"{_format_loc(loc)}: {message}" if loc else message
        return ConfigWarning(file=self.file, line=self.line(loc), message=text)


def _format_loc(loc: _Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass(frozen=True)
class _Source:
    """A config file's name and text; equal whatever cache dir it may be read through,
    so the memo keeps one entry per text."""

    name: str
    text: str
    cache_dir: Path | None = field(default=None, compare=False)


def _parse(name: str, text: str, cache_dir: Path | None) -> tuple[_Document, RepoConfig]:
    """`_parsed`, kept only for files of at most 1 MiB (50,000 projects or so): what a
    pull request can make this process hold stays bounded."""
    source = _Source(name, text, cache_dir)
    return _parsed(source) if len(text) <= MAX_KEPT_CONFIG_CHARS else _parsed.__wrapped__(source)


@functools.lru_cache(maxsize=4)
def _parsed(source: _Source) -> tuple[_Document, RepoConfig]:
    """The file's YAML and its validated config before the server's rules and the disk
    are consulted: a function of the text alone, so kept for the next pull request with
    the same file (a monorepo's config changes rarely; 5,000 projects take ~0.1 s to
    parse and validate). Both are frozen or never written after this; a file that fails
    raises every time (exceptions are not cached)."""
    name, text = source.name, source.text
    doc = (
        _read_yaml(name, text)
        if source.cache_dir is None
        else _cached_document(name, text, source.cache_dir)
    )
    config = _from_runner_file(doc) if name == RUNNER_FILE else _from_atlantis_file(doc)
    return doc, config


def _cached_document(name: str, text: str, cache_dir: Path) -> _Document:
    """`_read_yaml`, its data kept in the cache dir for the next process (doc_cache.py).
    What comes from the cache is validated like a fresh parse, in `_parsed`."""
    cache, key = DocCache(cache_dir), text_key(text)
    data = cache.get(key)
    if data is not None:
        return _Document(name, _freeze(data), text=text)
    doc = _read_yaml(name, text)
    if doc.json_exact:
        cache.put(key, doc.data)
    return doc


def _read_text(root: Path, name: str) -> str:
    path = root / name
    # A symlink to e.g. /proc/self/environ would echo secrets in error messages.
    if not path.resolve().is_relative_to(root.resolve()):
        raise ConfigError(name, None, "is a symlink pointing outside the repository")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(name, None, f"larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(name, None, f"not UTF-8 text ({exc.reason})") from exc


def _read_yaml(name: str, text: str) -> _Document:
    doc = _plain_document(name, text) or _general_document(name, text)
    if not isinstance(doc.data, dict):
        raise ConfigError(name, doc.lines[()], "the top level must be a mapping")
    return doc


def _general_document(name: str, text: str) -> _Document:
    """Any YAML the safe loader accepts, with its precise error (file, line, reason)."""
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(name, None, "the file is empty")
        doc = _Document(name, None, _line_map(name, node))
        doc.data = _freeze(loader.construct_document(node))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = f"invalid YAML: {exc.problem or exc.context}"
        raise ConfigError(name, mark.line + 1 if mark else None, reason) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(name, None, f"invalid YAML: {exc}") from exc
    finally:
        loader.dispose()
    return doc


def _line_map(name: str, root: yaml.Node) -> dict[_Loc, int]:
    """Line of each key / item by location; refuses duplicate keys and alias bombs."""
    lines: dict[_Loc, int] = {(): root.start_mark.line + 1}
    stack: list[tuple[_Loc, yaml.Node]] = [((), root)]
    visited = 0
    while stack:
        loc, node = stack.pop()
        visited += 1
        if visited > MAX_YAML_NODES:
            raise ConfigError(name, None, f"more than {MAX_YAML_NODES} YAML nodes (aliases?)")
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if key.tag == _MERGE_TAG:
                    continue  # merged keys fall back to the line of their mapping
                if key.value in seen:
                    raise ConfigError(name, key.start_mark.line + 1, f"duplicate key {key.value!r}")
                seen.add(key.value)
                lines[(*loc, key.value)] = key.start_mark.line + 1
                stack.append(((*loc, key.value), value))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[(*loc, index)] = item.start_mark.line + 1
                stack.append(((*loc, index), item))
    return lines


_STR_TAG = "tag:yaml.org,2002:str"
_PLAIN_SCALAR_TAGS = {
    _STR_TAG,
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:float",
}
_PLAIN_MAX_DEPTH = 64


class _NotPlain(Exception):
    """The document needs the general path (`_general_document`)."""


def _plain_document(name: str, text: str) -> _Document | None:
    """The document of a plain config straight from the parser's events, or None.

    Plain: one document of mappings with scalar keys, sequences, and untagged (or
    `!!str`...) str/int/bool/null/float scalars; no anchor or alias, no merge key, no
    duplicate key, within the node budget, not deeper than 64 levels. That is every
    config seen in practice, and for it the result equals the general path's (nodes
    composed, `_line_map`, SafeConstructor, `_freeze`) without building a node per value
    (5,000 projects: ~30 ms instead of ~45 ms). Anything else, an invalid document
    included, returns None: the general path builds it or raises its precise error.
    """
    loader = _SafeLoader(text)
    try:
        return _PlainEvents(name, loader).document()
    except (_NotPlain, yaml.YAMLError, RecursionError):
        return None
    finally:
        loader.dispose()


class _PlainEvents:
    """One pass over the parser's events, building data and line map together; the
    lines are those the composer gives nodes (the start of each key and item)."""

    def __init__(self, name: str, loader: Any) -> None:
        self._name = name
        self._loader = loader
        self._next = loader.get_event
        self._lines: dict[_Loc, int] = {}
        self._budget = MAX_YAML_NODES
        self._keys_are_strings = True

    def document(self) -> _Document:
        if not isinstance(self._next(), yaml.StreamStartEvent):
            raise _NotPlain
        if not isinstance(self._next(), yaml.DocumentStartEvent):
            raise _NotPlain  # empty: the general path says so
        root = self._next()
        self._lines[()] = root.start_mark.line + 1
        data = self._value(root, ())
        if not isinstance(self._next(), yaml.DocumentEndEvent):
            raise _NotPlain
        if not isinstance(self._next(), yaml.StreamEndEvent):
            raise _NotPlain  # a second document: the general path refuses it
        doc = _Document(self._name, data, self._lines)
        doc.json_exact = self._keys_are_strings
        return doc

    def _value(self, event: Any, loc: _Loc) -> Any:
        self._budget -= 1
        if self._budget < 0 or len(loc) > _PLAIN_MAX_DEPTH or event.anchor is not None:
            raise _NotPlain
        kind = type(event)
        if kind is yaml.ScalarEvent:
            return self._scalar(event)
        if event.tag is not None and event.tag != "!":
            raise _NotPlain  # explicit collection tags (`!!set`, `!!omap`, ...)
        if kind is yaml.SequenceStartEvent:
            return self._sequence(loc)
        if kind is yaml.MappingStartEvent:
            return self._mapping(loc)
        raise _NotPlain  # an alias

    def _sequence(self, loc: _Loc) -> tuple[Any, ...]:
        items: list[Any] = []
        event = self._next()
        while type(event) is not yaml.SequenceEndEvent:
            item_loc = (*loc, len(items))
            self._lines[item_loc] = event.start_mark.line + 1
            items.append(self._value(event, item_loc))
            event = self._next()
        return tuple(items)

    def _mapping(self, loc: _Loc) -> dict[Any, Any]:
        mapping: dict[Any, Any] = {}
        event = self._next()
        while type(event) is not yaml.MappingEndEvent:
            if type(event) is not yaml.ScalarEvent or event.anchor is not None:
                raise _NotPlain  # a collection as key
            key_loc = (*loc, event.value)
            if key_loc in self._lines:
                raise _NotPlain  # a duplicate key: the general path refuses it
            self._lines[key_loc] = event.start_mark.line + 1
            key = self._scalar(event)  # a merge key `<<` is not plain: see `_scalar`
            if type(key) is not str:
                self._keys_are_strings = False
            mapping[key] = self._value(self._next(), key_loc)
            event = self._next()
        return mapping

    def _scalar(self, event: Any) -> Any:
        """As the composer resolves and SafeConstructor builds it."""
        tag = event.tag
        if tag is None or tag == "!":
            tag = self._resolve(event.value, event.implicit)
        if tag == _STR_TAG:
            return event.value
        if tag not in _PLAIN_SCALAR_TAGS:
            raise _NotPlain  # a timestamp, binary, a merge key, a local tag, ...
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        try:
            return self._loader.construct_object(node)
        except Exception as exc:  # e.g. `!!int abc`: the general path meets it in its order
            raise _NotPlain from exc

    def _resolve(self, value: str, implicit: tuple[bool, bool]) -> str:
        """The loader's `resolve` for a scalar, without its call for the usual case: a
        plain scalar whose first character no implicit type (int, bool, null, float,
        timestamp, merge, ...) can start with is a string, as a quoted one is."""
        resolvers = self._loader.yaml_implicit_resolvers
        usual = not implicit[0] or (
            value != "" and value[0] not in resolvers and None not in resolvers
        )
        if usual and not self._loader.yaml_path_resolvers:
            return _STR_TAG
        return str(self._loader.resolve(yaml.ScalarNode, value, implicit))


def _freeze(value: Any) -> Any:
    # Models hold tuples; strict validation wants them as such.
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return {k: _freeze(v) for k, v in value.items()}
    return value


# --- validation shared by both formats ----------------------------------------------


def _validation_error(doc: _Document, errors: Sequence[Any], prefix: _Loc) -> ConfigError:
    """The first pydantic error, located at its YAML line (the others are counted)."""
    first = errors[0]
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return doc.error((*prefix, *first["loc"]), _reason(first) + more)


_TYPE_MESSAGES = {
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "model_type": "must be a mapping",
    "dict_type": "must be a mapping",
}


def _reason(error: Any) -> str:
    kind = error["type"]
    message = _TYPE_MESSAGES.get(kind, error["msg"])
    if kind == "value_error":
        return str(error["ctx"]["error"])
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    got = error.get("input")
    if isinstance(got, str | int | float | bool) or got is None:
        return f"{message}, got {got!r}"
    kind_of_got = {tuple: "list", dict: "mapping"}.get(type(got), type(got).__name__)
    return f"{message}, got a {kind_of_got}"


def _validate(doc: _Document, model: type[BaseModel], data: Any, loc: _Loc) -> Any:
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise _validation_error(doc, exc.errors(), loc) from exc


class _ProjectInput(NamedTuple):
    """One YAML list item made ready for the model: defaults in, the name derived."""

    raw: dict[str, Any]
    derived_name: bool


_Prepare = Callable[[int, Any], _ProjectInput]


def _validated_projects(
    doc: _Document, entries: Sequence[Any], prepare: _Prepare
) -> list[ProjectConfig]:
    """Every project entry validated, or the error of the first bad one.

    All entries go through pydantic in one call (5,000 projects: ~22 ms instead of
    ~27 ms or more one by one); when that fails, the entries are validated again one by
    one, in order, so the error is exactly the one the first bad entry gives on its own.
    An entry `prepare` refuses counts in its place: the entries before it are checked
    first.
    """
    inputs: list[_ProjectInput] = []
    refusal: ConfigError | None = None
    for index, entry in enumerate(entries):
        try:
            inputs.append(prepare(index, entry))
        except ConfigError as error:
            refusal = error
            break
    try:
        projects = _projects_adapter().validate_python(
            tuple(item.raw for item in inputs), strict=True
        )
    except ValidationError as exc:
        for index, item in enumerate(inputs):
            _validated_project(doc, index, item)  # raises for the first bad entry
        raise _validation_error(doc, exc.errors(), ("projects",)) from exc  # (unreachable)
    if refusal is not None:
        raise refusal
    return list(projects)


@functools.cache
def _projects_adapter() -> TypeAdapter[tuple[ProjectConfig, ...]]:
    # Built on first use: a process that never reads a config file does not pay for it.
    return TypeAdapter(tuple[ProjectConfig, ...])


def _project_input(
    doc: _Document, index: int, entry: Any, defaults: dict[str, Any]
) -> _ProjectInput:
    """One YAML list item as the model's input (the name derived when absent)."""
    loc: _Loc = ("projects", index)
    if not isinstance(entry, dict):
        raise doc.error(loc, "each project must be a mapping")
    if "resolved_workflow" in entry:
        raise doc.error((*loc, "resolved_workflow"), "unknown key")
    raw = {"autoplan": DEFAULT_AUTOPLAN, "drift": DEFAULT_DRIFT, **defaults, **entry}
    derived = "name" not in raw
    if derived:
        raw["name"] = _derived_name(raw.get("dir", "."), raw.get("workspace", "default"))
    return _ProjectInput(raw, derived)


def _validated_project(doc: _Document, index: int, item: _ProjectInput) -> ProjectConfig:
    """One project validated on its own, its error located at its YAML line."""
    loc: _Loc = ("projects", index)
    try:
        return ProjectConfig.model_validate(item.raw, strict=True)
    except ValidationError as exc:
        errors = exc.errors()
        others = [e for e in errors if e["loc"][:1] != ("name",)]
        if item.derived_name and not others:
            reason = (
                f"{item.raw['name']!r} (derived from dir/workspace) is not a plain name; set name"
            )
            raise doc.error(loc, reason) from exc
        # A bad dir also spoils the derived name; report the dir, not the name.
        raise _validation_error(doc, others if item.derived_name else errors, loc) from exc


def _derived_name(dir: Any, workspace: Any) -> Any:
    if not isinstance(dir, str) or not isinstance(workspace, str):
        return None
    # A try, not contextlib.suppress (a context manager per project of the file).
    try:
        return default_project_name(normalize_dir(dir), workspace)
    except ValueError:  # the dir error itself is reported by the model
        return default_project_name(dir, workspace)


def _check_projects(doc: _Document, projects: Sequence[ProjectConfig]) -> None:
    """Repository-wide rules: unique names, known dependencies, no dependency cycle."""
    first_index: dict[str, int] = {}
    for index, project in enumerate(projects):
        if project.name in first_index:
            other = first_index[project.name]
            reason = f"duplicate project name {project.name!r} (also projects[{other}])"
            raise doc.error(("projects", index, "name"), reason)
        first_index[project.name] = index
    for index, project in enumerate(projects):
        for dep_index, dep in enumerate(project.depends_on):
            if dep not in first_index:
                loc = ("projects", index, "depends_on", dep_index)
                raise doc.error(loc, f"unknown project {dep!r}")
    cycle = _find_cycle({p.name: p.depends_on for p in projects})
    if cycle:
        loc = ("projects", first_index[cycle[0]], "depends_on")
        raise doc.error(loc, f"dependency cycle: {' → '.join(cycle)}")


def _find_cycle(edges: dict[str, tuple[str, ...]]) -> list[str] | None:
    """A dependency cycle as [a, b, ..., a], or None; iterative DFS with colours."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start, first in edges.items():
        if start in state:
            continue
        if not first:  # most projects depend on nothing: no path to walk
            state[start] = 2
            continue
        path: list[str] = [start]
        iterators = [iter(edges[start])]
        state[start] = 1
        while iterators:
            nxt = next(iterators[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iterators.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                iterators.append(iter(edges.get(nxt, ())))
    return None


def _check_dirs_on_disk(root: Path, config: RepoConfig, doc: _Document) -> list[ConfigWarning]:
    """Refuse dirs leaving the repository through a symlink; warn about missing dirs."""
    warnings: list[ConfigWarning] = []
    probe = _DirProbe(root)
    for index, project in enumerate(config.projects):
        loc = ("projects", index, "dir")
        state = probe(project.dir)
        if state == "escapes":
            raise doc.error(loc, f"{project.dir!r} escapes the repository through a symlink")
        if state == "missing":
            warnings.append(doc.warning(loc, f"{project.dir!r} does not exist"))
    return warnings


_Kind = Literal["dir", "link", "other"]


class _DirProbe:
    """Where a repo-relative dir leads on disk, cheaply enough for thousands of projects:
    each parent directory is listed once (the entry types come with the listing, no
    lstat per project), full resolution only through symlinks. Read on every load, never
    kept: the code planned in a checkout may plant a link there."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._real_root = root.resolve()
        self._listings: dict[str, dict[str, _Kind] | None] = {}
        # Dirs whose every part is a directory, no link: siblings (5,000 projects in 50
        # team dirs) then only look up their last part.
        self._plain_dirs: set[str] = {""}

    def __call__(self, dir: str) -> Literal["dir", "missing", "escapes"]:
        if dir == ".":
            return "dir"
        parent, _, last = dir.rpartition("/")
        if parent in self._plain_dirs:
            listing = self._listings.get(parent)
            if listing is not None and listing.get(last) == "dir":
                self._plain_dirs.add(dir)  # the usual sibling: one lookup, as below
                return "dir"
            parts = [last]
        else:
            parent, parts = "", dir.split("/")
        for part in parts:
            kind = self._kind(parent, part)
            if kind == "link":
                target = (self._root / dir).resolve()
                if not target.is_relative_to(self._real_root):
                    return "escapes"
                return "dir" if target.is_dir() else "missing"
            if kind != "dir":
                return "missing"
            parent = f"{parent}/{part}" if parent else part
            self._plain_dirs.add(parent)
        return "dir"

    def _kind(self, parent: str, name: str) -> _Kind | None:
        """What `name` in the directory `parent` is (links not followed); None: absent."""
        if parent not in self._listings:
            self._listings[parent] = self._list(parent)
        listing = self._listings[parent]
        if listing is not None:
            return listing.get(name)
        try:  # not listable (no read permission) but maybe searchable: ask for the entry
            mode = os.lstat(os.path.join(self._root, parent, name)).st_mode
        except OSError:
            return None
        return "link" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode) else "other"

    def _list(self, parent: str) -> dict[str, _Kind] | None:
        kinds: dict[str, _Kind] = {}
        try:
            with os.scandir(os.path.join(self._root, parent)) as entries:
                for entry in entries:
                    if entry.is_symlink():
                        kinds[entry.name] = "link"
                    else:
                        kinds[entry.name] = (
                            "dir" if entry.is_dir(follow_symlinks=False) else "other"
                        )
        except FileNotFoundError:
            return {}
        except OSError:
            return None
        return kinds


def _with_warnings(config: RepoConfig, warnings: Sequence[ConfigWarning]) -> RepoConfig:
    if not warnings:
        return config
    return config.model_copy(update={"warnings": (*config.warnings, *warnings)})


# --- gitops-runner.yaml -------------------------------------------------------------


class _RunnerFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1]
    projects: tuple[Any, ...] = ()
    parallel_plan: bool = True
    parallel_apply: bool = False
    workflows: Any = None


def _from_runner_file(doc: _Document) -> RepoConfig:
    top: _RunnerFile = _validate(doc, _RunnerFile, doc.data, ())
    projects = _validated_projects(
        doc, top.projects, lambda index, entry: _project_input(doc, index, entry, {})
    )
    _check_projects(doc, projects)
    return RepoConfig(
        source="gitops-runner.yaml",
        projects=tuple(projects),
        parallel_plan=top.parallel_plan,
        parallel_apply=top.parallel_apply,
        workflows=_repo_workflows(doc, top.workflows),
    )


# --- atlantis.yaml v3 ---------------------------------------------------------------

_ATLANTIS_TOP_IGNORED = {
    "automerge": "automerge is not supported; merge the pull request yourself",
    "delete_source_branch_on_merge": "not supported; configure it on the forge",
    "abort_on_execution_order_fail": "not supported; a failed group does not stop later ones",
    "allowed_regexp_prefixes": "not supported; -p selects projects by exact name",
}
_ATLANTIS_PROJECT_IGNORED = {
    "branch": "not supported; the project applies to pull requests on every branch",
    "plan_requirements": "not supported; plans run without requirements",
    "import_requirements": "import is not supported",
    "custom_policy_check": "policy checks are not supported by this key",
    "delete_source_branch_on_merge": "not supported; configure it on the forge",
    "repo_locking": "not supported; projects are always locked while planned",
    "repo_locks": "not supported; projects are always locked while planned",
    "silence_pr_comments": "not supported",
    "terraform_distribution": "not supported; Terraform is used",
}
_ATLANTIS_PROJECT_KEYS = {
    "name", "dir", "workspace", "autoplan", "apply_requirements", "depends_on",
    "execution_order_group", "terraform_version", "workflow",
}  # fmt: skip
_ATLANTIS_AUTOPLAN_KEYS = {"enabled", "when_modified"}
_ATLANTIS_APPLY_REQUIREMENTS = {"approved", "mergeable", "undiverged"}
# Atlantis applies on `atlantis apply` comments; keep that workflow when translating.
_ATLANTIS_DEFAULTS: dict[str, Any] = {"apply": "comment"}


class _AtlantisFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[3]
    projects: tuple[Any, ...] = ()
    parallel_plan: bool = True
    parallel_apply: bool = False
    workflows: Any = None


def _from_atlantis_file(doc: _Document) -> RepoConfig:
    warnings: list[ConfigWarning] = []
    top_data = _split_keys(
        doc, doc.data, (), _AtlantisFile.model_fields, _ATLANTIS_TOP_IGNORED, warnings
    )
    top: _AtlantisFile = _validate(doc, _AtlantisFile, top_data, ())

    def prepare(index: int, entry: Any) -> _ProjectInput:
        translated = _translate_atlantis_project(doc, index, entry, warnings)
        return _project_input(doc, index, translated, _ATLANTIS_DEFAULTS)

    projects = _validated_projects(doc, top.projects, prepare)
    _check_projects(doc, projects)
    return RepoConfig(
        source="atlantis.yaml",
        projects=tuple(projects),
        warnings=tuple(sorted(warnings, key=lambda w: w.line or 0)),
        parallel_plan=top.parallel_plan,
        parallel_apply=top.parallel_apply,
        workflows=_repo_workflows(doc, top.workflows),
    )


def _translate_atlantis_project(
    doc: _Document, index: int, entry: Any, warnings: list[ConfigWarning]
) -> Any:
    """The honoured part of one atlantis.yaml project, warnings for the rest."""
    loc: _Loc = ("projects", index)
    if not isinstance(entry, dict):
        return entry  # _project reports it
    if "dir" not in entry:
        raise doc.error(loc, "dir is required in atlantis.yaml projects")
    kept = _split_keys(doc, entry, loc, _ATLANTIS_PROJECT_KEYS, _ATLANTIS_PROJECT_IGNORED, warnings)
    if isinstance(kept.get("autoplan"), dict):
        kept["autoplan"] = _split_keys(
            doc, kept["autoplan"], (*loc, "autoplan"), _ATLANTIS_AUTOPLAN_KEYS, {}, warnings
        )
    requirements = kept.get("apply_requirements")
    if isinstance(requirements, tuple):
        for i, req in enumerate(requirements):
            if isinstance(req, str) and req not in _ATLANTIS_APPLY_REQUIREMENTS:
                req_loc = (*loc, "apply_requirements", i)
                warnings.append(
                    doc.warning(req_loc, f"requirement {req!r} is not supported; ignored")
                )
        kept["apply_requirements"] = tuple(
            r for r in requirements if not isinstance(r, str) or r in _ATLANTIS_APPLY_REQUIREMENTS
        )
    return kept


def _split_keys(
    doc: _Document,
    mapping: dict[str, Any],
    loc: _Loc,
    honoured: Any,
    ignored: dict[str, str],
    warnings: list[ConfigWarning],
) -> dict[str, Any]:
    """Keep the honoured keys of a mapping; every other key becomes a warning."""
    kept = {}
    for key, value in mapping.items():
        if key in honoured:
            kept[key] = value
        else:
            reason = (
                ignored.get(key, "unknown key; ignored") if isinstance(key, str) else "unknown key"
            )
            warnings.append(doc.warning((*loc, key), reason))
    return kept


# --- workflows: the repository's, the server's, and what the server allows --------------


def _repo_workflows(doc: _Document, raw: Any) -> dict[str, Workflow]:
    """The file's `workflows:`; their shell steps may run only once the server allows."""
    if raw is None:
        return {}
    try:
        return parse_workflows(raw, "repo", shell_allowed=False)
    except WorkflowError as error:
        raise doc.error(("workflows", *error.loc), error.reason) from error


def govern_workflows(
    doc: _Document | None, config: RepoConfig, rules: RepoRules | None
) -> RepoConfig:
    """Check the config against the server's rules and give each project its workflow."""
    governed = rules is not None
    rules = rules or RepoRules.builtin()
    refuse = _Refuser(doc, config.source)
    repo_workflows = _allowed_repo_workflows(refuse, config, rules, governed)
    projects = []
    for index, project in enumerate(config.projects):
        if governed:
            _check_overrides(refuse, index, project, rules)
        workflow = _workflow_of(refuse, index, project, repo_workflows, rules)
        if workflow is not project.resolved_workflow:  # most run none: no copy of 5,000
            project = project.model_copy(update={"resolved_workflow": workflow})
        projects.append(project)
    return config.model_copy(update={"projects": tuple(projects), "workflows": repo_workflows})


@dataclass(frozen=True)
class _Refuser:
    """Builds the ConfigError of a refusal, at the file and line when there is a file."""

    doc: _Document | None
    source: str

    def __call__(self, loc: _Loc, reason: str) -> ConfigError:
        if self.doc is None:
            return ConfigError(self.source, None, reason, _format_loc(loc) or None)
        return self.doc.error(loc, reason)


def _allowed_repo_workflows(
    refuse: _Refuser, config: RepoConfig, rules: RepoRules, governed: bool
) -> dict[str, Workflow]:
    workflows = config.workflows
    if not workflows:
        return {}
    if governed and rules.configured and not rules.allow_custom_workflows:
        raise refuse(
            ("workflows",),
            "refused by the server: repositories may not define workflows here "
            "(GITOPS_REPO_CONFIG: allow_custom_workflows is false); use a server workflow",
        )
    allowed = rules.allow_custom_workflows
    if governed and not allowed:
        for name, workflow in workflows.items():
            if workflow.uses_shell:
                raise refuse(
                    ("workflows", name),
                    "refused by the server: `run` and `env: command` steps of a repository's "
                    "workflow need allow_custom_workflows: true in GITOPS_REPO_CONFIG",
                )
    return {n: w.model_copy(update={"shell_allowed": allowed}) for n, w in workflows.items()}


def _check_overrides(
    refuse: _Refuser, index: int, project: ProjectConfig, rules: RepoRules
) -> None:
    if project.workflow is not None and not rules.allows("workflow"):
        raise refuse(
            ("projects", index, "workflow"),
            "refused by the server: this repository may not choose a workflow "
            "(GITOPS_REPO_CONFIG: allowed_overrides lacks `workflow`)",
        )
    if project.apply_requirements and not rules.allows("apply_requirements"):
        raise refuse(
            ("projects", index, "apply_requirements"),
            "refused by the server: this repository may not set apply_requirements "
            "(GITOPS_REPO_CONFIG: allowed_overrides lacks `apply_requirements`)",
        )


def _workflow_of(
    refuse: _Refuser,
    index: int,
    project: ProjectConfig,
    repo_workflows: dict[str, Workflow],
    rules: RepoRules,
) -> Workflow | None:
    """The repository's workflow of that name, else the server's (if allowed), else None."""
    name = project.workflow or rules.workflow
    if name is None:
        return None
    if project.workflow is not None and name in repo_workflows:
        return repo_workflows[name]
    if name in rules.workflows:
        if project.workflow and rules.allowed_workflows and name not in rules.allowed_workflows:
            raise refuse(
                ("projects", index, "workflow"),
                f"refused by the server: workflow {name!r} is not in allowed_workflows",
            )
        return rules.workflows[name]
    raise refuse(("projects", index, "workflow"), f"workflow {name!r} is not defined")
