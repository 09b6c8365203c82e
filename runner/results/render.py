"""Markdown for pull-request comments: plan results, apply results and short replies.

The Markdown itself lives in `templates/*.md.j2`; this module only prepares text
that templates cannot (diff colouring, fence lengths, summary sentences) and makes
sure every rendered character went through a `Masker`. A rendered comment may be
longer than a forge allows: `split.split_comment` cuts it afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import cache
from typing import Any, Literal, TypeVar

from jinja2 import Environment, PackageLoader, StrictUndefined, TemplateNotFound

from runner.results.limits import OutputLimits, cap_output
from runner.results.masking import Masker
from runner.results.model import ApplyResult, ApplyStatus, PlanResult, PlanStatus, PlanSummary
from runner.results.policy import PolicyCheck

MessageKind = Literal["lock_conflict", "help", "error", "no_projects", "state_command"]
_Result = TypeVar("_Result", PlanResult, ApplyResult)

# What users type to talk to the runner; the comment parser also accepts "atlantis".
COMMAND_WORD = "gitops"

# A line of Terraform's human output whose first symbol is an action marker.
_ACTION_LINE = re.compile(r"^\s*(-/\+|\+/-|[-+~])(?=\s|$)")
# GitHub's diff highlighting colours a line by its first character; "!" is "changed".
_DIFF_MARK = {"+": "+", "-": "-", "~": "!", "-/+": "!", "+/-": "!"}
_BACKTICKS = re.compile(r"`+")
# Characters that change inline Markdown; the text is never at a line start.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")


def render_plan_comment(
    results: Sequence[PlanResult],
    *,
    commit: str | None = None,
    command: str = "plan",
    masker: Masker | None = None,
    limits: OutputLimits | None = None,
    policies: Mapping[str, PolicyCheck] | None = None,
) -> str:
    """One comment for the plans of one command: header, a section per project, next steps.

    `commit` and `command` make the header ("gitops plan at abc1234, 3 projects");
    without `masker` only URL passwords are hidden, so callers pass the one built
    from their plans and secret env vars. Each project's output is capped by `limits`.
    """
    limits = limits or OutputLimits()
    results = [_capped(result, limits, None) for result in results]
    return _render(
        "plan.md.j2",
        masker,
        results=results,
        commit=commit,
        command=command,
        policies=policies or {},
        changed=[r for r in results if r.status is PlanStatus.CHANGES],
        unchanged=[r for r in results if r.status is PlanStatus.NO_CHANGES],
        failed=[r for r in results if r.status is PlanStatus.ERROR],
    )


def render_apply_comment(
    results: Sequence[ApplyResult],
    *,
    commit: str | None = None,
    masker: Masker | None = None,
    limits: OutputLimits | None = None,
) -> str:
    """One comment for an apply: which projects were applied, which failed and why."""
    limits = limits or OutputLimits()
    results = [_capped(result, limits, result.run_id) for result in results]
    return _render(
        "apply.md.j2",
        masker,
        results=results,
        commit=commit,
        applied=[r for r in results if r.status is ApplyStatus.APPLIED],
        failed=[r for r in results if not r.status.applied],
    )


def render_message(kind: MessageKind, *, masker: Masker | None = None, **context: Any) -> str:
    """A short reply (`templates/message_<kind>.md.j2`); each template lists its context.

    lock_conflict: project, dir, workspace, holder (e.g. "#12"), holder_url (optional)
    help: commands, a sequence of (usage, description)
    error: message (plain text, e.g. why a command could not run), details (optional)
    no_projects: command
    state_command: see render_state_command
    """
    try:
        return _render(f"message_{kind}.md.j2", masker, **context)
    except TemplateNotFound:
        raise ValueError(f"unknown message kind {kind!r}") from None


def render_state_command(
    *,
    command: str,
    project: str,
    dir: str,
    workspace: str,
    ok: bool,
    output: str,
    plans_discarded: int,
    masker: Masker | None = None,
) -> str:
    """The reply to `gitops import` / `gitops state rm`: what happened, the output, and
    that the PR's plan of the project must be made again."""
    return render_message(
        "state_command",
        masker=masker,
        command=command,
        project=project,
        dir=dir,
        workspace=workspace,
        ok=ok,
        output=output,
        plans_discarded=plans_discarded,
    )


def _capped(result: _Result, limits: OutputLimits, run_id: int | None) -> _Result:
    """The result with its output cut to the limit (the planner caps too; this is the
    backstop for results made elsewhere)."""
    output = cap_output(result.output, limits.max_output_bytes, limits.log_location(run_id))
    return result if output is result.output else replace(result, output=output)


def summary_line(summary: PlanSummary) -> str:
    """Terraform's summary sentence, with replace, import and drift counted apart.

    Terraform counts a replace in both "to add" and "to destroy"; here each object
    is counted once, under the action it gets. Also usable as a commit-status text.
    """
    if not summary.has_changes:
        line = "No changes."
    else:
        counts = [f"{summary.add} to add", f"{summary.change} to change"]
        counts.append(f"{summary.destroy} to destroy")
        counts += [f"{summary.replace} to replace"] if summary.replace else []
        counts += [f"{summary.import_} to import"] if summary.import_ else []
        line = f"Plan: {', '.join(counts)}."
    if summary.drifted:
        line += f" {summary.drifted} changed outside of Terraform."
    return line


def as_diff(output: str) -> str:
    """Terraform output made colourable by a ```diff fence, original text kept intact.

    Every line gets one leading character: the action marker for lines that start
    with one (after indentation), a space otherwise, so alignment is unchanged.
    """
    return "\n".join(_diff_line(line) for line in output.rstrip("\n").split("\n"))


def _diff_line(line: str) -> str:
    match = _ACTION_LINE.match(line)
    return (_DIFF_MARK[match.group(1)] if match else " ") + line


def fence(text: str) -> str:
    """A backtick fence longer than any backtick run in `text`, so it cannot be closed early."""
    longest = max((len(run) for run in _BACKTICKS.findall(text)), default=0)
    return "`" * max(3, longest + 1)


def code(text: str) -> str:
    """`text` as an inline code span, whatever backticks it contains."""
    ticks = "`" * (max((len(r) for r in _BACKTICKS.findall(text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def escape_markdown(text: str) -> str:
    """Free text shown literally inside a line (a reason), not as Markdown or HTML."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def short_sha(commit: str | None) -> str:
    """`f5540da`, keeping a label's suffix: a local plan of a dirty tree is `f5540da+dirty`."""
    sha, plus, label = (commit or "").partition("+")
    return sha[:7] + plus + label


def _render(template: str, masker: Masker | None, **context: Any) -> str:
    """Render, then mask the whole text: secrets may come from any field of the context."""
    masker = masker or Masker()
    text = _environment().get_template(template).render(masker=masker, **context)
    return masker.mask(text).strip() + "\n"


def compile_templates() -> None:
    """Compile every comment template now (the CLI server does, once for its commands)."""
    environment = _environment()
    for name in environment.list_templates():
        environment.get_template(name)


@cache
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("runner.results", "templates"),
        autoescape=False,  # Markdown, not HTML; free text goes through escape_markdown
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        summary_line=summary_line,
        as_diff=as_diff,
        fence=fence,
        code=code,
        md=escape_markdown,
        short_sha=short_sha,
    )
    env.globals["word"] = COMMAND_WORD
    return env
