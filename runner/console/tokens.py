"""`gitops-runner token ...`: token lifetimes as people write them, and the token table."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click

from runner.console.tables import _print, _table

if TYPE_CHECKING:
    from runner.store.tokens import TokenRecord

_LIFETIME = re.compile(r"(\d+)\s*([dhm])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
_TIME = "%Y-%m-%d %H:%M"


def parse_lifetime(text: str) -> timedelta:
    """`90d`, `12h` or `30m` as a timedelta; a BadParameter names the forms otherwise."""
    match = _LIFETIME.fullmatch(text.strip().lower())
    if match is None or int(match.group(1)) == 0:
        raise click.BadParameter(
            f"{text!r}: write a positive number of days, hours or minutes, e.g. 90d, 12h, 30m",
            param_hint="--expires-in",
        )
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def print_tokens(tokens: Sequence[TokenRecord]) -> None:
    """One row per token, revoked and expired ones included (never a secret)."""
    if not tokens:
        print("No API tokens. Create one with `gitops-runner token create --name NAME`.")
        return
    now = datetime.now(UTC)
    table = _table(["id", "name", "role", "state", "created (UTC)", "expires", "last used"])
    for token in tokens:
        table.add_row(
            str(token.id), token.name, token.role, _state(token, now),
            f"{token.created_at:{_TIME}}", _when(token.expires_at), _when(token.last_used_at),
        )  # fmt: skip
    _print(table)


def _state(token: TokenRecord, now: datetime) -> str:
    if token.revoked_at is not None:
        return "revoked"
    return "active" if token.usable(now) else "expired"


def _when(moment: datetime | None) -> str:
    return f"{moment:{_TIME}}" if moment is not None else "-"
