"""How the runner paces and retries GitHub requests: rate limits honoured and bounded,
writes never doubled.

Before a request, a client whose last answer said its primary limit is used up
(`x-ratelimit-remaining: 0`) waits for the reset rather than send what GitHub would
refuse (`wait_for_primary_reset`). After a refusal, PyGithub's `GithubRetry` (a urllib3
`Retry`) already retries a 403 whose body names a rate limit, waiting for
`x-ratelimit-reset` (primary) or a minute (secondary). Three gaps are closed here, on
top of it:

- A `Retry-After` header is obeyed for 403 *and* 429 (GitHub sends either), and a
  `429` or `403` with `x-ratelimit-remaining: 0` waits for `x-ratelimit-reset`, whatever
  the body says.
- Every wait is bounded by `max_wait` (`GITOPS_GITHUB_RATE_LIMIT_MAX_WAIT`): GitHub asking
  for longer (a primary reset up to an hour away) fails at once with a message saying
  how long and until when, instead of holding a worker hostage. urllib3's own
  `Retry-After` handling would wait up to six hours.
- A POST that may have reached GitHub (a 5xx, a read timeout) is not sent again unless
  repeating it changes nothing: a second comment or check run would be a duplicate.
  Rate-limit refusals and connection errors stay retryable: GitHub did nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from github import GithubRetry
from github.GithubException import RateLimitExceededExceedsMaxWait
from github.Requester import Requester
from urllib3 import Retry
from urllib3.exceptions import MaxRetryError, ProtocolError, ReadTimeoutError

DEFAULT_MAX_WAIT = 120.0  # seconds; a secondary limit asks for about a minute
RETRIES = 3
# POSTs whose repetition changes nothing: the newest status per context wins, and GitHub
# answers a repeated reaction with the existing one. Others (comments, issues, check
# runs) could appear twice if a request that reached GitHub were sent again.
_IDEMPOTENT_POST = re.compile(r".*/(statuses/[^/]+|reactions)")
_RATE_LIMIT_STATUSES = frozenset({403, 429})
# Edits (comments, check runs, issues) send the whole new value: repeating one is harmless.
_RETRIED_METHODS = Retry.DEFAULT_ALLOWED_METHODS | {"GET", "POST", "PATCH"}


class RunnerRetry(GithubRetry):
    """`GithubRetry` with bounded rate-limit waits and no duplicated writes (module doc)."""

    def increment(  # type: ignore[override]
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> Retry:
        if method == "POST" and not _idempotent_post(url) and _may_have_acted(response, error):
            # With raise_on_status=False urllib3 hands the response back to PyGithub,
            # which raises its usual exception for the status.
            raise MaxRetryError(_pool, url or "", error)
        if response is not None and response.status in _RATE_LIMIT_STATUSES:
            wait = rate_limit_wait(response.headers, time.time())
            if wait is None and response.status == 429:
                wait = self.secondary_rate_wait  # GitHub: "wait at least one minute"
            if wait is not None:
                self._check_wait(response, wait)
                # urllib3's own increment: counts the try, raises when none are left.
                retry = Retry.increment(self, method, url, response, error, _pool, _stacktrace)
                retry.get_backoff_time = lambda: wait  # type: ignore[method-assign]
                return retry
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def _check_wait(self, response: Any, wait: float) -> None:
        limit = self.max_rate_limit_wait
        if limit is None or wait <= limit:
            return
        until = datetime.fromtimestamp(time.time() + wait, UTC).strftime("%H:%M:%S UTC")
        message = (
            f"rate limited: GitHub asks to wait {wait:.0f} s (until {until}), longer than "
            f"GITOPS_GITHUB_RATE_LIMIT_MAX_WAIT ({limit:.0f} s); not retried"
        )
        raise RateLimitExceededExceedsMaxWait(
            response.status, {"message": message}, dict(response.headers), wait=wait
        )


class PrimaryLimitUsedUp(Exception):
    """The last answer said the primary limit is used up until later than the bound."""


def wait_for_primary_reset(requester: Requester, max_wait: float) -> None:
    """Before a request: if GitHub's last answer on this client (one per installation) said
    `x-ratelimit-remaining: 0`, wait for `x-ratelimit-reset` instead of sending a request
    GitHub would refuse; raise `PrimaryLimitUsedUp` if that is further than `max_wait`."""
    remaining, _limit = requester.rate_limiting
    if remaining != 0:
        return
    wait = requester.rate_limiting_resettime - time.time() + 1
    if wait <= 0:
        return
    if wait > max_wait:
        until = datetime.fromtimestamp(requester.rate_limiting_resettime, UTC)
        raise PrimaryLimitUsedUp(
            f"rate limited: the primary rate limit is used up until {until:%H:%M:%S} UTC, "
            f"longer than GITOPS_GITHUB_RATE_LIMIT_MAX_WAIT ({max_wait:.0f} s); not sent"
        )
    time.sleep(wait)


def rate_limit_wait(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds GitHub asks a refused request to wait, from its headers; None if they say not.

    `Retry-After` wins (secondary limits); else a used-up primary limit
    (`x-ratelimit-remaining: 0`) waits until `x-ratelimit-reset`, plus a second since
    it is not known when within that second the reset happens.
    """
    retry_after = headers.get("Retry-After")
    if retry_after is not None and retry_after.strip().isdigit():
        return float(retry_after)
    reset = headers.get("X-RateLimit-Reset")
    if headers.get("X-RateLimit-Remaining") == "0" and reset is not None and reset.isdigit():
        return max(0.0, int(reset) - now) + 1
    return None


def github_retry(max_wait: float = DEFAULT_MAX_WAIT) -> RunnerRetry:
    """A few quick retries of transient failures (at once, then 0.5 s, 1 s) and rate-limit
    waits of at most `max_wait` seconds each."""
    return RunnerRetry(
        total=RETRIES,
        backoff_factor=0.25,
        backoff_max=2,
        raise_on_status=False,
        status_forcelist=[*range(500, 600), 429],  # GithubRetry adds 403
        allowed_methods=_RETRIED_METHODS,
        max_rate_limit_wait=max_wait,
        retry_after_max=max(1, int(max_wait)),
    )


def _idempotent_post(url: str | None) -> bool:
    return bool(url) and _IDEMPOTENT_POST.fullmatch((url or "").split("?", 1)[0]) is not None


def _may_have_acted(response: Any, error: Exception | None) -> bool:
    if response is not None:
        return int(response.status) >= 500
    return isinstance(error, ReadTimeoutError | ProtocolError)
