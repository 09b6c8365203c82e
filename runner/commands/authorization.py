"""Who may run which comment command on which pull request.

The PR flow asks here before anything is checked out, locked or planned. Two facts
decide, both read live from the forge: whether the PR comes from a fork (its code
and config are a stranger's) and the commenter's permission on the repository.
docs/commands.md has the table; `apply_requirements.py` decides on approvals.
"""

from __future__ import annotations

from runner.events.commands import Command
from runner.forge.base import WRITE_PERMISSIONS, Permission, PullRequestInfo

# Commands that change state or trust: they need write permission whatever their options.
_WRITE_COMMANDS = frozenset({"apply", "unlock", "import", "state_rm", "cancel"})


def refusal(
    command: Command,
    pr: PullRequestInfo,
    user: str,
    permission: Permission,
    *,
    allow_forks: bool,
) -> str | None:
    """Why `user` may not run `command` on `pr` (plain text for the PR), None if they may.

    `help` is always answered: it runs nothing.
    """
    if command.name == "help":
        return None
    if pr.is_fork and not allow_forks:
        return _FORK_REFUSAL
    if permission == "none":
        return f"@{user} has no access to this repository, so only gitops help is available."
    if permission not in WRITE_PERMISSIONS and _needs_write(command):
        return f"@{user} needs write permission on the repository to {_what(command)}."
    return None


def is_trusted(permission: Permission) -> bool:
    """Whether a plan asked for with this permission may later be applied.

    A reader may see a plan of the PR's head, but their plan replacing the saved one
    must not become what a maintainer's `gitops apply` applies.
    """
    return permission in WRITE_PERMISSIONS


def _needs_write(command: Command) -> bool:
    # Flags change what the plan does (-destroy, -var, -target): only writers may ask.
    return command.name in _WRITE_COMMANDS or bool(command.extra_args)


def _what(command: Command) -> str:
    if command.name == "plan":
        flags = " ".join(command.extra_args)
        return f"plan with Terraform flags ({flags}); a plain gitops plan needs read access"
    return command.name


_FORK_REFUSAL = (
    "This pull request comes from a fork, and this runner does not run commands on fork "
    "pull requests (the server setting GITOPS_ALLOW_FORK_PRS is off): their code would run "
    "with the runner's credentials. Push the branch to this repository and open a pull "
    "request from there."
)
