"""Turn the first line of a PR comment into a `Command` (or a helpful refusal).

Called once per comment, by the forge's event parser (`events/github.py`): the
`CommentEvent` carries the outcome, so the webhook, the job and the PR flow never
read the text again.

Comments are written by anyone who can comment on a pull request, so this is a
trust boundary: the line is tokenised with `shlex` in POSIX mode (never a shell),
every option value is checked against a narrow pattern, and Terraform flags after
`--` are accepted only from an allowlist. Nothing here runs anything; values that
look like shell syntax are refused anyway, so an injection attempt is visibly
rejected instead of silently reaching Terraform as an odd argument.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from runner.events.commands import COMMAND_NAMES, Command, CommandError, CommandName

KEYWORDS = frozenset({"gitops", "atlantis"})

# A comment line longer than this is not a command anyone typed by hand.
_MAX_LINE = 2000

_IDENT = r"[A-Za-z_][A-Za-z0-9_-]*"
# Instance keys: count index or for_each string key. `"`, `\`, `$`, backtick and
# control characters are excluded so a key cannot smuggle quoting or substitutions.
_KEY = r'\[(?:[0-9]+|"[^"\\$`\x00-\x1f\x7f]*")\]'
_ADDRESS_RE = re.compile(rf"{_IDENT}(?:{_KEY})?(?:\.{_IDENT}(?:{_KEY})?)*")
_IDENT_RE = re.compile(_IDENT)
# Project names may contain "/" because autodiscovery names projects after their dir.
# ":" too: a project without a name is called `dir:workspace` (config/model.py).
_PROJECT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./:@+-]{0,127}")
# Terraform refuses workspace names that are not a plain URL path segment.
_WORKSPACE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,89}")
_DIR_RE = re.compile(r"[A-Za-z0-9_./@+-]{1,255}")
# Refused in -var values: shell metacharacters and control characters (see module doc).
_VAR_VALUE_FORBIDDEN = re.compile(r"[`$;&|<>\x00-\x1f\x7f]")

# Resource ids are the provider's (`i-0abc`, ARNs, `/subscriptions/...`, `proj/zone/vm`):
# printable, no quoting or substitution characters, never starting with `-` (a flag).
_RESOURCE_ID_RE = re.compile(r"[A-Za-z0-9_./:@=+,%~#*\[\]{}][A-Za-z0-9_./:@=+,%~#*\[\]{}-]{0,1023}")
_MAX_STATE_ADDRESSES = 50

_USAGE = {
    "plan": "gitops plan [-p PROJECT | -d DIR] [-w WORKSPACE] [-- FLAGS]",
    "apply": "gitops apply [-p PROJECT | -d DIR] [-w WORKSPACE]",
    "unlock": "gitops unlock",
    "help": "gitops help",
    "approve_policies": "gitops approve_policies [-p PROJECT | -d DIR] [-w WORKSPACE]",
    "import": "gitops import [-p PROJECT | -d DIR] [-w WORKSPACE] ADDRESS ID",
    "state_rm": "gitops state rm [-p PROJECT | -d DIR] [-w WORKSPACE] ADDRESS...",
    "version": "gitops version",
    "cancel": "gitops cancel",
}
# Commands that take no arguments at all.
_BARE = frozenset({"unlock", "help", "version", "cancel"})

_OPTIONS = {
    "-p": "project",
    "--project": "project",
    "-d": "dir",
    "--dir": "dir",
    "-w": "workspace",
    "--workspace": "workspace",
}


class _Invalid(Exception):
    """Internal: a reason to refuse the comment, turned into a CommandError at the top."""


# --- Terraform flags allowed after `--` -----------------------------------------------------


def _address(value: str) -> str:
    if len(value) > 512 or not _ADDRESS_RE.fullmatch(value):
        hint = ""
        if "[" in value and '"' not in value:
            # shlex removed the double quotes of a for_each key, as a shell would.
            hint = " Put an address with a string key in single quotes: `-target='a.b[\"key\"]'`."
        raise _Invalid(f"{_code(value)} is not a Terraform resource address.{hint}")
    return value


def _var(value: str) -> str:
    key, eq, val = value.partition("=")
    if not eq or not _IDENT_RE.fullmatch(key):
        raise _Invalid(f"`-var` needs `NAME=VALUE`, got {_code(value)}.")
    if len(val) > 1024 or _VAR_VALUE_FORBIDDEN.search(val):
        raise _Invalid(
            f"The value of `-var {key}` may not contain control characters or any of "
            "`` ` $ ; & | < > ``."
        )
    return value


def _bool(value: str) -> str:
    if value not in ("true", "false"):
        raise _Invalid(f"`-refresh` takes `true` or `false`, got {_code(value)}.")
    return value


def _parallelism(value: str) -> str:
    if not re.fullmatch(r"[1-9][0-9]{0,2}", value) or int(value) > 256:
        raise _Invalid(f"`-parallelism` takes a number from 1 to 256, got {_code(value)}.")
    return value


@dataclass(frozen=True)
class _FlagSpec:
    # None: a bare switch that never takes a value (and never consumes the next token).
    validate: Callable[[str], str] | None
    form: str
    doc: str


PLAN_FLAGS: dict[str, _FlagSpec] = {
    "-target": _FlagSpec(_address, "-target=ADDR", "plan only this resource or module"),
    "-replace": _FlagSpec(_address, "-replace=ADDR", "plan to replace this resource"),
    "-var": _FlagSpec(_var, "-var=NAME=VALUE", "set an input variable"),
    "-refresh": _FlagSpec(_bool, "-refresh=true|false", "skip or force the refresh"),
    "-parallelism": _FlagSpec(_parallelism, "-parallelism=N", "1 to 256 concurrent operations"),
    "-destroy": _FlagSpec(None, "-destroy", "plan destroying everything in the project"),
    "-refresh-only": _FlagSpec(None, "-refresh-only", "plan only to update state to reality"),
    "-compact-warnings": _FlagSpec(None, "-compact-warnings", "shorten warnings"),
}


def allowed_flags_text() -> str:
    """The allowlist as inline Markdown, for refusals and docs."""
    return ", ".join(f"`{spec.form}`" for spec in PLAN_FLAGS.values())


def _parse_plan_flags(tokens: list[str]) -> tuple[str, ...]:
    """Allowlisted flags, each normalised to `-flag` or `-flag=value`."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        # Terraform (Go's flag package) treats `--flag` like `-flag`; accept it the same way.
        flag = token[1:] if token.startswith("--") and len(token) > 2 else token
        name, eq, value = flag.partition("=")
        spec = PLAN_FLAGS.get(name) if name.startswith("-") else None
        if spec is None:
            raise _Invalid(
                f"{_code(token)} is not allowed after `--`. Allowed: {allowed_flags_text()}."
            )
        if spec.validate is None:
            if eq:
                raise _Invalid(f"`{name}` takes no value.")
            out.append(name)
            continue
        if not eq:
            if i >= len(tokens):
                raise _Invalid(f"`{name}` needs a value: `{spec.form}`.")
            value = tokens[i]
            i += 1
        out.append(f"{name}={spec.validate(value)}")
    if "-destroy" in out and "-refresh-only" in out:
        raise _Invalid("`-destroy` and `-refresh-only` cannot be used together.")
    return tuple(out)


# --- options -------------------------------------------------------------------------------


def _project(value: str) -> str:
    if not _PROJECT_RE.fullmatch(value):
        raise _Invalid(f"{_code(value)} is not a valid project name.")
    return value


def _workspace(value: str) -> str:
    if not _WORKSPACE_RE.fullmatch(value):
        raise _Invalid(f"{_code(value)} is not a valid workspace name.")
    return value


def _dir(value: str) -> str:
    """A POSIX path relative to the repository root that cannot leave it."""
    if value.startswith("/"):
        raise _Invalid(f"`--dir` must be relative to the repository root, got {_code(value)}.")
    if not _DIR_RE.fullmatch(value):
        raise _Invalid(f"{_code(value)} is not a valid directory.")
    # Checked on the raw segments: normpath would quietly fold `a/../..` into `..`.
    if ".." in value.split("/"):
        raise _Invalid(f"`--dir` may not contain `..`, got {_code(value)}.")
    return posixpath.normpath(value)


_VALIDATORS: dict[str, Callable[[str], str]] = {
    "project": _project,
    "dir": _dir,
    "workspace": _workspace,
}


def _resource_id(value: str) -> str:
    if not _RESOURCE_ID_RE.fullmatch(value):
        raise _Invalid(
            f"{_code(value)} is not a resource id this runner accepts (printable, no quotes, "
            "`$`, `;`, `&`, `|`, `<`, `>` or backticks; not starting with `-`)."
        )
    return value


def _positional(name: CommandName, positional: list[str]) -> tuple[str, ...]:
    """`import ADDRESS ID`, `state rm ADDRESS...`: checked, one argv item each."""
    if name == "import":
        if len(positional) != 2:
            raise _Invalid("`import` needs a resource address and an id: `ADDRESS ID`.")
        return (_address(positional[0]), _resource_id(positional[1]))
    if name == "state_rm":
        if not positional:
            raise _Invalid("`state rm` needs at least one resource address.")
        if len(positional) > _MAX_STATE_ADDRESSES:
            raise _Invalid(f"`state rm` takes at most {_MAX_STATE_ADDRESSES} addresses.")
        return tuple(_address(address) for address in positional)
    if positional:
        raise _Invalid(f"Unknown argument {_code(positional[0])}.")
    return ()


def _parse_args(name: CommandName, args: list[str]) -> Command:
    if name in _BARE and args:
        shown = "state rm" if name == "state_rm" else name
        raise _Invalid(f"`{shown}` takes no arguments.")
    values: dict[str, str] = {}
    extra: tuple[str, ...] = ()
    positional: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if token == "--":
            if name != "plan":
                raise _Invalid("Terraform flags after `--` are only accepted on `plan`.")
            extra = _parse_plan_flags(args[i:])
            break
        option, eq, value = token.partition("=")
        field = _OPTIONS.get(option)
        if field is None and not token.startswith("-") and name in ("import", "state_rm"):
            positional.append(token)
            continue
        if field is None:
            kind = "option" if token.startswith("-") else "argument"
            raise _Invalid(f"Unknown {kind} {_code(token)}.")
        if not eq:
            if i >= len(args):
                raise _Invalid(f"`{option}` needs a value.")
            value = args[i]
            i += 1
        if field in values:
            raise _Invalid(f"`--{field}` was given more than once.")
        values[field] = _VALIDATORS[field](value)
    if "project" in values and "dir" in values:
        raise _Invalid("Use either `-p PROJECT` or `-d DIR`, not both.")
    return Command(
        name=name,
        project=values.get("project"),
        dir=values.get("dir"),
        workspace=values.get("workspace"),
        extra_args=extra,
        args=_positional(name, positional),
    )


# --- entry points --------------------------------------------------------------------------


def parse_comment(body: str) -> Command | CommandError | None:
    """Parse a PR comment; None when it is not addressed to the runner.

    Only the first non-blank line counts, so a command can be followed by an
    explanation. The keyword (`gitops`, or `atlantis` for teams migrating) must be
    the first word, in any case; `gitopsfoo` or `> gitops plan` are not for us.
    """
    if not isinstance(body, str):
        return None
    stripped = body.lstrip()
    line = stripped.splitlines()[0].strip() if stripped else ""
    words = line.split(maxsplit=1)
    if not words or words[0].lower() not in KEYWORDS:
        return None
    name: CommandName | None = None
    try:
        if len(line) > _MAX_LINE:
            raise _Invalid(f"The command line is longer than {_MAX_LINE} characters.")
        try:
            tokens = shlex.split(line, posix=True)
        except ValueError as exc:  # unbalanced quotes or a trailing backslash
            raise _Invalid(f"Could not split the command line: {exc}.") from None
        if len(tokens) < 2:
            raise _Invalid("No command given.")
        name = _command_name(tokens[1])
        rest = tokens[2:]
        if name == "state_rm":
            # `gitops state rm ...`: Atlantis's only state subcommand.
            if not rest or rest[0].lower() != "rm":
                raise _Invalid("Only `state rm` is supported.")
            rest = rest[1:]
        return _parse_args(name, rest)
    except _Invalid as exc:
        return _error(str(exc), name)


def _command_name(token: str) -> CommandName:
    if token.lower() == "state":
        return "state_rm"
    for name in COMMAND_NAMES:
        if token.lower() == name and name != "state_rm":
            return name
    raise _Invalid(f"Unknown command {_code(token)}.")


def _error(reason: str, name: CommandName | None) -> CommandError:
    usage = "\n".join(_USAGE[n] for n in ([name] if name else COMMAND_NAMES))
    message = (
        f"**gitops-runner could not run this command.** {reason}\n\n"
        f"Usage:\n\n```\n{usage}\n```\n\n"
        "Comment `gitops help` for all options."
    )
    return CommandError(reason=reason, message=message)


def help_text() -> str:
    """Markdown answer to `gitops help`."""
    flags = "\n".join(f"- `{spec.form}`: {spec.doc}" for spec in PLAN_FLAGS.values())
    # A `|` inside a table cell ends the cell, even within a code span, unless escaped.
    usage = {name: text.replace("|", "\\|") for name, text in _USAGE.items()}
    return f"""\
### gitops-runner commands

Comment on the pull request. Only the first line of the comment is read;
`atlantis` works in place of `gitops`.

| Command | What it does |
|---|---|
| `{usage["plan"]}` | Plan the affected projects (or the one selected). |
| `{usage["apply"]}` | Apply the plans of this pull request (or the one selected). |
| `{usage["unlock"]}` | Release the locks this pull request holds and discard its plans. |
| `{usage["approve_policies"]}` | As an owner of a failing policy set, approve its plans. |
| `{usage["import"]}` | Import an existing object into the project's state (when enabled). |
| `{usage["state_rm"]}` | Remove objects from the project's state (when enabled). |
| `{usage["cancel"]}` | Drop this pull request's queued runs. |
| `{usage["version"]}` | Show the runner's and Terraform's versions. |
| `{usage["help"]}` | Show this help. |

**Options**

- `-p PROJECT`, `--project PROJECT`: a project by name (from the repository config)
- `-d DIR`, `--dir DIR`: the project(s) in this directory, relative to the repository root
- `-w WORKSPACE`, `--workspace WORKSPACE`: the Terraform workspace

`-p` and `-d` cannot be combined.

**Terraform flags after `--`** (on `plan` only; anything else is refused)

{flags}

Example: `gitops plan -d envs/prod -- -target=module.vpc -var=instance_count=2`
"""


def _code(text: str) -> str:
    """Echo user input inside an inline code span, so it cannot render Markdown or @mention."""
    clean = re.sub(r"[`\x00-\x1f\x7f]", "'", text)
    if len(clean) > 60:
        clean = clean[:57] + "..."
    return f"`{clean}`" if clean.strip() else "`(empty)`"
