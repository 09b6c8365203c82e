"""Chat messages about pull-request applies: succeeded, failed, needs attention after merge.

The PR comment stays the record of an apply; these messages tell the people who do not
watch every PR that infrastructure changed (or did not), with links to the PR and to
the runs. They are sent after the PR was told, through the same `Notifier` as drift
reports, and are best effort: `ApplyEvents` never raises, so a chat outage (or a bug
in building a message) can never fail or repeat an apply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from runner.events.model import RepoRef
from runner.forge.base import PullRequestInfo
from runner.notify.base import Block, Delivery, Message, Notifier
from runner.notify.blocks import escape, section, sections
from runner.results.masking import Masker
from runner.results.model import ApplyResult, ApplyStatus, PlanSummary
from runner.store.runs import RunRecord, Trigger
from runner.store.store import Store

log = logging.getLogger(__name__)

_MAX_SECTIONS = 40  # and messages over 50 blocks; the rest is summarised
_ERROR_CAP = 300


@dataclass(frozen=True)
class PullRequestSubject:
    """The pull request a message is about, as people recognise it."""

    repo: str  # "acme/infra"
    number: int
    url: str  # the PR's web page
    author: str  # who opened it
    actor: str  # who caused the apply: the commenter, or whoever merged
    trigger: Trigger
    commit: str | None = None

    @classmethod
    def of(
        cls,
        repo: RepoRef,
        pr: PullRequestInfo,
        actor: str,
        trigger: Trigger,
        commit: str | None = None,
    ) -> PullRequestSubject:
        return cls(repo.full_name, pr.number, pr.html_url, pr.author, actor, trigger, commit)


@dataclass(frozen=True)
class RunLinks:
    """Turns run ids into URLs people can open; no base URL means plain "run 12" text."""

    public_url: str = ""

    @property
    def base(self) -> str:
        url = self.public_url.strip().rstrip("/")
        return url if url.startswith(("https://", "http://")) else ""

    def run(self, run_id: int | None) -> str:
        """`run 12` as a link to the run's JSON, when the runner's address is known."""
        if run_id is None:
            return ""
        if not self.base:
            return f"run {run_id}"
        run = f"{self.base}/api/runs/{run_id}"
        return f"<{run}|run {run_id}> · <{run}/log|log>"


# ---- messages -------------------------------------------------------------------------------


def apply_message(
    subject: PullRequestSubject,
    results: Sequence[ApplyResult],
    links: RunLinks,
    mask: Callable[[str], str] = str,
) -> Message:
    """One message per apply: a header saying how it went, a line per project."""
    failed = [r for r in results if not r.status.applied]
    outcome = "Apply failed" if failed else "Apply succeeded"
    icon = ":x:" if failed else ":white_check_mark:"
    count = f"{len(results) - len(failed)}/{len(results)} projects applied"
    lines = [mask(_apply_line(result, links)) for result in results]
    blocks: list[Block] = [
        _header(f"{icon} {outcome}"),
        section(mask(_subject_line(subject)) + f"\n{count}"),
        *sections(lines, _MAX_SECTIONS, ": see the pull request"),
        *_buttons(subject, links),
    ]
    text = f"{outcome}: {subject.repo}#{subject.number} by @{subject.author} ({count})"
    kind = "apply_failed" if failed else "apply_succeeded"
    return Message(text=mask(text), blocks=tuple(blocks), kind=kind)


def needs_attention_message(
    subject: PullRequestSubject,
    reasons: Sequence[str],
    runs: Sequence[RunRecord],
    links: RunLinks,
    mask: Callable[[str], str] = str,
) -> Message:
    """A merged PR whose merge commit plans differently than what was reviewed."""
    lines = [mask(escape(reason)) for reason in reasons]
    if runs:
        plans = ", ".join(f"`{escape(run.project)}` {links.run(run.id)}" for run in runs)
        lines.append(f"Plans of the merge commit: {plans}")
    blocks: list[Block] = [
        _header(":warning: Needs attention after merge"),
        section(
            mask(_subject_line(subject))
            + "\nNot applied: the plan of the merge commit differs from the reviewed plan."
        ),
        *sections(lines, _MAX_SECTIONS, ": see the pull request"),
        *_buttons(subject, links),
    ]
    text = (
        f"Needs attention: {subject.repo}#{subject.number} by @{subject.author} was merged "
        "but not applied"
    )
    return Message(text=mask(text), blocks=tuple(blocks), kind="needs_attention")


def _subject_line(subject: PullRequestSubject) -> str:
    name = escape(f"{subject.repo}#{subject.number}")
    pr = f"<{subject.url}|{name}>" if _is_web_url(subject.url) else name
    how = "merged by" if subject.trigger is Trigger.MERGE else "applied by"
    commit = f" at `{subject.commit[:7]}`" if subject.commit else ""
    return f"*{pr}* by @{escape(subject.author)}, {how} @{escape(subject.actor)}{commit}"


def _apply_line(result: ApplyResult, links: RunLinks) -> str:
    name = f"`{escape(result.project)}`" + (
        f" ({escape(result.workspace)})" if result.workspace != "default" else ""
    )
    run = links.run(result.run_id)
    tail = f" · {run}" if run else ""
    if result.status is ApplyStatus.APPLIED:
        return f":white_check_mark: {name}: {_counts(result.summary)}{tail}"
    return f":x: {name}: {escape(_first_line(result.error))}{tail}"


def _counts(summary: PlanSummary) -> str:
    parts = [f"+{summary.add}", f"~{summary.change}", f"-{summary.destroy}"]
    if summary.replace:
        parts.append(f"±{summary.replace}")
    return " ".join(parts)


def _first_line(error: str) -> str:
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    # Terraform's last stderr lines are often blank or "exit status 1"; the first
    # "Error:" line says what went wrong.
    chosen = next((line for line in lines if line.startswith("Error")), lines[0] if lines else "")
    return (chosen or "failed")[:_ERROR_CAP]


def _buttons(subject: PullRequestSubject, links: RunLinks) -> list[Block]:
    buttons = []
    if _is_web_url(subject.url):
        buttons.append(_button("Pull request", subject.url))
    if links.base:
        buttons.append(_button("Runner dashboard", links.base + "/"))
    return [{"type": "actions", "elements": buttons}] if buttons else []


def _button(label: str, url: str) -> Block:
    return {"type": "button", "text": {"type": "plain_text", "text": label}, "url": url}


def _header(text: str) -> Block:
    return {"type": "header", "text": {"type": "plain_text", "text": text, "emoji": True}}


def _is_web_url(url: str) -> bool:
    return url.startswith(("https://", "http://"))


# ---- sending ----------------------------------------------------------------------------------


class ApplyEvents:
    """What the applier calls after telling the PR; see the module docstring."""

    def __init__(
        self,
        notifier: Notifier,
        store: Store,
        *,
        public_url: str = "",
        masker: Masker | None = None,
    ) -> None:
        self._notifier = notifier
        self._store = store
        self._links = RunLinks(public_url)
        self._mask = (masker or Masker()).mask

    def applied(
        self,
        repo: RepoRef,
        pr: PullRequestInfo,
        actor: str,
        results: Sequence[ApplyResult],
        trigger: Trigger,
    ) -> Delivery | None:
        """Apply succeeded or failed (failed when any project failed)."""
        if not results:
            return None
        commit = next((r.commit for r in results if r.commit), None)
        subject = PullRequestSubject.of(repo, pr, actor, trigger, commit)
        return self._send(lambda: apply_message(subject, results, self._links, self._mask))

    def needs_attention(
        self,
        repo: RepoRef,
        pr: PullRequestInfo,
        actor: str,
        reasons: Sequence[str],
        merge_sha: str,
    ) -> Delivery | None:
        """A merge that was not applied because its plan differs from the reviewed one."""
        if not reasons:
            return None
        subject = PullRequestSubject.of(repo, pr, actor, Trigger.MERGE, merge_sha)

        def build() -> Message:
            runs = self._merge_plans(repo, pr, merge_sha)
            return needs_attention_message(subject, reasons, runs, self._links, self._mask)

        return self._send(build)

    def _merge_plans(self, repo: RepoRef, pr: PullRequestInfo, merge_sha: str) -> list[RunRecord]:
        """The newest plan run of each project at the merge commit, oldest project first."""
        newest: dict[tuple[str, str], RunRecord] = {}
        for run in self._store.runs.list_runs(repo.key, pr.number, limit=200):
            merge_plan = run.command == "plan" and run.trigger is Trigger.MERGE
            if merge_plan and run.commit_sha == merge_sha:
                newest.setdefault((run.project, run.workspace), run)
        return sorted(newest.values(), key=lambda run: run.id)

    def _send(self, build: Callable[[], Message]) -> Delivery:
        try:
            delivery = self._notifier.send(build())
        except Exception as error:  # Notifier.send should not raise; a custom one might
            log.exception("apply notification failed")
            return Delivery(ok=False, attempts=0, error=f"{type(error).__name__}: {error}")
        if not delivery.ok:
            log.warning("apply notification not delivered: %s", delivery.error)
        return delivery
