"""Run one stage of a project's custom workflow (`config/workflows.py`), step by step.

Terraform steps go to `terraform/terraform.py` with the step's `extra_args` as separate
argv items. A `run` step is the configured shell line, started as
`[shell, *shellArgs, line]` through the same process runner, environment allowlist and
masking as Terraform. What a run step learns about the change (PR number, branch names,
the commenter, comment flags) it learns from environment variables only, named as
Atlantis names them: a branch called `x; touch /tmp/pwned` stays a value in
`$HEAD_BRANCH_NAME` and is never spliced into a command line. A workflow whose shell
steps the server did not allow (`Workflow.shell_allowed`) fails the project instead of
running them.

The output of every step that shows output is joined, in order, into the stage's
outcome: that is what the comment shows under the project.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from runner.config.model import ProjectConfig
from runner.config.workflows import Stage, StageName, Step, Workflow
from runner.terraform import Terraform, TerraformError, workspace_env
from runner.terraform.result import CommandOutcome

# Atlantis's behaviour users rely on: a workspace's var file is used when it exists.
WORKSPACE_VAR_FILE = "env/{workspace}.tfvars"
_REFRESHING = re.compile(r"Refreshing state\.\.\.|: Reading\.\.\.|: Read complete after")
# An env step's value may not carry a NUL or newline into the later steps' environment.
_BAD_ENV_VALUE = re.compile(r"[\x00\n\r]")


def workspace_var_file_args(workdir: Path, workspace: str) -> tuple[str, ...]:
    """`-var-file=env/WS.tfvars` when that file exists in the project's directory."""
    relative = WORKSPACE_VAR_FILE.format(workspace=workspace)
    candidate = workdir / relative
    # A symlink out of the checkout is refused elsewhere (workspace/confine.py); here a
    # var file is only used when it is a regular file inside the project directory.
    if candidate.is_file() and candidate.resolve().is_relative_to(workdir.resolve()):
        return (f"-var-file={relative}",)
    return ()


def show_file_path(plan_path: Path) -> Path:
    """Where a `show` step writes the plan as JSON (`$SHOWFILE`)."""
    return plan_path.with_name(plan_path.name + ".json")


@dataclass(frozen=True)
class StepContext:
    """The change a workflow runs for; given to `run` steps as environment variables.

    Empty values for what a trigger does not have (drift scans have no pull request).
    """

    pull_num: int | None = None
    pull_url: str = ""
    pull_author: str = ""
    head_commit: str = ""
    base_repo: str = ""  # "owner/name" (GitLab: "group/sub/name")
    head_repo: str = ""
    head_branch: str = ""
    base_branch: str = ""
    user_name: str = ""  # who asked (the commenter; the PR's author on autoplan)
    comment_args: tuple[str, ...] = ()

    def environ(self, project: ProjectConfig, workdir: Path, plan_path: Path) -> dict[str, str]:
        """The documented variables (docs/repo-config.md#custom-workflows)."""
        return {
            "WORKSPACE": project.workspace,
            "DIR": str(workdir),
            "REPO_REL_DIR": project.dir,
            "PROJECT_NAME": project.name,
            "PLANFILE": str(plan_path),
            "SHOWFILE": str(show_file_path(plan_path)),
            "ATLANTIS_TERRAFORM_VERSION": project.terraform_version or "",
            **self._change_environ(),
        }

    def hook_environ(self, root: Path, command: str) -> dict[str, str]:
        """What a server's pre/post workflow hook is told (no project yet: DIR is the root)."""
        return {
            "DIR": str(root),
            "COMMAND_NAME": command,
            **self._change_environ(),
        }

    def _change_environ(self) -> dict[str, str]:
        """The variables about the change itself, shared by steps and hooks."""
        base_owner, base_name = _owner_and_name(self.base_repo)
        head_owner, head_name = _owner_and_name(self.head_repo or self.base_repo)
        return {
            "PULL_NUM": "" if self.pull_num is None else str(self.pull_num),
            "PULL_URL": self.pull_url,
            "PULL_AUTHOR": self.pull_author,
            "HEAD_COMMIT": self.head_commit,
            "BASE_REPO_OWNER": base_owner,
            "BASE_REPO_NAME": base_name,
            "HEAD_REPO_OWNER": head_owner,
            "HEAD_REPO_NAME": head_name,
            "HEAD_BRANCH_NAME": self.head_branch,
            "BASE_BRANCH_NAME": self.base_branch,
            "USER_NAME": self.user_name,
            "COMMENT_ARGS": comment_args_value(self.comment_args),
        }


def terraform_on_path(terraform: Terraform) -> str:
    """PATH for a `run` step, starting with a directory whose `terraform` is the one the
    runner uses (the embedded one included), so `terraform plan -out $PLANFILE` in a
    step runs the same Terraform as the `plan` step."""
    argv = terraform.binary.argv
    digest = hashlib.sha256("\0".join(argv).encode()).hexdigest()[:16]
    shim_dir = terraform.plugin_cache_dir.parent / "terraform-shims" / digest
    shim = shim_dir / "terraform"
    if not shim.exists():
        shim_dir.mkdir(parents=True, exist_ok=True)
        script = "#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in argv) + ' "$@"\n'
        partial = shim_dir / f".terraform.{os.getpid()}.{threading.get_ident()}"
        partial.write_text(script)
        partial.chmod(0o755)
        partial.replace(shim)  # atomic: a concurrent step never sees half a script
    return os.pathsep.join((str(shim_dir), terraform.env.get("PATH", os.defpath)))


def comment_args_value(args: Sequence[str]) -> str:
    """Atlantis's `COMMENT_ARGS`: the flags after `--`, comma-separated, every character
    backslash-escaped, so that even an `eval` cannot read them as shell syntax."""
    return ",".join("".join(f"\\{char}" for char in arg) for arg in args)


def _owner_and_name(full_name: str) -> tuple[str, str]:
    owner, _, name = full_name.rpartition("/")
    return owner, name


# A Terraform step: the step (with its extra_args) and the env steps' variables so far.
TerraformStep = Callable[[Step, Mapping[str, str]], CommandOutcome | None]


@dataclass
class StageOutcome:
    """What a stage did: the main Terraform step's outcome, or the first failure."""

    outputs: list[str] = field(default_factory=list)
    main: CommandOutcome | None = None
    failed: CommandOutcome | None = None
    refused: str = ""

    @property
    def output(self) -> str:
        return "\n".join(text.rstrip("\n") for text in self.outputs if text.strip())

    def final(self) -> CommandOutcome | None:
        """The outcome to report (failure first), carrying every step's shown output."""
        if self.failed is not None:
            # A failed step whose exit code reads as success or "changes" to a plan.
            code = 1 if self.failed.exit_code in (0, 2) else self.failed.exit_code
            return replace(self.failed, stdout=self.output, exit_code=code)
        return None if self.main is None else replace(self.main, stdout=self.output)


@dataclass(frozen=True)
class StageRunner:
    """Runs the steps of one stage for one project in one working directory."""

    terraform: Terraform
    workdir: Path
    project: ProjectConfig
    plan_path: Path
    context: StepContext
    log: Path | None = None
    cancel: threading.Event | None = None

    def outcome(
        self, workflow: Workflow, stage_name: StageName, main: TerraformStep
    ) -> CommandOutcome | str:
        """Run the stage with `main` as its Terraform step (plan, apply, import, state_rm);
        the outcome carries every shown output; a str says why the stage was refused."""
        stage = self.run(workflow, stage_name, {"init": self._init, stage_name: main})
        if stage.refused:
            return stage.refused
        final = stage.final()
        if final is not None:
            return final
        # No Terraform step of its own: its `run` steps did the work.
        code = 0
        if stage_name == "plan":
            code = plan_status_from_file(self.terraform, self.workdir, self.plan_path)
        why = "the plan stage's run steps wrote no plan file to $PLANFILE" if code == 1 else ""
        return CommandOutcome(("run",), code, stage.output, why, 0.0)

    def _init(self, step: Step, stage_env: Mapping[str, str]) -> CommandOutcome | None:
        """`init` (with its extra_args), then the project's workspace, as Atlantis does."""
        env = dict(stage_env) or None
        terraform, workdir = self.terraform, self.workdir
        outcome = terraform.init(
            workdir, self.log, extra_args=step.extra_args, env=env, cancel=self.cancel
        )
        if not outcome.ok:
            return outcome
        selected = terraform.select_workspace(
            workdir, self.project.workspace, self.log, env=env, cancel=self.cancel
        )
        return selected if selected is not None and not selected.ok else outcome

    def run(
        self, workflow: Workflow, stage_name: StageName, steps: Mapping[str, TerraformStep]
    ) -> StageOutcome:
        """Every step in order; the first failing one ends the stage."""
        stage: Stage = workflow.stage(stage_name)
        result = StageOutcome()
        if stage.uses_shell and not workflow.shell_allowed:
            result.refused = (
                f"workflow {workflow.name!r} has `run`/`env: command` steps, which this server "
                "does not run for a repository-defined workflow (allow_custom_workflows in "
                "GITOPS_REPO_CONFIG)"
            )
            return result
        stage_env: dict[str, str] = {}
        for step in stage.steps:
            outcome = self._step(step, stage_env, steps, result)
            if outcome is not None and not outcome.ok and not _plan_changes(step, outcome):
                result.failed = outcome
                return result
        return result

    def _step(
        self,
        step: Step,
        stage_env: dict[str, str],
        steps: Mapping[str, TerraformStep],
        result: StageOutcome,
    ) -> CommandOutcome | None:
        if step.kind == "run":
            outcome = self._shell(step, stage_env)
            result.outputs.append(_shown(step, outcome))
            return outcome
        if step.kind == "env":
            return self._env(step, stage_env, result)
        if step.kind == "show":
            return self._show(result)
        outcome = steps[step.kind](step, dict(stage_env))
        if outcome is None:
            return None
        if step.kind != "init" or not outcome.ok:
            result.outputs.append(outcome.stdout)
        if step.kind not in ("init",):
            result.main = outcome
        return outcome

    def _shell(self, step: Step, stage_env: Mapping[str, str]) -> CommandOutcome:
        assert step.command is not None
        env = self.context.environ(self.project, self.workdir, self.plan_path)
        env["PATH"] = terraform_on_path(self.terraform)
        return self.terraform.run_step(
            (step.shell, *step.shell_args, step.command),
            self.workdir,
            self.log,
            env=env | workspace_env(self.project.workspace) | dict(stage_env),
            cancel=self.cancel,
        )

    def _env(
        self, step: Step, stage_env: dict[str, str], result: StageOutcome
    ) -> CommandOutcome | None:
        assert step.name is not None
        if step.command is None:
            stage_env[step.name] = step.value or ""
            return None
        outcome = self._shell(step, stage_env)
        value = outcome.stdout.strip()
        if outcome.ok and _BAD_ENV_VALUE.search(value):
            result.outputs.append(f"env {step.name}: the command printed more than one line")
            return replace(outcome, exit_code=1, stderr="env step output has several lines")
        if not outcome.ok:
            result.outputs.append(_shown(step, outcome))
        stage_env[step.name] = value
        return outcome

    def _show(self, result: StageOutcome) -> CommandOutcome | None:
        """Write the plan as JSON to `$SHOWFILE` for later steps (conftest, infracost...)."""
        try:
            document = self.terraform.show_json(self.workdir, self.plan_path, cancel=self.cancel)
        except TerraformError as error:
            result.outputs.append(error.outcome.stdout + error.outcome.stderr)
            return error.outcome
        show_file_path(self.plan_path).write_text(json.dumps(document))
        return None


def _plan_changes(step: Step, outcome: CommandOutcome) -> bool:
    """`plan -detailed-exitcode` exits 2 for "changes": not a failure of the stage."""
    return step.kind == "plan" and outcome.exit_code == 2 and not outcome.timed_out


def _shown(step: Step, outcome: CommandOutcome) -> str:
    """What of a run step's output the comment shows (its `output:` setting)."""
    if step.output == "hide":
        return "" if outcome.ok else outcome.stderr
    text = outcome.stdout + (("\n" + outcome.stderr) if outcome.stderr.strip() else "")
    if step.output == "strip_refreshing":
        text = "\n".join(line for line in text.splitlines() if not _REFRESHING.search(line))
    return text


def plan_status_from_file(terraform: Terraform, workdir: Path, plan_path: Path) -> int:
    """For a plan stage whose `run` steps wrote `$PLANFILE` themselves: 2 when the plan
    changes something, 0 when not, 1 when there is no readable plan file."""
    if not plan_path.is_file():
        return 1
    try:
        document = terraform.show_json(workdir, plan_path)
    except TerraformError:
        return 1
    actions = [
        change.get("change", {}).get("actions", [])
        for change in (document.get("resource_changes") or [])
    ]
    outputs = [
        change.get("actions", []) for change in (document.get("output_changes") or {}).values()
    ]
    changed = any(a and a != ["no-op"] for a in (*actions, *outputs))
    return 2 if changed else 0


def apply_with_workflow(runner: StageRunner, workflow: Workflow) -> CommandOutcome:
    """The apply stage of a custom workflow: its `apply` step applies the saved plan
    (`$PLANFILE`) with the step's extra_args; a refused stage is a failed apply."""
    terraform, project = runner.terraform, runner.project

    def apply(step: Step, env: Mapping[str, str]) -> CommandOutcome:
        return terraform.apply(
            runner.workdir,
            runner.plan_path,
            runner.log,
            extra_args=step.extra_args,
            env=workspace_env(project.workspace) | dict(env),
            cancel=runner.cancel,
        )

    staged = runner.outcome(workflow, "apply", apply)
    if isinstance(staged, str):
        return CommandOutcome(("apply",), 1, "", staged, 0.0)
    return staged


def context_of_request(
    repo_key: str, pr_number: int | None, author: str, commit: str
) -> StepContext:
    """What an apply knows about its change, for the apply stage's `run` steps."""
    full_name = repo_key.partition("/")[2]
    return StepContext(
        pull_num=pr_number,
        head_commit=commit,
        base_repo=full_name,
        user_name=author,
    )


def run_hooks(
    terraform: Terraform,
    hooks: Sequence[Step],
    root: Path,
    env: Mapping[str, str],
    cancel: threading.Event | None = None,
) -> CommandOutcome | None:
    """Run the server's workflow hooks in the checkout's root, in order; the first
    failing hook's outcome (its output in `stdout`), or None when all succeeded."""
    env = dict(env) | {"PATH": terraform_on_path(terraform)}
    for hook in hooks:
        assert hook.command is not None
        argv = (hook.shell, *hook.shell_args, hook.command)
        outcome = terraform.run_step(argv, root, None, env=env, cancel=cancel)
        if not outcome.ok:
            return replace(outcome, stdout=_shown(hook, outcome))
    return None
