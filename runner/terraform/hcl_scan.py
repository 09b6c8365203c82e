"""HCL files read by a token pass instead of python-hcl2, for the questions asked often.

Two questions are asked of every Terraform file many times: which top-level `module`
blocks call a local module (change detection, modules.py), and which blocks `terraform
init` depends on (the init cache key, init_key.py). python-hcl2 answers with a full
parse, 4 ms for a small file and tens of milliseconds for a large one, while holding the
GIL: a pull request planning eight projects spent more Python time parsing for its init
keys than running Terraform. Both questions only need the file's structure: which
tokens form which block or argument. That is what this module reads:

- `hcl_tokens`: the significant tokens (no spaces or comments). Quoted strings with
  their `${…}` / `%{…}` templates (nested quotes and braces included), heredocs and
  comments are single units, so a brace or a `module` inside them is never structure.
- `hcl_body`: the top-level body as blocks (type, labels, body) and arguments (name,
  value tokens), nested blocks included.

Whatever this pass does not model gives None, never a guess: an unterminated string,
heredoc or comment, a newline inside a quoted string, unbalanced brackets, a line that
is neither an argument nor a block (an expression continued on the next line without
brackets). The caller then decides the slow, sure way (python-hcl2, or a real init).
For every file python-hcl2 parses, both give the same module calls:
`tests/test_detection.py` checks them side by side.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

Token = tuple[str, str]  # (kind, text)

# Spaces and line comments are skipped in front of every token, in the same match.
# A string without templates or escapes of `$`/`%` (or with simple templates) is matched
# here; any other string, a heredoc and a block comment are scanned by hand (_SCANNERS).
_TOKEN = re.compile(
    r"""
    (?:[ \t\r]+|\#[^\n]*|//[^\n]*)*
    (?:
      (?P<newline>\n)
    | (?P<ident>[A-Za-z_][\w-]*)
    | (?P<string>"(?:[^"\\\n$%]|\\.|[$%](?!\{)|[$%]\{[^{}"\n]*\})*")
    | (?P<quote>")
    | (?P<block_comment>/\*)
    | (?P<heredoc><<)
    | (?P<open>\{)
    | (?P<close>\})
    | (?P<oparen>[(\[])
    | (?P<cparen>[)\]])
    | (?P<operator>==|!=|<=|>=|=>|&&|\|\|)
    | (?P<equals>=)
    | (?P<end>\Z)
    | (?P<other>.)
    )
    """,
    re.VERBOSE,
)
_HEREDOC_START = re.compile(r"<<-?([A-Za-z_][\w-]*)\r?\n")


class _Unsure(Exception):
    """Something this pass does not model: the caller decides another way."""


# Named tuples, not dataclasses: a large file makes thousands, and they are built faster.
class HclAttribute(NamedTuple):
    """`name = value`; the value as its tokens (strings and heredocs whole)."""

    name: str
    value: tuple[Token, ...]


class HclBlock(NamedTuple):
    """`type "label" … { body }`; `tokens` is the whole block, header to closing brace."""

    type: str
    labels: tuple[Token, ...]
    body: tuple[HclAttribute | HclBlock, ...]
    tokens: tuple[Token, ...]

    def attribute(self, name: str) -> HclAttribute | None:
        return next(
            (item for item in self.body if isinstance(item, HclAttribute) and item.name == name),
            None,
        )

    def blocks(self) -> tuple[HclBlock, ...]:
        return tuple(item for item in self.body if isinstance(item, HclBlock))


def hcl_tokens(text: str) -> list[Token] | None:
    """The significant tokens of an HCL file; None when this pass is unsure of them."""
    try:
        return _tokens(text)
    except _Unsure:
        return None


def hcl_body(text: str) -> tuple[HclAttribute | HclBlock, ...] | None:
    """The top-level items of an HCL file; None when this pass is unsure of them."""
    try:
        tokens = _tokens(text)
        items, end = _body(tokens, 0, closed_by_brace=False)
    except _Unsure:
        return None
    return items if end == len(tokens) else None


def plain_string(value: tuple[Token, ...]) -> str | None:
    """The text of a value that is one quoted string without templates or escapes."""
    if len(value) != 1 or value[0][0] != "string":
        return None
    body = value[0][1][1:-1]
    return None if "\\" in body or "${" in body or "%{" in body else body


def lexical_local_calls(text: str) -> tuple[tuple[str, str], ...] | None:
    """(name, source) of top-level module blocks with a local source; None when unsure.

    Unsure also where the file is well-formed but python-hcl2 could answer otherwise: a
    module block with other than one label, or a `source` that is not a plain string.
    """
    body = hcl_body(text)
    if body is None:
        return None
    found = []
    for block in body:
        if not isinstance(block, HclBlock) or block.type != "module":
            continue
        source = block.attribute("source")
        if source is None:
            continue
        literal = plain_string(source.value)
        if len(block.labels) != 1 or literal is None:
            return None
        kind, label = block.labels[0]
        name = label if kind == "ident" else plain_string(block.labels)
        if name is None:
            return None
        if literal.startswith(("./", "../")):
            found.append((name, literal))
    return tuple(found)


def _tokens(text: str) -> list[Token]:
    """One regex pass (C speed) for files without strings it cannot match whole, heredocs
    or block comments; the hand scanners only for those that have them."""
    tokens = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup or "other"
        if kind in _SCANNERS:
            return list(_scanned_tokens(text))
        tokens.append((kind, match.group(kind)))
    tokens.pop()  # `end`
    return tokens


def _scanned_tokens(text: str) -> Iterator[Token]:
    position, match_at = 0, _TOKEN.match
    while True:
        match = match_at(text, position)
        assert match is not None  # `end` or `other` matches after any skipped run
        kind = match.lastgroup or "other"
        if kind == "end":
            return
        scanner = _SCANNERS.get(kind)
        if scanner is None:
            yield (kind, match.group(kind))
            position = match.end()
            continue
        start = match.start(kind)
        kind, position = scanner(text, start)
        if kind == "newline-comment":
            yield ("newline", "\n")
        elif kind != "comment":
            yield (kind, text[start:position])


def _quoted_string(text: str, start: int) -> tuple[str, int]:
    """A `"…"` string with its templates; escaped `$${` and `%%{` are literal text."""
    position = start + 1
    while position < len(text):
        char = text[position]
        if char == "\\":
            position += 2
        elif char == '"':
            return "string", position + 1
        elif char == "\n":
            raise _Unsure("a newline in a quoted string")
        elif text.startswith(("$${", "%%{"), position):
            position += 3
        elif text.startswith(("${", "%{"), position):
            position = _template_end(text, position + 2)
        else:
            position += 1
    raise _Unsure("an unterminated string")


def _template_end(text: str, position: int) -> int:
    """Just past the `}` closing a template opened before `position`."""
    depth = 0
    while position < len(text):
        char = text[position]
        if char == '"':
            position = _quoted_string(text, position)[1]
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                return position + 1
            depth -= 1
        position += 1
    raise _Unsure("an unterminated template")


def _heredoc(text: str, start: int) -> tuple[str, int]:
    """`<<EOT` / `<<-EOT` up to the line holding only the marker (indented or not)."""
    match = _HEREDOC_START.match(text, start)
    if match is None:
        raise _Unsure("a `<<` that does not start a heredoc")
    marker = match.group(1)
    position = match.end()
    while position < len(text):
        line_end = text.find("\n", position)
        line_end = len(text) if line_end < 0 else line_end
        if text[position:line_end].strip() == marker:
            return "heredoc", line_end
        position = line_end + 1
    raise _Unsure("an unterminated heredoc")


def _block_comment(text: str, start: int) -> tuple[str, int]:
    """`/* … */`; one spanning lines still ends the line it started on."""
    stop = text.find("*/", start + 2)
    if stop < 0:
        raise _Unsure("an unterminated comment")
    kind = "newline-comment" if "\n" in text[start:stop] else "comment"
    return kind, stop + 2


_SCANNERS = {"quote": _quoted_string, "heredoc": _heredoc, "block_comment": _block_comment}


def _body(
    tokens: list[Token], position: int, *, closed_by_brace: bool
) -> tuple[tuple[HclAttribute | HclBlock, ...], int]:
    """The items of a body starting at `position`, and where it ends (past its `}`)."""
    items: list[HclAttribute | HclBlock] = []
    while position < len(tokens):
        kind, text = tokens[position]
        if kind == "newline":
            position += 1
        elif kind == "close":
            if not closed_by_brace:
                raise _Unsure("unbalanced braces")
            return tuple(items), position + 1
        elif kind != "ident":
            raise _Unsure(f"a line starting with {text!r}")
        elif position + 1 < len(tokens) and tokens[position + 1][0] == "equals":
            end = _expression_end(tokens, position + 2)
            if end == position + 2:
                raise _Unsure("an argument without a value")
            items.append(HclAttribute(text, tuple(tokens[position + 2 : end])))
            position = end
        else:
            block, position = _block(tokens, position)
            items.append(block)
    if closed_by_brace:
        raise _Unsure("unbalanced braces")
    return tuple(items), position


def _block(tokens: list[Token], start: int) -> tuple[HclBlock, int]:
    brace = start + 1
    while brace < len(tokens) and tokens[brace][0] in ("string", "ident"):
        brace += 1
    if brace >= len(tokens) or tokens[brace][0] != "open":
        raise _Unsure("neither an argument nor a block")
    body, end = _body(tokens, brace + 1, closed_by_brace=True)
    if end < len(tokens) and tokens[end][0] not in ("newline", "close"):
        raise _Unsure("something after a block on its line")
    block = HclBlock(
        type=tokens[start][1],
        labels=tuple(tokens[start + 1 : brace]),
        body=body,
        tokens=tuple(tokens[start:end]),
    )
    return block, end


def _expression_end(tokens: list[Token], position: int) -> int:
    """Where the value starting at `position` ends: a newline outside brackets, or the
    `}` of a one-line block."""
    depth = 0
    while position < len(tokens):
        kind = tokens[position][0]
        if kind in ("open", "oparen"):
            depth += 1
        elif kind in ("close", "cparen"):
            if depth == 0:
                if kind == "close":
                    return position
                raise _Unsure("unbalanced brackets")
            depth -= 1
        elif kind == "newline" and depth == 0:
            return position
        position += 1
    if depth:
        raise _Unsure("unbalanced brackets")
    return position
