"""Rego through regopy, in-process: load a set's modules, query them under a time limit.

regopy (rego-cpp) reads Rego v1. It also parses most v0 syntax, but reads a v0
partial-set head such as `deny[msg] { ... }` as a v1 partial *object* (`msg: true`),
so the conftest rule heads (`deny`, `violation`, `warn`, with `_suffix`) are rewritten
to `deny contains msg if { ... }` before loading: same line, same meaning as in OPA.

Errors never pass silently: built-in errors are strict (OPA's default would make
the rule undefined, i.e. "no denial"), and a syntax or runtime error becomes a
`RegoFailure` naming the file and line when rego-cpp gives a location.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from regopy import Interpreter, LogLevel, RegoError

# A v0 conftest head `deny[msg] {` (also `violation_x[{"msg": m}] {`), at a line start.
_V0_HEAD = re.compile(
    r"^(?P<name>(?:deny|violation|warn)(?:_\w+)?)\[(?P<term>[^\]\n]+)\]\s*\{", re.MULTILINE
)
_PACKAGE = re.compile(r"^\s*package\s+([\w.]+)", re.MULTILINE)
# rego-cpp locations: `17:policies/bad.rego|44|1` = length-prefixed name, byte offset, length.
_LOCATION = re.compile(r"\(error \d+:(?P<file>[^|\n]+)\|(?P<offset>\d+)\|\d+")
_MESSAGE = re.compile(r"\(errormsg (?P<size>\d+):")

T = TypeVar("T")


class RegoFailure(Exception):
    """Rego that could not be evaluated: a failure, never a pass."""


@dataclass(frozen=True)
class Module:
    """One `.rego` file, as loaded (v0 heads rewritten)."""

    name: str  # shown in errors: the path relative to the set
    source: str

    @property
    def package(self) -> str:
        match = _PACKAGE.search(self.source)
        return match.group(1) if match else ""


def v1_heads(source: str) -> str:
    """The source with conftest v0 partial-set heads written in v1; lines unchanged."""
    return _V0_HEAD.sub(r"\g<name> contains \g<term> if {", source)


def load_modules(directory: Path, *, tests: bool = False) -> tuple[Module, ...]:
    """Every `.rego` file under `directory` (with `*_test.rego` only when `tests`)."""
    files = sorted(path for path in directory.rglob("*.rego") if path.is_file())
    return tuple(
        Module(str(path.relative_to(directory)), v1_heads(path.read_text(encoding="utf-8")))
        for path in files
        if tests or not path.name.endswith("_test.rego")
    )


class Evaluation:
    """One interpreter holding a set's modules and one input; queried by package."""

    def __init__(self, modules: tuple[Module, ...], document: Mapping[str, Any] | None) -> None:
        self._sources = {module.name: module.source for module in modules}
        self._rego = Interpreter()
        self._rego.strict_built_in_errors = True
        self._rego.log_level = LogLevel.NONE  # errors are raised to us, not printed
        try:
            for module in modules:
                self._rego.add_module(module.name, module.source)
            if document is not None:
                self._rego.set_input(dict(document))
        except RegoError as error:
            raise RegoFailure(self._describe(str(error))) from error

    def query(self, expression: str) -> Any:
        """The value of `expression`; None when undefined; RegoFailure on any error."""
        try:
            output = self._rego.query(expression)
        except ValueError as error:  # rego-cpp wrote a result that is not valid JSON
            raise RegoFailure(f"unreadable result of {expression}: {error}") from error
        except RegoError as error:
            raise RegoFailure(self._describe(str(error))) from error
        if not output.ok():
            raise RegoFailure(self._describe(_error_text(output)))
        text = str(output)
        if text == "undefined":
            return None
        return json.loads(text)["expressions"][0]

    def _describe(self, raw: str) -> str:
        """`file:line: message` from rego-cpp's error tree (the whole text if unparsable)."""
        message = _message(raw) or raw.strip()
        location = _LOCATION.search(raw)
        if location is None or location["file"] not in self._sources:
            return message
        source = self._sources[location["file"]].encode("utf-8")
        offset = int(location["offset"])
        line = source[:offset].count(b"\n") + 1
        return f"{location['file']}:{line}: {message}"


def _error_text(output: Any) -> str:
    node = output.node()
    return "\n".join(node.at(index).json() for index in range(len(node)))


def _message(raw: str) -> str:
    match = _MESSAGE.search(raw)
    if match is None:
        return ""
    start = match.end()
    return raw[start : start + int(match["size"])]


def within(seconds: float, work: Callable[[], T], what: str) -> T:
    """`work()` on a thread, given up after `seconds`: regopy has no time limit of its own.

    rego-cpp releases the GIL, so the caller is not blocked; a query that overruns
    keeps its (daemon) thread until it ends, but its result is no longer waited for.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as error:  # handed to the caller below
            box["error"] = error

    thread = threading.Thread(target=run, name="rego", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise RegoFailure(f"{what} ran longer than its time limit ({seconds:g} s)")
    if "error" in box:
        raise box["error"]
    return box["value"]
