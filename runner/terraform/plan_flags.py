"""The flags a saved plan was made with, read back from the plan file itself.

`terraform show -json` leaves out how a plan was asked for, yet a policy may judge
that (`run.plan_flags`: no `-target` in production). On the machine that planned, the
flags are kept beside the JSON plan; on another machine only the plan file, verified
by its checksum, can be trusted, so they are read from it and from its JSON. The
file is a zip whose `tfplan` member is Terraform's `planproto.Plan` message; two of
its top-level fields say what changes what is applied:

    5  target_addrs  → `-target=ADDR`
    17 ui_mode       → `-destroy` (1), `-refresh-only` (2)

and the JSON plan names each `-replace=ADDR` (`action_reason: replace_by_request`).
Only those top-level fields are read (the protobuf wire format, without Terraform's
schema: every other field is skipped by its wire type). `-var` values are in the JSON
plan's `variables`; `-refresh`, `-parallelism` and `-compact-warnings` are not kept
in a plan file and cannot be recovered.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

_PLAN_MEMBER = "tfplan"
_TARGET_ADDRS = 5
_UI_MODE = 17
_REPLACE_REASON = "replace_by_request"
_MODE_FLAGS = {1: "-destroy", 2: "-refresh-only"}

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


class PlanFileUnreadable(ValueError):
    """The plan file is not a Terraform plan this reader understands."""


def flags_in_plan_file(path: Path, plan: Mapping[str, Any]) -> tuple[str, ...]:
    """`-target=…`, `-replace=…`, then `-destroy` or `-refresh-only`, as planned.

    `plan` is the JSON of the same file (`terraform show -json`).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            message = archive.read(_PLAN_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as error:
        raise PlanFileUnreadable(f"not a Terraform plan file: {error}") from error
    targets: list[str] = []
    mode = 0
    for number, value in _fields(message):
        if number == _TARGET_ADDRS and isinstance(value, bytes):
            targets.append("-target=" + _text(value))
        elif number == _UI_MODE and isinstance(value, int):
            mode = value
    mode_flags = (_MODE_FLAGS[mode],) if mode in _MODE_FLAGS else ()
    return (*targets, *_replaced_by_request(plan), *mode_flags)


def _replaced_by_request(plan: Mapping[str, Any]) -> list[str]:
    changes = plan.get("resource_changes") or ()
    return [
        f"-replace={change['address']}"
        for change in changes
        if isinstance(change, Mapping) and change.get("action_reason") == _REPLACE_REASON
    ]


def _fields(message: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each top-level field; nested messages stay bytes."""
    position = 0
    while position < len(message):
        key, position = _varint(message, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, position = _varint(message, position)
            yield number, value
        elif wire_type == _LENGTH_DELIMITED:
            length, position = _varint(message, position)
            end = position + length
            if end > len(message):
                raise PlanFileUnreadable("the plan message is truncated")
            yield number, message[position:end]
            position = end
        elif wire_type in (_FIXED64, _FIXED32):
            position += 8 if wire_type == _FIXED64 else 4
        else:  # groups (3, 4) are not used by planproto; anything else is corrupt
            raise PlanFileUnreadable(f"unexpected protobuf wire type {wire_type}")
    if position != len(message):
        raise PlanFileUnreadable("the plan message is truncated")


def _varint(message: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(message) or shift > 63:
            raise PlanFileUnreadable("the plan message holds a broken varint")
        byte = message[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PlanFileUnreadable("a resource address in the plan is not UTF-8") from error
