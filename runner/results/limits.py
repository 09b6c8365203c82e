"""Bounds on what one run may put into results and comments.

Terraform output has no upper size: a plan of thousands of resources, or a provider
printing debug output, once turned 20 MB into 300+ PR comments. The full (masked)
output always stays in the run's log file; results and comments keep a bounded
head of it, cut at a line boundary, and say how much was left out and where the
rest is. One command posts at most `max_comments` comments: the parts beyond are
replaced by one comment summarising them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from runner.settings import Settings

DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
DEFAULT_MAX_COMMENTS = 10

_NOTE = (
    "\n[gitops-runner] output truncated: {bytes:,} of {total:,} bytes ({lines:,} lines) "
    "left out. Full masked output: {where}"
)


@dataclass(frozen=True)
class OutputLimits:
    """How much output a run keeps and how many comments a command posts.

    `public_url` (GITOPS_PUBLIC_URL) makes the pointers to the full log absolute.
    """

    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    max_comments: int = DEFAULT_MAX_COMMENTS
    public_url: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> OutputLimits:
        return cls(
            max_output_bytes=settings.max_output_bytes,
            max_comments=settings.max_comments_per_command,
            public_url=settings.public_url,
        )

    def log_location(self, run_id: int | None = None) -> str:
        """Where a run's full log is served (the API route; it needs the API token)."""
        run = str(run_id) if run_id is not None else "<run id>"
        where = f"{self.public_url.rstrip('/')}/api/runs/{run}/log"
        return where if run_id is not None else f"{where} (the run ids: /api/runs)"

    def runs_location(self, repo: str, pr_number: int) -> str:
        """The API listing of a pull request's runs, each with its `log_url`."""
        query = urlencode({"repo": repo, "pr": pr_number})
        return f"{self.public_url.rstrip('/')}/api/runs?{query}"


def cap_output(text: str, max_bytes: int, where: str) -> str:
    """`text` if it fits in `max_bytes` (UTF-8), else its first lines and a note.

    The note says how much was left out and `where` the full output is. The result
    does not exceed `max_bytes` (unless the note alone does), so capping twice
    changes nothing.
    """
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    total_lines = text.count("\n") + 1
    # Reserved with the largest numbers the note can show, so the real one fits.
    widest = _NOTE.format(bytes=len(data), lines=total_lines, total=len(data), where=where)
    head = _head_within(data, max_bytes - len(widest.encode()))
    kept_lines = head.count("\n") + (1 if head else 0)
    note = _NOTE.format(
        bytes=len(data) - len(head.encode()),
        lines=total_lines - kept_lines,
        total=len(data),
        where=where,
    )
    return head + note


def _head_within(data: bytes, budget: int) -> str:
    """The longest run of whole lines within `budget` bytes (part of the first, if none fit)."""
    if budget <= 0:
        return ""
    cut = data.rfind(b"\n", 0, budget + 1)
    if cut <= 0:
        # Not even one line fits: keep what does, never half a UTF-8 character.
        return data[:budget].decode(errors="ignore")
    return data[:cut].decode(errors="ignore")


def cap_comments(parts: Sequence[str], max_comments: int, where: str) -> list[str]:
    """At most `max_comments` comments: the first ones, then one summarising the rest."""
    if len(parts) <= max_comments:
        return list(parts)
    kept = max(0, max_comments - 1)
    left_out = len(parts) - kept
    summary = (
        f"**Output truncated:** {left_out} more part{'s' if left_out != 1 else ''} of this "
        f"comment (parts {kept + 1} to {len(parts)} of {len(parts)}) were not posted; at most "
        f"{max_comments} comments are posted per command. The full output is in the runs' "
        f"logs: {where}"
    )
    return [*parts[:kept], summary]
