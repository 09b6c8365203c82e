"""conftest's conventions, so Atlantis policies work unchanged.

A rule named `deny`, `violation` (or `deny_*`, `violation_*`) fails the plan, one
named `warn` (or `warn_*`) reports; each element is a message: a string shown
verbatim, or an object whose `msg` is shown (conftest's structured `violation`).
Rules may be sets (the usual `deny contains msg`) or a single value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_FAIL = re.compile(r"^(deny|violation)(_\w+)?$")
_WARN = re.compile(r"^warn(_\w+)?$")


@dataclass(frozen=True)
class Verdict:
    """The messages of one package."""

    failures: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def verdict(package: Mapping[str, Any] | None) -> Verdict:
    """Failures and warnings of a package's evaluated rules (`data.<package>`)."""
    rules = package or {}
    failures = [m for name, value in rules.items() if _FAIL.match(name) for m in _messages(value)]
    warnings = [m for name, value in rules.items() if _WARN.match(name) for m in _messages(value)]
    return Verdict(tuple(sorted(failures)), tuple(sorted(warnings)))


def _messages(value: Any) -> list[str]:
    if value is None or value is False or value == [] or value == {}:
        return []
    items = value if isinstance(value, list) else [value]
    return [_message(item) for item in items]


def _message(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping) and isinstance(item.get("msg"), str):
        return item["msg"]
    return json.dumps(item, sort_keys=True)
