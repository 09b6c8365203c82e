"""`gitops version` and `gitops cancel`: the two comment commands that run no project.

`cancel` drops the pull request's jobs that have not started (`jobs/cancellation.py`);
a running plan or apply finishes, so no state is left half-applied. Its job has no PR
group, so it runs at once instead of queueing behind the work it cancels; write
permission was checked before (`authorization.py`).
"""

from __future__ import annotations

from runner import __version__
from runner.engine.services import Services
from runner.events.commands import Command
from runner.events.model import CommentEvent
from runner.jobs.cancellation import drop_queued
from runner.jobs.model import pr_group
from runner.terraform import TerraformError


def housekeeping_reply(services: Services, event: CommentEvent, command: Command) -> str:
    """The comment answering `version` or `cancel` (after doing it)."""
    if command.name == "cancel":
        return cancel_reply(services, event)
    return version_reply(services)


def version_reply(services: Services) -> str:
    """The runner's version and the default Terraform's."""
    try:
        terraform = services.terraform_for(None).version()
    except TerraformError as error:
        terraform = f"unknown ({error})"
    return f"gitops-runner `{__version__}`, Terraform `{terraform}`."


def cancel_reply(services: Services, event: CommentEvent) -> str:
    """Drop the PR's queued jobs and say how many."""
    dropped = drop_queued(
        services.store, pr_group(event), f"cancelled by @{event.author} (gitops cancel)"
    )
    if not dropped:
        return "Nothing to cancel: this pull request has no queued runs. Running ones finish."
    return (
        f"Cancelled {len(dropped)} queued run(s) of this pull request. Runs already started "
        "finish; comment the command again to run it."
    )
