"""Project results as GitHub check runs: one per project and command, with the whole output.

A check run named like the commit status it replaces (`gitops/plan: infra/app`) is
created `in_progress` when Terraform starts and completed with `success`, `failure` or
`neutral` (a plan without changes), a title (Terraform's summary sentence), and the
project's output. GitHub caps `output.summary` and `output.text` at 65,535 characters
each: the output goes into both, cut by `results/split.py` so each part renders on its
own, and what still does not fit is named with where the full output is. Only a GitHub
App may write check runs; `forge/github.py` uses this in App mode.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from github.CheckRun import CheckRun
from github.Repository import Repository

from runner.forge.base import ProjectReport, ReportState, cap_text
from runner.results.split import split_comment

# GitHub's limit on each of `output.summary` and `output.text`, in characters.
CHECK_OUTPUT_CAP = 65_535
# Room kept in each field for the title line and the note on what was left out.
_RESERVE = 1_000
_TITLE_CAP = 200  # GitHub shows the title on one line
# Check runs started but not completed yet, remembered per process; a crashed job's
# entries are evicted oldest first.
_MAX_OPEN = 1_000


def check_output(report: ProjectReport, cap: int = CHECK_OUTPUT_CAP) -> dict[str, str]:
    """The `output` of a check run: the title, and the body split over summary and text.

    The summary starts with the title in bold, then the body's first part; the text
    holds the second part. More parts are left out and a note says how many characters,
    and where the whole output is.
    """
    title = _one_line(report.title)
    parts = split_comment(report.body, cap - _RESERVE) if report.body.strip() else []
    summary = "\n\n".join([f"**{title}**", *parts[:1]])
    output = {"title": title, "summary": summary}
    if len(parts) > 1:
        output["text"] = "\n\n".join([parts[1], *_left_out(parts[2:], report.details_url)])
    return output


def _left_out(parts: list[str], details_url: str) -> list[str]:
    if not parts:
        return []
    where = f"[the run's log]({details_url})" if details_url else "the run's log on the runner"
    size = sum(len(part) for part in parts)
    return [f"**Output truncated:** {size:,} more characters are in {where}."]


def _one_line(text: str) -> str:
    return cap_text(" ".join(text.split()) or "gitops-runner", _TITLE_CAP)


class CheckRuns:
    """Creates and completes the runner's check runs; thread-safe, one per forge."""

    def __init__(self) -> None:
        self._open: OrderedDict[tuple[str, str, str], CheckRun] = OrderedDict()
        self._lock = threading.Lock()

    def report(self, repo: Repository, repo_key: str, sha: str, report: ProjectReport) -> str:
        """Start (`in_progress`) or complete the check run of `report.context` on `sha`;
        returns its page. A completion without a start creates the run completed."""
        key = (repo_key, sha, report.context)
        fields = _fields(report)
        if report.state is ReportState.IN_PROGRESS:
            run = repo.create_check_run(report.context, sha, **fields)
            self._remember(key, run)
            return run.html_url
        with self._lock:
            started = self._open.pop(key, None)
        if started is None:
            return repo.create_check_run(report.context, sha, **fields).html_url
        started.edit(**fields)
        return started.html_url

    def _remember(self, key: tuple[str, str, str], run: CheckRun) -> None:
        with self._lock:
            self._open[key] = run
            self._open.move_to_end(key)
            while len(self._open) > _MAX_OPEN:
                self._open.popitem(last=False)


def _fields(report: ProjectReport) -> dict[str, Any]:
    fields: dict[str, Any] = {"output": check_output(report)}
    if report.state is ReportState.IN_PROGRESS:
        fields["status"] = "in_progress"
    else:
        fields |= {"status": "completed", "conclusion": report.state.value}
    if report.details_url:
        fields["details_url"] = report.details_url
    return fields
