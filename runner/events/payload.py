"""Typed access to a webhook's decoded JSON, naming the failing path when a field is wrong.

Both forge parsers (`events/github.py`, `events/gitlab.py`) read payloads through these,
so a missing or mistyped field is always a `MalformedEvent` saying where
(`merge_request.iid: expected an integer, got str`), never a KeyError deep in the flow.
"""

from __future__ import annotations

from typing import Any

from runner.events.model import MalformedEvent


def at(path: str, key: str) -> str:
    """`path.key`, or `key` at the root."""
    return f"{path}.{key}" if path else key


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def require(data: dict, key: str, path: str) -> Any:
    if key not in data:
        raise MalformedEvent(f"{at(path, key)}: missing")
    return data[key]


def _typed(value: Any, kind: type, what: str, where: str) -> Any:
    # bool is an int subclass; `true` is not a PR number.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedEvent(f"{where}: expected {what}, got {type_name(value)}")
    return value


def obj(data: dict, key: str, path: str) -> dict:
    return _typed(require(data, key, path), dict, "an object", at(path, key))


def optional_obj(data: dict, key: str, path: str) -> dict | None:
    value = data.get(key)
    return None if value is None else _typed(value, dict, "an object or null", at(path, key))


def string(data: dict, key: str, path: str) -> str:
    return _typed(require(data, key, path), str, "a string", at(path, key))


def optional_string(data: dict, key: str, path: str) -> str | None:
    value = data.get(key)
    return None if value is None else _typed(value, str, "a string or null", at(path, key))


def integer(data: dict, key: str, path: str) -> int:
    return _typed(require(data, key, path), int, "an integer", at(path, key))


def boolean(data: dict, key: str, path: str) -> bool:
    return _typed(require(data, key, path), bool, "a boolean", at(path, key))


def optional_boolean(data: dict, key: str, path: str, default: bool) -> bool:
    """A flag some forge versions leave out (GitHub's `draft`, GitLab's `draft`)."""
    return _typed(data.get(key, default), bool, "a boolean", at(path, key))


def is_json_object(payload: Any) -> dict:
    """The payload itself, which must be a JSON object."""
    return _typed(payload, dict, "a JSON object", "payload")
