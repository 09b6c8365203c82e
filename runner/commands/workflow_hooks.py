"""The server's `pre_workflow_hooks` / `post_workflow_hooks` (GITOPS_REPO_CONFIG) around a
pull request's command: shell lines from the operator's file, run in the checkout's root
with Terraform's allowlisted environment and the change's variables (`COMMAND_NAME`,
`PULL_NUM`, `HEAD_BRANCH_NAME`...). A failing hook is reported with its output.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from runner.commands.feedback import PullRequestFeedback
from runner.config.workflows import Step
from runner.engine.services import Services
from runner.engine.workflow_steps import StepContext, run_hooks
from runner.results.render import render_message


def run_workflow_hooks(
    services: Services,
    feedback: PullRequestFeedback,
    when: Literal["pre", "post"],
    hooks: Sequence[Step],
    checkout: Path,
    context: StepContext,
    command: str,
    cancel: threading.Event | None = None,
) -> bool:
    """Run the hooks in order; False (after a comment with the output) when one failed."""
    if not hooks:
        return True
    terraform = services.terraform_for(None)
    failed = run_hooks(terraform, hooks, checkout, context.hook_environ(checkout, command), cancel)
    if failed is None:
        return True
    feedback.comment(
        render_message(
            "error",
            message=f"A {when}_workflow_hook of this server failed "
            f"(exit code {failed.exit_code}); nothing more was done.",
            details=failed.stdout,
        )
    )
    return False
