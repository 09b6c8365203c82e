"""Custom workflows: which steps a project's plan, apply, import and state rm run.

The schema is Atlantis's (`workflows:` in atlantis.yaml and in the server's repos.yaml),
so a migrating team keeps its files. A step is a Terraform step (`init`, `plan`,
`apply`, `show`, `import`, `state_rm`) with optional `extra_args`, passed to Terraform
as separate argv items (never through a shell), or `run` (a shell line) or `env` (a
variable for the later steps, a value or a shell line's output).

Shell lines come from configuration, never from a comment or a branch name: those reach
a `run` step only as environment variables (`engine/workflow_steps.py`). A workflow knows
who defined it: `shell_allowed` is true only for the server's own workflows, or a
repository's when the server allows custom workflows (`config/server_config.py`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

StepKind = Literal["init", "plan", "apply", "show", "import", "state_rm", "run", "env"]
StageName = Literal["plan", "apply", "import", "state_rm"]
RunOutput = Literal["show", "hide", "strip_refreshing"]

STAGE_NAMES: tuple[StageName, ...] = ("plan", "apply", "import", "state_rm")
# The Terraform step each stage exists for: a stage without it would do nothing useful.
_MAIN_STEP: dict[StageName, StepKind] = {
    "plan": "plan",
    "apply": "apply",
    "import": "import",
    "state_rm": "state_rm",
}
_TERRAFORM_STEPS = frozenset({"init", "plan", "apply", "show", "import", "state_rm"})
# Atlantis steps with no meaning here; named so the refusal can say why.
_UNSUPPORTED_STEPS = {
    "multienv": "`multienv` is not supported; use one `env` step per variable",
    "policy_check": "`policy_check` steps are not supported; policy sets run on every plan "
    "(docs/policies.md)",
    "version": "`version` steps are not supported",
}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_WORKFLOW_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_MAX_ARGS = 64
_MAX_ARG = 1024


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Step(_Frozen):
    """One step of a stage, already validated."""

    kind: StepKind
    # Terraform steps: arguments after Terraform's own, each one argv item.
    extra_args: tuple[str, ...] = ()
    # `run`, and `env` with `command`: the shell line.
    command: str | None = None
    # `env`: the variable set for later steps, and its literal value.
    name: str | None = None
    value: str | None = None
    # `run`: what of its output the comment shows.
    output: RunOutput = "show"
    shell: str = "sh"
    shell_args: tuple[str, ...] = ("-c",)

    @property
    def uses_shell(self) -> bool:
        return self.command is not None


class Stage(_Frozen):
    steps: tuple[Step, ...]

    @property
    def uses_shell(self) -> bool:
        return any(step.uses_shell for step in self.steps)


DEFAULT_STAGES: dict[StageName, Stage] = {
    "plan": Stage(steps=(Step(kind="init"), Step(kind="plan"))),
    "apply": Stage(steps=(Step(kind="apply"),)),
    "import": Stage(steps=(Step(kind="init"), Step(kind="import"))),
    "state_rm": Stage(steps=(Step(kind="init"), Step(kind="state_rm"))),
}


class Workflow(_Frozen):
    """A named set of stages; a stage it does not define runs the default steps."""

    name: str
    source: Literal["repo", "server"]
    stages: dict[str, Stage] = {}
    # Whether its `run` and `env: command` steps may run (see the module docstring).
    shell_allowed: bool = False

    def stage(self, name: StageName) -> Stage:
        return self.stages.get(name) or DEFAULT_STAGES[name]

    @property
    def uses_shell(self) -> bool:
        return any(stage.uses_shell for stage in self.stages.values())


class WorkflowError(ValueError):
    """A workflow definition that cannot be used; `loc` says where, below `workflows`."""

    def __init__(self, loc: tuple[str | int, ...], reason: str) -> None:
        super().__init__(reason)
        self.loc = loc
        self.reason = reason


def parse_workflows(
    raw: Any, source: Literal["repo", "server"], *, shell_allowed: bool
) -> dict[str, Workflow]:
    """The `workflows:` mapping of a repo config or repos.yaml, validated."""
    if not isinstance(raw, Mapping):
        raise WorkflowError((), "must be a mapping of workflow names to stages")
    workflows: dict[str, Workflow] = {}
    for name, body in raw.items():
        if not isinstance(name, str) or not _WORKFLOW_NAME.fullmatch(name):
            raise WorkflowError((str(name),), "is not a plain workflow name")
        workflows[name] = Workflow(
            name=name,
            source=source,
            stages=_stages(name, body),
            shell_allowed=shell_allowed,
        )
    return workflows


def _stages(name: str, body: Any) -> dict[str, Stage]:
    if body is None:
        return {}
    if not isinstance(body, Mapping):
        raise WorkflowError((name,), "must be a mapping of stages (plan, apply, import, state_rm)")
    stages: dict[str, Stage] = {}
    for stage_name, stage in body.items():
        loc = (name, stage_name)
        if stage_name == "policy_check":
            continue  # policies are the server's policy sets; see docs/atlantis-migration.md
        if stage_name not in STAGE_NAMES:
            raise WorkflowError(loc, f"unknown stage; stages are {', '.join(STAGE_NAMES)}")
        stages[stage_name] = _stage(loc, stage_name, stage)
    return stages


def _stage(loc: tuple[str | int, ...], stage_name: StageName, raw: Any) -> Stage:
    if raw is None:
        return DEFAULT_STAGES[stage_name]
    if not isinstance(raw, Mapping) or set(raw) - {"steps"}:
        raise WorkflowError(loc, "a stage is a mapping with one key, `steps`")
    raw_steps = raw.get("steps")
    if raw_steps is None:
        return DEFAULT_STAGES[stage_name]
    if not isinstance(raw_steps, list | tuple):
        raise WorkflowError((*loc, "steps"), "must be a list")
    steps = tuple(_step((*loc, "steps", i), item) for i, item in enumerate(raw_steps))
    main = _MAIN_STEP[stage_name]
    if sum(step.kind == main for step in steps) > 1:
        raise WorkflowError((*loc, "steps"), f"a {stage_name} stage has at most one `{main}` step")
    if not any(step.kind == main for step in steps) and not any(s.kind == "run" for s in steps):
        reason = f"a {stage_name} stage needs a `{main}` step, or `run` steps doing its work"
        raise WorkflowError((*loc, "steps"), reason)
    misplaced = [s.kind for s in steps if s.kind in _TERRAFORM_STEPS - {"init", "show", main}]
    if misplaced:
        raise WorkflowError((*loc, "steps"), f"`{misplaced[0]}` does not belong in {stage_name}")
    return Stage(steps=steps)


def _step(loc: tuple[str | int, ...], raw: Any) -> Step:
    if isinstance(raw, str):
        return _kind_only(loc, raw)
    if not isinstance(raw, Mapping) or len(raw) != 1:
        raise WorkflowError(loc, "a step is a name (`init`) or a mapping with one key")
    ((kind, body),) = raw.items()
    if kind == "run":
        return _run_step(loc, body)
    if kind == "env":
        return _env_step(loc, body)
    step = _kind_only(loc, kind)
    if body is None:
        return step
    if not isinstance(body, Mapping) or set(body) - {"extra_args"}:
        raise WorkflowError((*loc, kind), "a Terraform step takes only `extra_args`")
    return step.model_copy(update={"extra_args": _extra_args((*loc, kind), body.get("extra_args"))})


def _kind_only(loc: tuple[str | int, ...], kind: Any) -> Step:
    if kind in _UNSUPPORTED_STEPS:
        raise WorkflowError(loc, _UNSUPPORTED_STEPS[kind])
    if kind not in _TERRAFORM_STEPS:
        raise WorkflowError(loc, f"unknown step {kind!r}")
    return Step(kind=kind)


def _extra_args(loc: tuple[str | int, ...], raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple) or not all(isinstance(a, str) for a in raw):
        raise WorkflowError((*loc, "extra_args"), "must be a list of strings")
    if len(raw) > _MAX_ARGS or any(len(a) > _MAX_ARG or "\0" in a for a in raw):
        raise WorkflowError((*loc, "extra_args"), "too many or too long arguments")
    return tuple(raw)


def parse_run_step(body: Any) -> Step:
    """A `run` step from its body: a shell line, or `command` (+ output, shell, shellArgs)."""
    return _run_step((), body)


def _run_step(loc: tuple[str | int, ...], body: Any) -> Step:
    if isinstance(body, str):
        return Step(kind="run", command=_command((*loc, "run"), body))
    allowed = {"command", "output", "shell", "shellArgs"}
    if not isinstance(body, Mapping) or set(body) - allowed or "command" not in body:
        raise WorkflowError(
            (*loc, "run"), "`run` takes a shell line, or `command` (+ output, shell, shellArgs)"
        )
    output = body.get("output", "show")
    if output not in ("show", "hide", "strip_refreshing"):
        raise WorkflowError((*loc, "run", "output"), "must be show, hide or strip_refreshing")
    return Step(
        kind="run",
        command=_command((*loc, "run", "command"), body["command"]),
        output=output,
        **_shell((*loc, "run"), body),
    )


def _env_step(loc: tuple[str | int, ...], body: Any) -> Step:
    allowed = {"name", "value", "command", "shell", "shellArgs"}
    if not isinstance(body, Mapping) or set(body) - allowed:
        raise WorkflowError((*loc, "env"), "`env` takes name, and value or command")
    name = body.get("name")
    if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
        raise WorkflowError((*loc, "env", "name"), "must be an environment variable name")
    if ("value" in body) == ("command" in body):
        raise WorkflowError((*loc, "env"), "give exactly one of `value` and `command`")
    if "value" in body:
        value = body["value"]
        if not isinstance(value, str | int | float | bool):
            raise WorkflowError((*loc, "env", "value"), "must be a string")
        return Step(kind="env", name=name, value=str(value))
    command = _command((*loc, "env", "command"), body["command"])
    return Step(kind="env", name=name, command=command, **_shell((*loc, "env"), body))


def _command(loc: tuple[str | int, ...], raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip() or "\0" in raw:
        raise WorkflowError(loc, "must be a non-empty shell line")
    return raw


def _shell(loc: tuple[str | int, ...], body: Mapping[str, Any]) -> dict[str, Any]:
    shell = body.get("shell", "sh")
    args = body.get("shellArgs", "-c")
    if not isinstance(shell, str) or not re.fullmatch(r"[A-Za-z0-9_./-]+", shell):
        raise WorkflowError((*loc, "shell"), "must be a program name, e.g. bash")
    if isinstance(args, str):
        args = args.split()
    if not isinstance(args, list | tuple) or not all(isinstance(a, str) for a in args):
        raise WorkflowError((*loc, "shellArgs"), "must be a string or a list of strings")
    return {"shell": shell, "shell_args": tuple(args)}
