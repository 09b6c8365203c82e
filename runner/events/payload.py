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


def obj(data: dict, key: str, path: str) -> dict:
    value = require(data, key, path)
    if not isinstance(value, dict):
        raise MalformedEvent(f"{at(path, key)}: expected an object, got {type_name(value)}")
    return value


def optional_obj(data: dict, key: str, path: str) -> dict | None:
    value = data.get(key)
    if value is not None and not isinstance(value, dict):
        raise MalformedEvent(f"{at(path, key)}: expected an object or null, got {type_name(value)}")
    return value


def string(data: dict, key: str, path: str) -> str:
    value = require(data, key, path)
    if not isinstance(value, str):
        raise MalformedEvent(f"{at(path, key)}: expected a string, got {type_name(value)}")
    return value


def optional_string(data: dict, key: str, path: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise MalformedEvent(f"{at(path, key)}: expected a string or null, got {type_name(value)}")
    return value


def integer(data: dict, key: str, path: str) -> int:
    value = require(data, key, path)
    # bool is an int subclass; `true` is not a PR number.
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedEvent(f"{at(path, key)}: expected an integer, got {type_name(value)}")
    return value


def boolean(data: dict, key: str, path: str) -> bool:
    value = require(data, key, path)
    if not isinstance(value, bool):
        raise MalformedEvent(f"{at(path, key)}: expected a boolean, got {type_name(value)}")
    return value


def optional_boolean(data: dict, key: str, path: str, default: bool) -> bool:
    """A flag some forge versions leave out (GitHub's `draft`, GitLab's `draft`)."""
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise MalformedEvent(f"{at(path, key)}: expected a boolean, got {type_name(value)}")
    return value


def is_json_object(payload: Any) -> dict:
    """The payload itself, which must be a JSON object."""
    if not isinstance(payload, dict):
        raise MalformedEvent(f"payload: expected a JSON object, got {type_name(payload)}")
    return payload
