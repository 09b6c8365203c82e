"""What the PR sees: comments (split to the forge's cap) and commit statuses.

One place posts, so every comment is masked, split, capped in number and recorded
the same way, and older plan comments are marked outdated when a newer plan is posted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from runner.events.model import RepoRef
from runner.forge.base import (
    APPLY_CONTEXT,
    PLAN_CONTEXT,
    CommitState,
    Forge,
    ForgeError,
    project_context,
)
from runner.results.limits import OutputLimits, cap_comments
from runner.results.masking import Masker
from runner.results.model import ApplyResult, ApplyStatus, PlanResult, PlanStatus
from runner.results.render import short_sha, summary_line
from runner.results.split import split_comment
from runner.store.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PullRequestFeedback:
    """Comments and statuses of one pull request."""

    forge: Forge
    store: Store
    repo: RepoRef
    number: int
    masker: Masker
    # Build with `OutputLimits.from_settings(settings)`; the defaults are the settings'.
    limits: OutputLimits = field(default_factory=OutputLimits)

    def comment(self, body: str, *, kind: str = "reply", commit: str | None = None) -> list[int]:
        """Post `body` (masked, split to the forge's cap, at most `limits.max_comments`
        comments, the last summarising what was left out); returns the comment ids."""
        parts = split_comment(self.masker.mask(body), self.forge.comment_cap)
        where = self.limits.runs_location(self.repo.key, self.number)
        ids = []
        for part in cap_comments(parts, self.limits.max_comments, where):
            comment_id = self.forge.post_comment(self.repo, self.number, part)
            self.store.comments.record(self.repo.key, self.number, comment_id, kind, commit)
            ids.append(comment_id)
        return ids

    def plan_comment(self, body: str, commit: str) -> list[int]:
        """Post a plan comment, then edit older plan comments to say they are outdated."""
        ids = self.comment(body, kind="plan", commit=commit)
        for old in self.store.comments.mark_outdated(self.repo.key, self.number, "plan", commit):
            note = (
                f"**Outdated:** this plan was made at `{short_sha(old.commit_sha)}`; "
                f"a newer plan at `{short_sha(commit)}` is further down."
            )
            self._quietly(
                lambda old=old, note=note: self.forge.edit_comment(
                    self.repo, self.number, int(old.comment_id), note
                )
            )
        return ids

    def status(
        self, sha: str, context: str, state: CommitState, description: str, url: str = ""
    ) -> None:
        """Set a commit status; a forge hiccup here must not fail the run itself."""
        self._quietly(
            lambda: self.forge.set_status(self.repo, sha, context, state, description, url)
        )

    def plan_statuses(self, sha: str, results: Iterable[PlanResult]) -> None:
        """One status per project plus the roll-up `gitops/plan`."""
        results = list(results)
        for result in results:
            failed = result.status is PlanStatus.ERROR
            self.status(
                sha,
                project_context(PLAN_CONTEXT, result.project),
                CommitState.FAILURE if failed else CommitState.SUCCESS,
                "plan failed" if failed else summary_line(result.summary),
            )
        failures = sum(result.status is PlanStatus.ERROR for result in results)
        if failures:
            self.status(sha, PLAN_CONTEXT, CommitState.FAILURE, f"{failures} project(s) failed")
        else:
            self.status(
                sha, PLAN_CONTEXT, CommitState.SUCCESS, f"{len(results)} project(s) planned"
            )

    def apply_statuses(self, sha: str, results: Iterable[ApplyResult]) -> None:
        """One `gitops/apply: <project>` status per applied or failed project."""
        for result in results:
            applied = result.status is ApplyStatus.APPLIED
            self.status(
                sha,
                project_context(APPLY_CONTEXT, result.project),
                CommitState.SUCCESS if applied else CommitState.FAILURE,
                "applied" if applied else "apply failed",
            )

    def _quietly(self, call: Callable[[], object]) -> None:
        try:
            call()
        except ForgeError as error:
            log.warning("forge call failed for %s#%s: %s", self.repo.key, self.number, error)
