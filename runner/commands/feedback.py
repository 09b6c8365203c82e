"""What the PR sees: comments (split to the forge's cap) and each project's result.

One place posts, so every comment is masked, split, capped in number and recorded
the same way, and older plan comments are marked outdated when a newer plan is posted.
A project's result is a `ProjectReport`: a commit status (token, GitLab) or, where the
forge shows whole outputs (GitHub App check runs), a check run holding the project's
plan or apply output; the plan and apply comments are then short summaries linking to
them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from runner.events.model import RepoRef
from runner.forge.base import (
    APPLY_CONTEXT,
    PLAN_CONTEXT,
    CommitState,
    Forge,
    ForgeError,
    ProjectReport,
    ReportState,
    project_context,
)
from runner.results.limits import OutputLimits, cap_comments
from runner.results.masking import Masker
from runner.results.model import ApplyResult, ApplyStatus, PlanResult, PlanStatus
from runner.results.policy import PolicyCheck
from runner.results.render import (
    code,
    render_apply_comment,
    render_plan_comment,
    short_sha,
    summary_line,
)
from runner.results.split import split_comment
from runner.store.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")


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

    def plan_results(
        self,
        sha: str,
        results: Sequence[PlanResult],
        policies: Mapping[str, PolicyCheck] | None = None,
    ) -> None:
        """Each project's result (status or check run) and the plan comment: in full, or
        a short summary linking to the check runs when they hold the output.

        Statuses carry no links to wait for, so with them the comment, which people read,
        goes first and the statuses follow; check runs go first, for their links."""
        if not self.forge.shows_reports:
            self._plan_comment(sha, results, policies, {})
            self.plan_statuses(sha, results, policies)
            return
        links = self.plan_statuses(sha, results, policies)
        self._plan_comment(sha, results, policies, links)

    def _plan_comment(
        self,
        sha: str,
        results: Sequence[PlanResult],
        policies: Mapping[str, PolicyCheck] | None,
        links: Mapping[str, str],
    ) -> None:
        # A project whose check run holds its plan is summarised; one without keeps it.
        shown = [replace(r, output="") if r.project in links else r for r in results]
        body = render_plan_comment(
            shown,
            commit=sha,
            command="plan",
            policies=policies,
            masker=self.masker,
            limits=self.limits,
        )
        self.plan_comment(body + _links_line(links), sha)

    def plan_started(self, sha: str, projects: Iterable[str]) -> None:
        """Check runs `in_progress` while Terraform plans; statuses wait for the result."""
        for project in projects:
            self._check(
                sha,
                project_context(PLAN_CONTEXT, project),
                ReportState.IN_PROGRESS,
                f"planning at {short_sha(sha)}",
                f"Terraform is planning {code(project)}.",
            )

    def plan_cancelled(self, sha: str, projects: Iterable[str]) -> None:
        """Close the check runs `plan_started` opened when a newer push supersedes them."""
        for project in projects:
            self._check(
                sha,
                project_context(PLAN_CONTEXT, project),
                ReportState.CANCELLED,
                "superseded by a newer commit",
            )

    def apply_started(self, sha: str, project: str) -> None:
        """A check run `in_progress` while Terraform applies; statuses wait for the result."""
        self._check(
            sha,
            project_context(APPLY_CONTEXT, project),
            ReportState.IN_PROGRESS,
            f"applying at {short_sha(sha)}",
            f"Terraform is applying {code(project)}.",
        )

    def _check(
        self, sha: str, context: str, state: ReportState, title: str, body: str = ""
    ) -> None:
        """A project's check run between its start and its result (none with statuses)."""
        if self.forge.shows_reports:
            self.report(sha, ProjectReport(context, state, title, body, self._details_url()))

    def plan_statuses(
        self,
        sha: str,
        results: Iterable[PlanResult],
        policies: Mapping[str, PolicyCheck] | None = None,
    ) -> dict[str, str]:
        """One result per project plus the roll-up status `gitops/plan`; returns the links
        to the projects' check runs (none with statuses)."""
        results = list(results)
        links: dict[str, str] = {}
        for result in results:
            link = self.report(sha, self._plan_report(sha, result, policies or {}))
            if link:
                links[result.project] = link
        failures = sum(result.status is PlanStatus.ERROR for result in results)
        if failures:
            self.status(sha, PLAN_CONTEXT, CommitState.FAILURE, f"{failures} project(s) failed")
        else:
            self.status(
                sha, PLAN_CONTEXT, CommitState.SUCCESS, f"{len(results)} project(s) planned"
            )
        return links

    def apply_results(self, sha: str, results: Sequence[ApplyResult]) -> None:
        """Each project's result (status or check run), then the apply comment: in full, or
        a short summary linking to the check runs when they hold the output."""
        links = self.apply_statuses(sha, results)
        shown = [replace(r, output="") if r.project in links else r for r in results]
        body = render_apply_comment(shown, commit=sha, masker=self.masker, limits=self.limits)
        self.comment(body + _links_line(links, "output"), kind="apply", commit=sha)

    def apply_statuses(self, sha: str, results: Iterable[ApplyResult]) -> dict[str, str]:
        """One `gitops/apply: <project>` result per applied or failed project; returns the
        links to the projects' check runs (none with statuses)."""
        links: dict[str, str] = {}
        for result in results:
            applied = result.status is ApplyStatus.APPLIED
            body = ""
            if self.forge.shows_reports:
                body = render_apply_comment(
                    [result], commit=sha, masker=self.masker, limits=self.limits
                )
            link = self.report(
                sha,
                ProjectReport(
                    project_context(APPLY_CONTEXT, result.project),
                    ReportState.SUCCESS if applied else ReportState.FAILURE,
                    "applied" if applied else "apply failed",
                    body,
                    self._details_url(),
                ),
            )
            if link:
                links[result.project] = link
        return links

    def report(self, sha: str, report: ProjectReport) -> str:
        """Show a project's result; "" when the forge gives no link or the call failed."""
        return self._quietly(lambda: self.forge.report_project(self.repo, sha, report)) or ""

    def _plan_report(
        self, sha: str, result: PlanResult, policies: Mapping[str, PolicyCheck]
    ) -> ProjectReport:
        failed = result.status is PlanStatus.ERROR
        body = ""
        if self.forge.shows_reports:
            checked = (
                {result.project: policies[result.project]} if result.project in policies else {}
            )
            body = render_plan_comment(
                [result], commit=sha, policies=checked, masker=self.masker, limits=self.limits
            )
        return ProjectReport(
            project_context(PLAN_CONTEXT, result.project),
            _plan_state(result.status),
            "plan failed" if failed else summary_line(result.summary),
            body,
            self._details_url(),
        )

    def _details_url(self) -> str:
        """The runs of this PR on the runner's API; only with an absolute URL to give."""
        if not self.limits.public_url:
            return ""
        return self.limits.runs_location(self.repo.key, self.number)

    def _quietly(self, call: Callable[[], T]) -> T | None:
        """`call()`'s answer; None when the forge call failed (logged, not raised)."""
        try:
            return call()
        except ForgeError as error:
            log.warning("forge call failed for %s#%s: %s", self.repo.key, self.number, error)
            return None


def _plan_state(status: PlanStatus) -> ReportState:
    if status is PlanStatus.ERROR:
        return ReportState.FAILURE
    return ReportState.SUCCESS if status is PlanStatus.CHANGES else ReportState.NEUTRAL


def _links_line(links: Mapping[str, str], what: str = "plans") -> str:
    """Where each project's full plan (or apply output) is, under the summary comment."""
    if not links:
        return ""
    items = " · ".join(f"[{code(project)}]({url})" for project, url in links.items())
    return f"\n**Full {what}, in the checks:** {items}\n"
