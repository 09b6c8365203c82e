"""Cut a Markdown comment into parts that each fit a forge's size limit.

GitHub refuses comments longer than 65,536 characters (GitLab: 1,000,000). A plan
comment for many projects easily exceeds that, so it is posted as several comments.
Each part must render on its own: a code fence or `<details>` block still open at
the end of a part is closed there and reopened at the top of the next part, which
starts with a "continued (k/n)" marker. No line is dropped: lines are only moved
between parts, and a line longer than a whole part is cut into pieces.

Fences follow CommonMark (up to three spaces of indent, three or more backticks or
tildes, closed by the same character at least as many times); fences inside list
items or block quotes are not tracked. `<details>` tags are counted outside fences;
the line that opened a `<details>` is repeated to reopen it (our templates put the
`<summary>` on that line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from itertools import count

GITHUB_CAP = 65_536
MARKER = "*continued ({k}/{n})*"

# Longest opening line repeated verbatim; longer ones are reopened in a short form.
_MAX_REOPEN = 200
# How far below the largest possible cut to look for a clean cut position.
_MAX_CUT_SEARCH = 64

_FENCE_OPEN = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")
# Used with .match(line, pos): no "^", which would never match at pos > 0.
_FENCE_LIKE = re.compile(r" {0,3}(`{3}|~{3})")
_DETAILS_OPEN = re.compile(r"<details(?=[\s>])", re.IGNORECASE)
_DETAILS_CLOSE = re.compile(r"</details\s*>", re.IGNORECASE)
_DETAILS_TAG = re.compile(r"</?details[^>]*>?", re.IGNORECASE)
# An opening line worth repeating as is: the tag and at most its summary.
_DETAILS_HEADER = re.compile(r"<details(\s[^>]*)?>\s*(<summary>[^<]*</summary>)?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class CommentPart:
    """One comment: added lines around a run of original lines.

    `head` (marker, reopened blocks) and `tail` (closers) are what the splitter
    added; `body` holds original lines, or pieces of one when `continues_line` says
    the first body line continues the previous part's last one.
    """

    head: tuple[str, ...]
    body: tuple[str, ...]
    tail: tuple[str, ...] = ()
    continues_line: bool = False

    @property
    def text(self) -> str:
        return "\n".join((*self.head, *self.body, *self.tail))


def split_comment(markdown: str, cap: int = GITHUB_CAP) -> list[str]:
    """The comment as parts of at most `cap` characters each (one part if it fits)."""
    return [part.text for part in split_comment_parts(markdown, cap)]


def split_comment_parts(markdown: str, cap: int = GITHUB_CAP) -> list[CommentPart]:
    """Like `split_comment`, but says which lines were added (for tests and log views).

    Raises ValueError when `cap` cannot hold the marker, the reopened blocks and
    their closers plus one character: far below any forge's limit.
    """
    if len(markdown) <= cap:
        return [CommentPart(head=(), body=tuple(markdown.split("\n")))]
    lines = markdown.split("\n")
    # The marker's width depends on the number of parts: assume a width, check it.
    for width in count(1):
        parts = _Splitter(cap, width).split(lines)
        if len(str(len(parts))) <= width:
            return _with_markers(parts)
    raise AssertionError("unreachable")


# --- blocks that must be closed and reopened ---------------------------------------------


@dataclass(frozen=True)
class _Block:
    """An open fence or `<details>`: how to close it and how to reopen it."""

    close: str
    reopen: tuple[str, ...]
    fence: str | None = None  # the fence run ("```", "~~~~") when this is a code fence


_Stack = tuple[_Block, ...]


def _fence_step(stack: _Stack, line: str) -> _Stack | None:
    """The stack after `line` if it opens or closes a fence, else None."""
    top = stack[-1] if stack else None
    if top is not None and top.fence is not None:
        char, length = top.fence[0], len(top.fence)
        closing = re.fullmatch(rf" {{0,3}}{re.escape(char)}{{{length},}}[ \t]*", line)
        return stack[:-1] if closing else None
    match = _FENCE_OPEN.match(line)
    if not match:
        return None
    indent, run, info = match.groups()
    if run[0] == "`" and "`" in info:
        return None  # not a fence in CommonMark: backtick info strings cannot hold backticks
    reopen = f"{indent}{run}{info.strip()[:_MAX_REOPEN]}"
    return (*stack, _Block(close=f"{indent}{run}", reopen=(reopen,), fence=run))


def _details_step(stack: _Stack, text: str) -> _Stack:
    """The stack after the `<details>` tags in `text` (which is outside any fence)."""
    opens = len(_DETAILS_OPEN.findall(text))
    net = opens - len(_DETAILS_CLOSE.findall(text))
    if net < 0:
        return stack[: max(0, len(stack) + net)]
    header = text.strip()
    verbatim = len(header) <= _MAX_REOPEN and _DETAILS_HEADER.fullmatch(header)
    # A blank line after the tag, or GitHub renders the Markdown that follows as HTML.
    reopen = (header if verbatim else "<details>", "")
    return (*stack, *[_Block(close="</details>", reopen=reopen)] * net)


def _step(stack: _Stack, line: str) -> _Stack:
    after_fence = _fence_step(stack, line)
    if after_fence is not None:
        return after_fence
    if stack and stack[-1].fence is not None:
        return stack  # inside a fence everything is text
    return _details_step(stack, line)


def _closers(stack: _Stack) -> tuple[str, ...]:
    return tuple(block.close for block in reversed(stack))


def _reopeners(stack: _Stack) -> tuple[str, ...]:
    return tuple(line for block in stack for line in block.reopen)


def _size(lines: tuple[str, ...] | list[str]) -> int:
    """Characters of the lines each followed by a newline."""
    return sum(len(line) + 1 for line in lines)


# --- the greedy splitter ------------------------------------------------------------------


@dataclass
class _Splitter:
    """Fills parts line by line; a part always leaves room for its closers."""

    cap: int
    marker_width: int  # digits assumed for k and n in the marker
    parts: list[CommentPart] = field(default_factory=list)
    stack: _Stack = ()
    head: tuple[str, ...] = ()
    body: list[str] = field(default_factory=list)
    continues: bool = False
    used: int = 0  # _size(head) + _size(body), kept up to date (parts hold thousands of lines)

    def split(self, lines: list[str]) -> list[CommentPart]:
        for line in lines:
            self._place(line)
        self.parts.append(CommentPart(self.head, tuple(self.body), (), self.continues))
        return self.parts

    def _place(self, line: str) -> None:
        after = _step(self.stack, line)
        if not self._fits(line, after) and self.body:
            self._next_part()
        if self._fits(line, after):
            self._add(line, after)
        else:
            self._cut(line)

    def _cut(self, line: str) -> None:
        """Place a line longer than a fresh part can hold, as consecutive pieces."""
        start = 0
        while start < len(line):
            if start:
                self._next_part()
            piece, after = self._largest_piece(line, start)
            if not piece:
                raise ValueError(f"cap {self.cap} leaves no room for text after the markers")
            self._add(piece, after, continues=start > 0)
            start += len(piece)

    def _largest_piece(self, line: str, start: int) -> tuple[str, _Stack]:
        """The longest clean piece of line[start:] that fits the current (fresh) part."""
        room = self.cap - self.used - _size(_closers(self.stack))
        end = min(len(line), start + room)
        while end > start:
            end = self._clean_cut(line, start, end)
            piece = line[start:end]
            after = self._piece_step(line, piece, start)
            overflow = self.used + len(piece) + _size(_closers(after)) - self.cap
            if overflow <= 0:
                return piece, after
            end -= overflow  # the piece opened a block: make room for its closer
        return "", self.stack

    def _clean_cut(self, line: str, start: int, end: int) -> int:
        """The cut at or just below `end` that changes no block structure.

        A cut must not make a piece start like a fence, turn the first piece into a
        fence, or split a `<details>` tag; if no such cut is close, cut at `end`.
        """
        if end == len(line):
            return end
        tags = [m.span() for m in _DETAILS_TAG.finditer(line)]
        whole_line_effect = _fence_step(self.stack, line) is not None
        for candidate in range(end, max(start, end - _MAX_CUT_SEARCH), -1):
            if _FENCE_LIKE.match(line, candidate) or any(a < candidate < b for a, b in tags):
                continue
            first_piece_is_fence = (
                start == 0 and _fence_step(self.stack, line[:candidate]) is not None
            )
            if first_piece_is_fence == whole_line_effect or start > 0:
                return candidate
        return end

    def _piece_step(self, line: str, piece: str, start: int) -> _Stack:
        """A fence line changes the stack at its first piece; tags count piece by piece."""
        fence_after = _fence_step(self.stack, line)
        if fence_after is not None:
            return fence_after if start == 0 else self.stack
        if self.stack and self.stack[-1].fence is not None:
            return self.stack
        return _details_step(self.stack, piece)

    def _fits(self, line: str, after: _Stack) -> bool:
        return self.used + len(line) + _size(_closers(after)) <= self.cap

    def _add(self, line: str, after: _Stack, *, continues: bool = False) -> None:
        if not self.body:
            self.continues = continues
        self.body.append(line)
        self.used += len(line) + 1
        self.stack = after

    def _next_part(self) -> None:
        tail = _closers(self.stack)
        self.parts.append(CommentPart(self.head, tuple(self.body), tail, self.continues))
        placeholder = MARKER.format(k="9" * self.marker_width, n="9" * self.marker_width)
        self.head = (placeholder, "", *_reopeners(self.stack))
        self.body, self.continues = [], False
        self.used = _size(self.head)
        if _size(self.head) + _size(_closers(self.stack)) >= self.cap:
            raise ValueError(f"cap {self.cap} cannot hold the continuation marker and blocks")


def _with_markers(parts: list[CommentPart]) -> list[CommentPart]:
    """Replace the placeholder markers with the real "continued (k/n)" ones."""
    total = len(parts)
    return [
        part if k == 1 else replace(part, head=(MARKER.format(k=k, n=total), *part.head[1:]))
        for k, part in enumerate(parts, start=1)
    ]
