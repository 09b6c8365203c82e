"""What a PR comment asked the runner to do, once parsed and validated.

The comment parser (`events/comment_parser.py`) is the only place that reads comment
text, once, when the webhook is normalised into a `CommentEvent`; everything after it
(the job, project selection, Terraform) receives these values, so a `Command` is
already safe to act on: names are plain, dirs stay inside the repository, and
`extra_args` contains only allowlisted Terraform flags in `-flag=value` form. They live
with the events because a `CommentEvent` carries one, and jobs persist it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CommandName = Literal[
    "plan", "apply", "unlock", "help", "approve_policies", "import", "state_rm", "version", "cancel"
]
COMMAND_NAMES: tuple[CommandName, ...] = (
    "plan", "apply", "unlock", "help", "approve_policies", "import", "state_rm", "version", "cancel"
)  # fmt: skip


@dataclass(frozen=True)
class Command:
    """A valid `gitops <command>` comment.

    `project` and `dir` are never both set. `dir` is a normalised POSIX path
    relative to the repository root ("." for the root) so it can be compared
    with `ProjectConfig.dir` directly. None means "not given": the caller picks
    every affected project / the project's own workspace.
    """

    name: CommandName
    project: str | None = None
    dir: str | None = None
    workspace: str | None = None
    # Only on plan; each item is an allowlisted flag normalised to `-flag` or `-flag=value`,
    # ready to be appended to the terraform argv (never joined into a shell string).
    extra_args: tuple[str, ...] = ()
    # `import`: (ADDRESS, ID); `state_rm`: the addresses. Each checked by the parser and
    # passed to Terraform as one argv item.
    args: tuple[str, ...] = ()

    def selects(self, project: str, dir: str, workspace: str) -> bool:
        """Whether a project (name, dir, workspace) is one this command names (or all)."""
        return (
            (self.project is None or project == self.project)
            and (self.dir is None or dir == self.dir)
            and (self.workspace is None or workspace == self.workspace)
        )


@dataclass(frozen=True)
class CommandError:
    """A comment addressed to the runner that cannot be executed.

    It is a value rather than an exception because it is an expected outcome the
    PR flow answers with a comment: `message` is Markdown for the PR (what was
    wrong and the usage), `reason` a one-line plain text for logs.
    """

    reason: str
    message: str
