"""The one interface between the runner and a chat tool: send a Block Kit message.

Notifications are best effort: a chat outage must never fail a scan or an apply, so
`send` reports what happened instead of raising. `slack.py` holds the two real
implementations (incoming webhook, bot token); `NullNotifier` stands in when none
is configured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

Block = dict[str, Any]


@dataclass(frozen=True)
class Message:
    """A chat message: `text` is the fallback for notifications, `blocks` the Block Kit body."""

    text: str
    blocks: tuple[Block, ...] = ()
    kind: str = "info"  # what the message is about (drift, heartbeat, apply), for logs/tests


@dataclass(frozen=True)
class Delivery:
    """The outcome of one `send`, after retries."""

    ok: bool
    attempts: int
    error: str = ""


class Notifier(Protocol):
    """Something that delivers messages; never raises for delivery problems."""

    def send(self, message: Message) -> Delivery: ...


class NullNotifier:
    """No chat configured: every message is dropped, successfully."""

    def send(self, message: Message) -> Delivery:
        return Delivery(ok=True, attempts=0)
