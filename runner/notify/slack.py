"""Slack through slack-sdk: an incoming webhook or a bot token posting to a channel.

Both retry transient failures (connection errors, HTTP 429 and 5xx) with exponential
backoff (tenacity) and then give up quietly: a Slack outage is logged and reported
back as a failed `Delivery`, never raised into the scan that wanted to notify.
Both take a base URL, so tests point them at a fake Slack on 127.0.0.1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from runner.notify.base import Delivery, Message, Notifier, NullNotifier
from runner.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://slack.com/api/"
DEFAULT_TIMEOUT_S = 10


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: `attempts` in all, waits doubling from `backoff_s` up to `max_wait_s`."""

    attempts: int = 4
    backoff_s: float = 1.0
    max_wait_s: float = 30.0


class _Transient(Exception):
    """A failure worth retrying (Slack down, rate limited, connection refused)."""


class _Permanent(Exception):
    """A failure retrying cannot fix (bad token, unknown channel, invalid blocks)."""


def _deliver(attempt: Callable[[], None], policy: RetryPolicy) -> Delivery:
    """Run `attempt` under the retry policy and turn the outcome into a Delivery."""
    retrying = Retrying(
        stop=stop_after_attempt(policy.attempts),
        wait=wait_exponential(multiplier=policy.backoff_s, max=policy.max_wait_s),
        retry=retry_if_exception_type(_Transient),
        reraise=False,
    )
    tries = 0

    def counted() -> None:
        nonlocal tries
        tries += 1
        attempt()

    try:
        retrying(counted)
        return Delivery(ok=True, attempts=tries)
    except RetryError as error:
        cause = error.last_attempt.exception()
        log.warning("slack: giving up after %d attempts: %s", tries, cause)
        return Delivery(ok=False, attempts=tries, error=str(cause))
    except _Permanent as error:
        log.warning("slack: message refused: %s", error)
        return Delivery(ok=False, attempts=tries, error=str(error))
    except Exception as error:  # a notification must never break the caller
        log.exception("slack: unexpected failure")
        return Delivery(ok=False, attempts=tries, error=f"{type(error).__name__}: {error}")


def _classify_status(status: int, body: str) -> None:
    if status == 200:
        return
    if status == 429 or status >= 500:
        raise _Transient(f"HTTP {status}: {body[:200]}")
    raise _Permanent(f"HTTP {status}: {body[:200]}")


class SlackWebhookNotifier:
    """An incoming webhook (`GITOPS_SLACK_WEBHOOK_URL`): the channel is fixed by the URL."""

    def __init__(
        self, url: str, *, policy: RetryPolicy | None = None, timeout_s: int = DEFAULT_TIMEOUT_S
    ) -> None:
        # retry_handlers=[]: tenacity owns every retry, so attempts are counted once.
        self._client = WebhookClient(url, timeout=timeout_s, retry_handlers=[])
        self._policy = policy or RetryPolicy()

    def send(self, message: Message) -> Delivery:
        def attempt() -> None:
            try:
                response = self._client.send(text=message.text, blocks=list(message.blocks))
            except OSError as error:  # URLError, connection refused, timeouts
                raise _Transient(f"{type(error).__name__}: {error}") from error
            _classify_status(response.status_code, response.body or "")

        return _deliver(attempt, self._policy)


class SlackBotNotifier:
    """A bot token posting with chat.postMessage to one channel."""

    def __init__(
        self,
        token: str,
        channel: str,
        *,
        base_url: str = DEFAULT_API_URL,
        policy: RetryPolicy | None = None,
        timeout_s: int = DEFAULT_TIMEOUT_S,
    ) -> None:
        base = base_url if base_url.endswith("/") else base_url + "/"
        self._client = WebClient(token=token, base_url=base, timeout=timeout_s, retry_handlers=[])
        self._channel = channel
        self._policy = policy or RetryPolicy()

    def send(self, message: Message) -> Delivery:
        def attempt() -> None:
            try:
                self._client.chat_postMessage(
                    channel=self._channel, text=message.text, blocks=list(message.blocks)
                )
            except SlackApiError as error:
                status = error.response.status_code
                reason = str(error.response.get("error", "")) if error.response else ""
                _classify_status(status if status != 200 else 400, reason)
            except OSError as error:
                raise _Transient(f"{type(error).__name__}: {error}") from error

        return _deliver(attempt, self._policy)


def build_notifier(settings: Settings, policy: RetryPolicy | None = None) -> Notifier:
    """The webhook if configured, else the bot token + channel, else nothing."""
    if settings.slack_webhook_url is not None:
        return SlackWebhookNotifier(settings.slack_webhook_url.get_secret_value(), policy=policy)
    if settings.slack_bot_token is not None and settings.slack_channel:
        return SlackBotNotifier(
            settings.slack_bot_token.get_secret_value(),
            settings.slack_channel,
            base_url=settings.slack_api_url,
            policy=policy,
        )
    return NullNotifier()
