"""Top-level `module` calls of a plain HCL file by a lexical pass, before python-hcl2.

Confirming a candidate module call needs to know that the `source = "./…"` line is an
argument of a top-level `module` block, not a comment, a heredoc or an attribute of a
resource. python-hcl2 answers that with a full parse (~4 ms per file), and a cold pull
request in a large monorepo confirms hundreds of files. Most Terraform files are simple
enough for a token pass to answer the same: comments, strings with simple
interpolations, braces. Anything this pass does not model (heredocs, block comments,
template directives, nested quotes or braces inside an interpolation, unbalanced
braces, an argument without a value) makes it return None, and python-hcl2 decides
(and reports a file it cannot parse). For every file python-hcl2 parses, both give the
same calls: `tests/test_detection.py` checks them side by side.
"""

from __future__ import annotations

import itertools
import re

# Order matters: comments before `/`, strings before the bare-quote catch-all.
_TOKEN = re.compile(
    r"""
      (?P<comment>\#[^\n]*|//[^\n]*)
    | (?P<string>"(?:[^"\\\n$]|\\.|\$(?!\{)|\$\{[^{}"\n]*\})*")
    | (?P<quote>")
    | (?P<open>\{)
    | (?P<close>\})
    | (?P<ident>[A-Za-z_][\w-]*)
    | (?P<equals>=(?![=>]))
    | (?P<newline>\n)
    | (?P<space>[ \t\r]+)
    | (?P<other>.)
    """,
    re.VERBOSE,
)
_UNMODELLED = ("<<", "/*", "%{")


class _Unsure(Exception):
    """Something this pass does not model: python-hcl2 decides."""


def lexical_local_calls(text: str) -> tuple[tuple[str, str], ...] | None:
    """(name, source) of top-level module blocks with a local source; None when unsure."""
    if any(marker in text for marker in _UNMODELLED):
        return None
    tokens = [
        (match.lastgroup or "", match.group())
        for match in _TOKEN.finditer(text)
        if match.lastgroup not in ("space", "comment")
    ]
    try:
        calls = _module_sources(tokens)
    except _Unsure:
        return None
    return tuple((name, source) for name, source in calls if source.startswith(("./", "../")))


def _module_sources(tokens: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Walk the tokens keeping brace depth."""
    if any(kind == "quote" for kind, _ in tokens):
        raise _Unsure("a string this pass cannot delimit")
    for (kind, _), (next_kind, _) in itertools.pairwise(tokens):
        if kind == "equals" and next_kind in ("newline", "close"):
            raise _Unsure("an argument without a value: let the parser report it")
    found: list[tuple[str, str]] = []
    depth = 0
    module_name: str | None = None  # set while inside a top-level module block
    line_start = True
    for index, (kind, value) in enumerate(tokens):
        if kind == "open":
            if depth == 0:
                module_name = _module_header(tokens, index)
            depth += 1
        elif kind == "close":
            depth -= 1
            if depth < 0:
                raise _Unsure("unbalanced braces")
            if depth == 0:
                module_name = None
        elif kind == "ident" and value == "source" and line_start and depth == 1:
            source = _literal_argument(tokens, index)
            if module_name is not None and source is not None:
                found.append((module_name, source))
        line_start = kind in ("newline", "open")
    if depth != 0:
        raise _Unsure("unbalanced braces")
    return found


def _module_header(tokens: list[tuple[str, str]], brace: int) -> str | None:
    """The label of `module "label" {` ending at `brace`; None for any other block."""
    start = brace
    while start > 0 and tokens[start - 1][0] not in ("newline", "close"):
        start -= 1
    header = tokens[start:brace]
    if not header or header[0] != ("ident", "module"):
        return None
    if len(header) != 2 or header[1][0] not in ("string", "ident"):
        raise _Unsure("a module header with other than one label")
    kind, label = header[1]
    return _unquote(label) if kind == "string" else label


def _literal_argument(tokens: list[tuple[str, str]], name: int) -> str | None:
    """The value of `source = "literal"`; None when it is not an argument at all."""
    following = tokens[name + 1 : name + 4]
    if not following or following[0][0] != "equals":
        return None  # `source` as a word in a list or expression, not an argument
    if len(following) < 2 or following[1][0] != "string":
        raise _Unsure("a source that is not a plain string")
    after = following[2][0] if len(following) > 2 else "newline"
    if after not in ("newline", "close"):
        raise _Unsure("a source expression")
    return _unquote(following[1][1])


def _unquote(literal: str) -> str:
    body = literal[1:-1]
    if "\\" in body or "${" in body:
        raise _Unsure("escapes or interpolation in a label or source")
    return body
