"""The server-side repo config (`GITOPS_REPO_CONFIG`): Atlantis's `repos.yaml` schema.

The operator's file says, per repository id (`github.com/acme/infra`) or `/regex/`,
what a repository's own config may do: which keys it may override
(`allowed_overrides`), whether it may define workflows (`allow_custom_workflows`),
which server workflow its projects run (`workflow`), which `apply_requirements` every
project must meet, and the hooks run around every plan. Entries are applied in order;
a later matching entry wins key by key. The file is the operator's, so it is trusted:
its workflows and hooks may run shell lines. It is read again when it changes.

Without the setting, `RepoRules.builtin()` keeps what a repository could do before
the file existed (every override), except that a repository's shell steps never run.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runner.config.errors import ConfigError
from runner.config.workflows import (
    Step,
    Workflow,
    WorkflowError,
    parse_run_step,
    parse_workflows,
)

log = logging.getLogger(__name__)

# Keys a repository's config may set only when `allowed_overrides` names them.
OVERRIDABLE = ("apply_requirements", "workflow", "import_requirements", "plan_requirements")
_REQUIREMENTS = frozenset({"approved", "mergeable", "undiverged"})
_RULE_KEYS = frozenset(
    {
        "id",
        "apply_requirements",
        "import_requirements",
        "workflow",
        "allowed_overrides",
        "allowed_workflows",
        "allow_custom_workflows",
        "pre_workflow_hooks",
        "post_workflow_hooks",
    }
)
# Atlantis keys accepted so an existing repos.yaml loads, but without effect here
# (docs/atlantis-migration.md says why for each).
_IGNORED_KEYS = frozenset(
    {
        "branch",
        "repo_config_file",
        "plan_requirements",
        "delete_source_branch_on_merge",
        "repo_locking",
        "repo_locks",
        "policy_check",
        "custom_policy_check",
        "autodiscover",
        "silence_pr_comments",
    }
)


@dataclass(frozen=True)
class RepoRules:
    """What the server allows one repository, after every matching entry was merged."""

    configured: bool = False  # False: no GITOPS_REPO_CONFIG (see the module docstring)
    allowed_overrides: frozenset[str] = frozenset(OVERRIDABLE)
    allow_custom_workflows: bool = False
    allowed_workflows: tuple[str, ...] = ()  # empty: any server workflow
    apply_requirements: tuple[str, ...] = ()
    import_requirements: tuple[str, ...] = ()
    workflow: str | None = None  # the server workflow of projects that name none
    workflows: Mapping[str, Workflow] = field(default_factory=dict)
    pre_workflow_hooks: tuple[Step, ...] = ()
    post_workflow_hooks: tuple[Step, ...] = ()

    @classmethod
    def builtin(cls) -> RepoRules:
        return cls()

    def allows(self, key: str) -> bool:
        return key in self.allowed_overrides


@dataclass(frozen=True)
class _Entry:
    pattern: re.Pattern[str] | None  # None: exact id
    id: str
    values: Mapping[str, Any]

    def matches(self, repo_id: str) -> bool:
        if self.pattern is not None:
            return self.pattern.search(repo_id) is not None
        return self.id.lower() == repo_id.lower()


@dataclass(frozen=True)
class ServerRepoConfig:
    """The parsed file: its entries in order and its workflows."""

    file: str
    entries: tuple[_Entry, ...]
    workflows: Mapping[str, Workflow]

    def rules_for(self, repo_id: str) -> RepoRules:
        """The merged rules of every entry matching `repo_id` (later entries win)."""
        merged: dict[str, Any] = {}
        for entry in self.entries:
            if entry.matches(repo_id):
                merged.update(entry.values)
        workflow = merged.get("workflow")
        if workflow is not None and workflow not in self.workflows:
            raise ConfigError(self.file, None, f"workflow {workflow!r} is not defined")
        return RepoRules(
            configured=True,
            allowed_overrides=frozenset(merged.get("allowed_overrides", ())),
            allow_custom_workflows=bool(merged.get("allow_custom_workflows", False)),
            allowed_workflows=tuple(merged.get("allowed_workflows", ())),
            apply_requirements=tuple(merged.get("apply_requirements", ())),
            import_requirements=tuple(merged.get("import_requirements", ())),
            workflow=workflow,
            workflows=self.workflows,
            pre_workflow_hooks=tuple(merged.get("pre_workflow_hooks", ())),
            post_workflow_hooks=tuple(merged.get("post_workflow_hooks", ())),
        )


def parse_server_config(text: str, file: str) -> ServerRepoConfig:
    """Parse and validate a repos.yaml; a ConfigError names the file and what is wrong."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(file, mark.line + 1 if mark else None, f"invalid YAML: {exc}") from exc
    if not isinstance(data, dict) or set(data) - {"repos", "workflows", "policies", "metrics"}:
        raise ConfigError(file, None, "the top level is a mapping with `repos` and `workflows`")
    try:
        workflows = parse_workflows(data.get("workflows") or {}, "server", shell_allowed=True)
    except WorkflowError as error:
        where = ".".join(str(p) for p in ("workflows", *error.loc))
        raise ConfigError(file, None, error.reason, where) from error
    repos = data.get("repos") or []
    if not isinstance(repos, list):
        raise ConfigError(file, None, "must be a list", "repos")
    entries = tuple(_entry(file, index, raw, workflows) for index, raw in enumerate(repos))
    return ServerRepoConfig(file, entries, workflows)


def _entry(file: str, index: int, raw: Any, workflows: Mapping[str, Workflow]) -> _Entry:
    where = f"repos[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not raw["id"]:
        raise ConfigError(file, None, "each entry is a mapping with an `id`", where)
    unknown = set(raw) - _RULE_KEYS - _IGNORED_KEYS
    if unknown:
        raise ConfigError(file, None, f"unknown key {sorted(unknown)[0]!r}", where)
    for key in sorted(set(raw) & _IGNORED_KEYS):
        log.warning("%s: %s.%s is accepted but has no effect here", file, where, key)
    repo_id: str = raw["id"]
    pattern = None
    if len(repo_id) > 1 and repo_id.startswith("/") and repo_id.endswith("/"):
        try:
            pattern = re.compile(repo_id[1:-1])
        except re.error as exc:
            raise ConfigError(file, None, f"invalid regex: {exc}", f"{where}.id") from exc
    values = {k: _value(file, f"{where}.{k}", k, v, workflows) for k, v in raw.items()}
    values = {k: v for k, v in values.items() if k in _RULE_KEYS and k != "id"}
    return _Entry(pattern, repo_id, values)


def _value(file: str, where: str, key: str, value: Any, workflows: Mapping[str, Any]) -> Any:
    """One entry's value, checked for its key."""
    if key in ("apply_requirements", "import_requirements"):
        names = _strings(file, where, value)
        bad = [n for n in names if n not in _REQUIREMENTS]
        if bad:
            raise ConfigError(file, None, f"unknown requirement {bad[0]!r}", where)
        return names
    if key == "allowed_overrides":
        return _strings(file, where, value)
    if key == "allowed_workflows":
        names = _strings(file, where, value)
        for name in names:
            if name not in workflows:
                raise ConfigError(file, None, f"workflow {name!r} is not defined", where)
        return names
    if key == "allow_custom_workflows" and not isinstance(value, bool):
        raise ConfigError(file, None, "must be true or false", where)
    if key == "workflow" and (not isinstance(value, str) or value not in workflows):
        raise ConfigError(file, None, f"workflow {value!r} is not defined", where)
    if key in ("pre_workflow_hooks", "post_workflow_hooks"):
        return _hooks(file, where, value)
    return value


def _strings(file: str, where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(file, None, "must be a list of strings", where)
    return tuple(value)


def _hooks(file: str, where: str, value: Any) -> tuple[Step, ...]:
    """`- run: CMD` (+ description, shell, shellArgs) items as run steps."""
    if not isinstance(value, list):
        raise ConfigError(file, None, "must be a list of `run:` items", where)
    steps = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("run"), str):
            raise ConfigError(file, None, "each hook needs `run: COMMAND`", f"{where}[{index}]")
        body = {"command": item["run"]} | {k: item[k] for k in ("shell", "shellArgs") if k in item}
        try:
            steps.append(parse_run_step(body))
        except WorkflowError as error:
            raise ConfigError(file, None, error.reason, f"{where}[{index}]") from error
    return tuple(steps)


class ServerConfigSource:
    """Reads GITOPS_REPO_CONFIG when first needed and again whenever the file changes."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, int], ServerRepoConfig] | None = None

    def rules_for(self, repo_id: str) -> RepoRules:
        """The rules of one repository; the built-in ones without a file."""
        if self._path is None:
            return RepoRules.builtin()
        return self._config().rules_for(repo_id)

    def _config(self) -> ServerRepoConfig:
        assert self._path is not None
        name = self._path.name
        try:
            stat = os.stat(self._path)
        except OSError as exc:
            raise ConfigError(name, None, f"cannot read GITOPS_REPO_CONFIG: {exc}") from exc
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if self._cached is None or self._cached[0] != stamp:
                text = self._path.read_text(encoding="utf-8")
                self._cached = (stamp, parse_server_config(text, name))
            return self._cached[1]


_SOURCES: dict[Path | None, ServerConfigSource] = {}
_SOURCES_LOCK = threading.Lock()


def server_rules(path: Path | None, repo_id: str) -> RepoRules:
    """The rules for `repo_id` from the file at `path` (None: built-in), cached per file."""
    with _SOURCES_LOCK:
        source = _SOURCES.setdefault(path, ServerConfigSource(path))
    return source.rules_for(repo_id)


def check_server_config(path: Path | None) -> None:
    """Read the file once at start-up, so a broken one stops `serve` with its error
    instead of failing every pull request later."""
    if path is not None:
        server_rules(path, "")


def merge_requirements(*groups: Sequence[str]) -> tuple[str, ...]:
    """Requirements from several places, each once, in first-seen order."""
    return tuple(dict.fromkeys(name for group in groups for name in group))
