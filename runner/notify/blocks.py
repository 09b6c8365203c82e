"""Block Kit pieces every Slack message of the runner is built from."""

from __future__ import annotations

from collections.abc import Sequence

from runner.notify.base import Block

SECTION_CAP = 2900  # Slack refuses section texts over 3000 characters


def section(text: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:SECTION_CAP]}}


def sections(
    lines: Sequence[str], max_sections: int | None = None, overflow: str = ""
) -> list[Block]:
    """Pack lines into sections under Slack's size limit.

    With `max_sections`, what does not fit is summarised as "… and N more lines" plus
    `overflow` (e.g. where to read the rest).
    """
    chunks: list[str] = []
    current: list[str] = []
    for line in lines:
        line = line[:SECTION_CAP]
        if current and len("\n".join([*current, line])) > SECTION_CAP:
            chunks.append("\n".join(current))
            current = []
        current.append(line)
    if current:
        chunks.append("\n".join(current))
    if max_sections is None or len(chunks) <= max_sections:
        return [section(chunk) for chunk in chunks]
    left = sum(chunk.count("\n") + 1 for chunk in chunks[max_sections:])
    kept = [section(chunk) for chunk in chunks[:max_sections]]
    return [*kept, section(f"… and {left} more lines{overflow}.")]


def escape(text: str) -> str:
    """Slack mrkdwn control characters (names and errors come from repositories and PRs)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
