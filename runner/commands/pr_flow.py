"""Where a queued event becomes work: the JobHandler of the pull-request flow.

pull request opened/updated/ready → autoplan; closed+merged → apply on merge;
closed → discard plans, release locks, delete the working copy; a `gitops ...`
comment → plan / apply / unlock / help, once `authorization.py` has accepted who
asked on which PR (forks, permissions). Forge, queue and database are whatever
`Services` holds: nothing here knows which.
"""

from __future__ import annotations

import logging
import threading

from runner.commands.applying import PullRequestApplier
from runner.commands.authorization import is_trusted, refusal
from runner.commands.feedback import PullRequestFeedback
from runner.commands.housekeeping import housekeeping_reply
from runner.commands.planning import PlanRequest, PullRequestPlanner, worktree_key
from runner.commands.policy_review import PullRequestPolicies
from runner.commands.state_commands import StateCommands
from runner.engine.services import Services
from runner.events.commands import Command, CommandError
from runner.events.comment_parser import help_text
from runner.events.model import CommentEvent, PullRequestEvent
from runner.forge.base import APPLY_CONTEXT, CommitState, PullRequestInfo, same_user
from runner.jobs.model import WorkEvent
from runner.results.render import render_message
from runner.store.runs import Trigger

log = logging.getLogger(__name__)

EYES = "eyes"


class PullRequestFlow:
    """Handles one job at a time per pull request (the queue guarantees the ordering)."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._planner = PullRequestPlanner(services)

    # ---- JobHandler -----------------------------------------------------------------------

    def handle(self, event: WorkEvent, cancel: threading.Event) -> None:
        try:
            if isinstance(event, PullRequestEvent):
                self._on_pull_request(event, cancel)
            else:
                self._on_comment(event, cancel)
        except Exception as error:
            # The job is recorded as failed by the queue; the PR must hear about it too.
            self._report_crash(event, error)
            raise

    def _report_crash(self, event: WorkEvent, error: Exception) -> None:
        number = event.pr.number if isinstance(event, PullRequestEvent) else event.pr_number
        try:
            feedback = self._planner.feedback(event.repo, number)
            feedback.comment(
                render_message(
                    "error",
                    message="gitops-runner could not finish this job; nothing more was done. "
                    "Locks this pull request holds are kept. Comment the command again to retry.",
                    details=f"{type(error).__name__}: {error}",
                ),
                kind="error",
            )
        except Exception:  # the forge itself may be what failed
            log.exception("could not report a failed job on %s#%s", event.repo.key, number)

    def is_apply(self, event: WorkEvent) -> bool:
        if isinstance(event, PullRequestEvent):
            return event.action == "closed" and event.merged
        return isinstance(event.command, Command) and event.command.name == "apply"

    def report_interrupted(self, event: WorkEvent) -> None:
        number = event.pr.number if isinstance(event, PullRequestEvent) else event.pr_number
        feedback = self._planner.feedback(event.repo, number)
        feedback.comment(
            render_message(
                "error",
                message="An apply was interrupted by a crash or restart of gitops-runner and "
                "will not be re-run automatically. Terraform may have left its state lock "
                "held: check the project's state, run `terraform force-unlock LOCK_ID` if "
                "needed, then comment `gitops plan` and `gitops apply` again.",
            ),
            kind="interrupted",
        )
        locks = self._services.store.locks.list(event.repo.key)
        held = [lock for lock in locks if lock.owner_pr == number]
        log.warning(
            "apply interrupted on %s#%s; %d lock(s) kept", event.repo.key, number, len(held)
        )

    # ---- pull request events ------------------------------------------------------------

    def _on_pull_request(self, event: PullRequestEvent, cancel: threading.Event) -> None:
        if event.action == "closed":
            if event.merged and event.merge_commit_sha:
                self._on_merged(event)
            self._on_closed(event)
            return
        forge = self._services.forge_for(event.repo.forge)
        pr = forge.pull_request(event.repo, event.pr.number)
        if pr.head_sha != event.pr.head_sha or pr.state != "open":
            log.info("skipping superseded autoplan of %s#%s", event.repo.key, pr.number)
            return
        if pr.is_fork and not self._services.settings.allow_fork_prs:
            # The webhook already drops these; an event queued some other way must not
            # run a fork's code either.
            log.info("not autoplanning fork pull request %s#%s", event.repo.key, pr.number)
            return
        request = PlanRequest(event.repo, pr, Trigger.AUTOPLAN, event.sender)
        self._planner.run(request, cancel)

    def _on_merged(self, event: PullRequestEvent) -> None:
        forge = self._services.forge_for(event.repo.forge)
        pr = forge.pull_request(event.repo, event.pr.number)
        feedback = self._planner.feedback(event.repo, pr.number)
        applier = PullRequestApplier(self._services, feedback)
        assert event.merge_commit_sha is not None
        applier.apply_on_merge(event.repo, pr, event.merge_commit_sha, event.sender)

    def _on_closed(self, event: PullRequestEvent) -> None:
        """Merged or not, a closed PR's plans are void; its locks go unless an apply failed."""
        store = self._services.store
        number = event.pr.number
        # After a merge, the merge commit's plans stay: a failed apply is retried with them.
        keep = event.merge_commit_sha if event.merged else None
        store.runs.discard_plans(event.repo.key, number, except_commit=keep)
        if not event.merged:
            store.locks.release_all(event.repo.key, number)
        if not any(lock.owner_pr == number for lock in store.locks.list(event.repo.key)):
            self._services.working_copies.remove(event.repo.clone_url, worktree_key(number))

    # ---- comments -------------------------------------------------------------------------

    def _on_comment(self, event: CommentEvent, cancel: threading.Event) -> None:
        # Parsed by the webhook (or on decoding a job stored before commands were kept).
        parsed = event.command
        if parsed is None or self._from_a_bot(event):
            return
        forge = self._services.forge_for(event.repo.forge)
        if event.check_run_id is None:  # a check run's "Re-run" has no comment to react to
            forge.react(event.repo, event.pr_number, event.comment_id, EYES)
        feedback = self._planner.feedback(event.repo, event.pr_number)
        if isinstance(parsed, CommandError):
            feedback.comment(parsed.message)
        elif parsed.name == "help":
            feedback.comment(help_text())
        else:
            self._on_command(event, parsed, feedback, cancel)

    def _on_command(
        self,
        event: CommentEvent,
        command: Command,
        feedback: PullRequestFeedback,
        cancel: threading.Event,
    ) -> None:
        """Who asked and on which PR decide first: nothing is checked out or locked before."""
        pr = feedback.forge.pull_request(event.repo, event.pr_number)
        permission = feedback.forge.permission(event.repo, event.author)
        allow_forks = self._services.settings.allow_fork_prs
        refused = refusal(command, pr, event.author, permission, allow_forks=allow_forks)
        if refused is not None:
            log.info(
                "refused %s by %s on %s#%s", command.name, event.author, event.repo.key, pr.number
            )
            feedback.comment(render_message("error", message=refused))
        elif command.name == "unlock":
            self._unlock(event, feedback)
        elif command.name == "plan":
            self._plan(event, command, pr, is_trusted(permission), feedback, cancel)
        elif command.name == "approve_policies":
            PullRequestPolicies(self._services, feedback).approve(
                event.repo, pr, event.author, command
            )
        elif command.name in ("import", "state_rm"):
            StateCommands(self._services, feedback).run(event.repo, pr, event.author, command)
        elif command.name in ("version", "cancel"):
            feedback.comment(housekeeping_reply(self._services, event, command))
        else:
            self._apply(event, command, pr, feedback)

    def _plan(
        self,
        event: CommentEvent,
        command: Command,
        pr: PullRequestInfo,
        trusted: bool,
        feedback: PullRequestFeedback,
        cancel: threading.Event,
    ) -> None:
        if pr.state != "open":
            feedback.comment(render_message("error", message="The pull request is closed."))
            return
        request = PlanRequest(event.repo, pr, Trigger.COMMENT, event.author, command, trusted)
        self._planner.run(request, cancel)

    def _apply(
        self,
        event: CommentEvent,
        command: Command,
        pr: PullRequestInfo,
        feedback: PullRequestFeedback,
    ) -> None:
        applier = PullRequestApplier(self._services, feedback)
        results = applier.apply_by_comment(event.repo, pr, event.author, command)
        if not results:
            feedback.status(pr.head_sha, APPLY_CONTEXT, CommitState.FAILURE, "not applied")

    def _from_a_bot(self, event: CommentEvent) -> bool:
        if event.author_is_bot:
            return True
        forge = self._services.forge_for(event.repo.forge)
        return same_user(event.author, forge.bot_login())

    def _unlock(self, event: CommentEvent, feedback: PullRequestFeedback) -> None:
        store = self._services.store
        released = store.locks.release_all(event.repo.key, event.pr_number)
        discarded = store.runs.discard_plans(event.repo.key, event.pr_number)
        names = ", ".join(f"`{lock.dir}` ({lock.workspace})" for lock in released) or "none"
        feedback.comment(
            f"Released {len(released)} lock(s): {names}. Discarded {discarded} plan(s)."
        )


def build_handler(services: Services) -> PullRequestFlow:
    """The job handler the queues run (in-process or in an RQ worker)."""
    return PullRequestFlow(services)
