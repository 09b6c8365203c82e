"""The environment Terraform runs with: an allowlist, never the runner's own.

Terraform executes code from the pull request it plans: providers, `external`
data sources, `local-exec` provisioners. Whatever is in Terraform's environment,
that code can read. So Terraform does not inherit the runner's environment (forge
tokens, webhook secrets, Slack token, database URL); it gets only what Terraform,
providers and the embedded launcher need to run, plus the names the operator lists
in GITOPS_TERRAFORM_ENV_PASSTHROUGH (typically cloud credentials). A `GITOPS_*`
variable never passes, whoever asks for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from fnmatch import fnmatchcase
from pathlib import Path

RUNNER_PREFIX = "GITOPS_"

# What Terraform and the processes it starts need whatever the project does.
_ALWAYS = frozenset(
    {
        "PATH",
        "HOME",  # ~/.terraform.d, provider credential files
        "USER",
        "LOGNAME",
        "LANG",
        "TZ",
        "TMPDIR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        # The `python -m runner.terraform.embedded` launcher finds the runner through it
        # when the runner runs from a source tree rather than an installed package.
        "PYTHONPATH",
    }
)
_ALWAYS_PATTERNS = ("TF_*", "LC_*")


def terraform_environment(
    environ: Mapping[str, str],
    passthrough: Iterable[str] = (),
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables of `environ` Terraform may see, plus `extra`; never a `GITOPS_*` one.

    `passthrough` holds the operator's names or fnmatch globs (`AWS_*`), matched
    case-sensitively as the environment is. `extra` (the runner's own additions,
    e.g. credentials configured in code) is added without the allowlist.
    """
    patterns = (*_ALWAYS_PATTERNS, *passthrough)
    allowed = {name: value for name, value in environ.items() if _allowed(name, patterns)}
    merged = allowed | dict(extra or {})
    return {name: value for name, value in merged.items() if not _is_runner_own(name)}


def _allowed(name: str, patterns: tuple[str, ...]) -> bool:
    return name in _ALWAYS or any(fnmatchcase(name, pattern) for pattern in patterns)


def _is_runner_own(name: str) -> bool:
    # Upper-cased: a `gitops_token` is the runner's too on platforms that fold case.
    return name.upper().startswith(RUNNER_PREFIX)


# Where a container's memory limit is, cgroup v2 then v1; absent outside a container.
_CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)
_UNLIMITED = 1 << 60  # cgroup v1 writes a huge number for "no limit"


def go_runtime_env(gc_percent: int, processes: int) -> dict[str, str]:
    """GOGC and GOMEMLIMIT for Terraform and its providers (Go programs, all of them).

    A plan is a short-lived batch process. Go's default collector (GOGC=100) runs each
    time the heap doubles, which for a small plan is a third of its CPU (measured:
    docs/terraform.md, "Go runtime"). A higher GOGC trades memory for that CPU; the soft
    limit GOMEMLIMIT, this machine's (or container's) memory shared by `processes`
    Terraform processes, makes a big plan collect as usual before it could crowd the
    others out. `gc_percent` 0 leaves both to Go.
    """
    if gc_percent <= 0:
        return {}
    env = {"GOGC": str(gc_percent)}
    memory = _memory_bytes()
    if memory:
        env["GOMEMLIMIT"] = f"{memory // max(1, processes) // (1 << 20)}MiB"
    return env


# The cores one Terraform process of the plans now running may use (GOMAXPROCS); None:
# Go's default, every core.
_cores_per_process: ContextVar[int | None] = ContextVar("terraform_cores", default=None)


@contextmanager
def cpu_share(processes_at_once: int, cores: int) -> Iterator[None]:
    """Terraform started inside this block (and in threads given this context) gets
    GOMAXPROCS = its share of `cores` among `processes_at_once` Terraform processes.

    Go sizes its scheduler and parallel garbage collector for every core of the machine.
    When plans run side by side, one per core, each Terraform's extra threads only
    contend with the others: measured on 2 cores, a 40-resource plan takes ~35 % less
    CPU with GOMAXPROCS=1 and no more time (docs/terraform.md, "Go runtime"). A plan
    that runs alone keeps every core.
    """
    token = _cores_per_process.set(max(1, cores // max(1, processes_at_once)))
    try:
        yield
    finally:
        _cores_per_process.reset(token)


def cores_env() -> dict[str, str]:
    """GOMAXPROCS for a Terraform started now (empty outside `cpu_share`)."""
    cores = _cores_per_process.get()
    return {} if cores is None else {"GOMAXPROCS": str(cores)}


def _memory_bytes() -> int | None:
    """The memory this process may use: its cgroup's limit, else the machine's."""
    for limit_file in _CGROUP_LIMITS:
        try:
            text = limit_file.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _UNLIMITED:
            return int(text)
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
